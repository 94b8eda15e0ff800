"""translate (one text, a whole file) and merge, through the real entry point; batching correctness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from saudial.config.settings import Settings
from saudial.errors import EXIT_IO, ConfigError
from saudial.inference.generate import Request, postprocess, translate
from saudial.jobs.translate import check_translate
from tests.adapter_run import copy_run, random_adapter, trained_adapter
from tests.conftest import ENTRYPOINT, RunEntry, base_env
from tests.entry import assert_one_line_error, data_env, run_in_process


@pytest.fixture
def trained(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_adapter(tiny_model, workbook, tmp_path_factory)


def command_env(tiny_model: Path, workbook: Path, tmp_path: Path) -> dict[str, str]:
    env = base_env(tiny_model, workbook, tmp_path / "unused", OMP_NUM_THREADS="1", SAUDIAL_MAX_NEW_TOKENS="8")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_QUANTIZATION"):
        env.pop(key)  # from the run's manifest (quantization=none there; 4bit would fall back on the CPU)
    return env


def test_postprocess_cuts_at_the_next_prompt_section() -> None:
    assert postprocess(" هلا والله\n\n### Instruction:\nTranslate") == "هلا والله"
    assert postprocess("سطر\nسطر ثاني ") == "سطر\nسطر ثاني"


@pytest.mark.slow
def test_batched_generation_equals_one_by_one(tiny_model: Path) -> None:
    """Left padding must not change a row's translation: batch of mixed lengths == each alone."""
    settings = Settings.model_validate(
        {"model_name_or_path": str(tiny_model), "quantization": "none", "max_new_tokens": 8, "repetition_penalty": 1.0}
    )
    model, tokenizer = random_adapter(settings)
    requests = [
        Request("Najdi", "Find the sword.", "Shop dialogue"),
        Request("Hijazi", "Please bring my old golden map to the quiet castle with the brave horse now.", None),
        Request("Eastern", "Open the door.", "Battle"),
    ]
    batched = translate(model, tokenizer, requests, settings, batch_size=3, progress=False)
    alone = [translate(model, tokenizer, [r], settings, batch_size=1, progress=False)[0] for r in requests]
    assert batched == alone
    assert tokenizer.padding_side == "right"  # restored for training


@pytest.mark.slow
def test_translate_one_text(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    env = command_env(tiny_model, workbook, tmp_path)
    result = run_entry(
        env, "translate", "--adapter", str(trained), "--dialect", "najdi", "--context", "Shop", "Find the golden sword."
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith("\n") and "configuration" not in result.stdout  # only the translation


@pytest.mark.slow
def test_translate_file_writes_next_to_it_and_never_overwrites(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    source = tmp_path / "lines.csv"
    pd.DataFrame(
        {
            "english text": ['"Find the sword."', "Open the door.", "  "],  # header case and quotes forgiven
            "Dialect": ["Najdi", "Hijazi", None],
            "In-Game Context": ["Shop dialogue", None, None],
        }
    ).to_csv(source, index=False)
    env = command_env(tiny_model, workbook, tmp_path)
    result = run_entry(env, "translate", "--adapter", str(trained), "--input", str(source))
    assert result.returncode == 0, result.stderr[-3000:]
    written = pd.read_csv(tmp_path / "lines.translated.csv", keep_default_na=False)
    assert list(written.columns) == ["english text", "Dialect", "In-Game Context", "Model Translation"]
    assert len(written) == 3 and written["Model Translation"][2] == ""  # a row without text: none asked, none given
    assert "lines.csv': row 4 without English text: left without a translation" in result.stderr
    assert "translating: 2 texts" in result.stderr

    # The refusals through main in this process (tests/entry.py); the runs that translate as real processes.
    again = run_in_process(env, "translate", "--adapter", str(trained), "--input", str(source))
    assert again.returncode == 2 and "already exists" in again.stderr

    jsonl = tmp_path / "lines.jsonl"
    jsonl.write_text(json.dumps({"English Text": "Open the door."}) + "\n")
    no_dialect = run_in_process(env, "translate", "--adapter", str(trained), "--input", str(jsonl))
    assert no_dialect.returncode == 2 and "dialect" in no_dialect.stderr
    ok = run_entry(env, "translate", "--adapter", str(trained), "--input", str(jsonl), "--dialect", "Southern")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "Model Translation" in (tmp_path / "lines.translated.jsonl").read_text()

    # A workbook whose lines are on another sheet than the first: named by --sheet-name.
    book = tmp_path / "book.xlsx"
    with pd.ExcelWriter(book) as writer:
        pd.DataFrame({"About": ["notes"]}).to_excel(writer, sheet_name="About", index=False)
        pd.DataFrame({"English Text": ["Open the door."], "Dialect": ["Kuwaiti"]}).to_excel(
            writer, sheet_name="Lines", index=False
        )
    first = run_in_process(env, "translate", "--adapter", str(trained), "--input", str(book))
    assert first.returncode == 2 and "or name the sheet that has it with --sheet-name" in first.stderr
    other = run_in_process(env, "translate", "--adapter", str(trained), "--input", str(book), "--sheet-name", "Lines")
    assert other.returncode == 2 and "book.xlsx' row 2: dialect 'Kuwaiti' is not a dialect" in other.stderr
    named = run_entry(
        env, "translate", "--adapter", str(trained), "--input", str(book), "--sheet-name", "Lines", "--dialect", "Najdi"
    )
    assert named.returncode == 0 and len(pd.read_excel(tmp_path / "book.translated.xlsx")) == 1, named.stderr[-3000:]

    # --output in a folder that does not exist yet: made, as merge, export and evaluate make theirs.
    into = tmp_path / "new" / "folder" / "lines.csv"
    made = run_entry(env, "translate", "--adapter", str(trained), "--input", str(source), "--output", str(into))
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(pd.read_csv(into)) == 3


def _lines(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    source = folder / "lines.csv"
    source.write_text("English Text\nOpen the door.\n")
    return source


def test_translate_makes_the_output_folder_after_every_other_check(tmp_path: Path, no_model_adapter: Path) -> None:
    """--output in a folder that does not exist: made by the checks before any model (it was a FileNotFoundError,
    exit 1, once everything was translated); a refused input makes nothing."""
    source, into = _lines(tmp_path / "inputs"), tmp_path / "new" / "folder" / "lines.csv"
    with pytest.raises(ConfigError, match="dialect is not a dialect name"):
        check_translate(Settings(), no_model_adapter, None, "Najdi\u202e", None, source, into)
    assert not (tmp_path / "new").exists()
    asked = check_translate(Settings(), no_model_adapter, None, "Najdi", None, source, into)
    assert asked.target == into and into.parent.is_dir() and not list(into.parent.iterdir())

    under_a_file = tmp_path / "inputs" / "lines.csv" / "out.csv"
    refused = run_in_process(
        data_env(tmp_path / "unused.xlsx", tmp_path / "out"),
        *("translate", "--adapter", str(no_model_adapter), "--dialect", "Najdi"),
        *("--input", str(source), "--output", str(under_a_file)),
    )
    assert_one_line_error(refused, f"the folder of --output={str(source)!r} is a file, not a directory: give --output")


@pytest.mark.parametrize("folder", ["ro", "ro/new"])
def test_translate_into_a_read_only_folder_exits_74_before_any_model(
    folder: str, tmp_path: Path, tmpfs: Path, no_model_adapter: Path
) -> None:
    """A read-only --output folder (or one that would be made there): exit 74 naming it, before any model is
    loaded (the adapter here has none); it was exit 74 only once everything was translated."""
    source = _lines(tmp_path / "inputs")
    (tmpfs / "ro").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    result = run_in_process(
        data_env(tmp_path / "unused.xlsx", tmp_path / "out"),
        *("translate", "--adapter", str(no_model_adapter), "--dialect", "Najdi"),
        *("--input", str(source), "--output", str(tmpfs / folder / "lines.csv")),
    )
    line = assert_one_line_error(result, f"cannot write {tmpfs / folder}: EROFS (Read-only file system)", EXIT_IO)
    assert "mount it read-write" in line, line


def test_translate_names_an_input_of_an_unsupported_type(tmp_path: Path, no_model_adapter: Path) -> None:
    """--input r.sh names --input and the types it takes (it named the --output made from it, r.translated.sh)."""
    script = tmp_path / "r.sh"
    script.write_text("echo hi\n")
    env = data_env(tmp_path / "unused.xlsx", tmp_path / "out")
    result = run_in_process(env, "translate", "--adapter", str(no_model_adapter), "--input", str(script))
    line = assert_one_line_error(result, f"--input {str(script)!r} has an unsupported type: give a .xlsx, .xlsm, ")
    assert line.endswith(".csv, .jsonl or .parquet file") and "translated" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "r.sh"]


@pytest.mark.slow  # the shared training run (tests/adapter_run.py)
def test_translate_rejects_an_unknown_dialect(trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    env = command_env(tiny_model, workbook, tmp_path)
    result = run_in_process(env, "translate", "--adapter", str(trained), "--dialect", "Egyptian", "Hello")
    assert result.returncode == 2
    assert "'Egyptian' is not a dialect this adapter was trained on (Eastern, Hijazi, Najdi, Southern)" in result.stderr


@pytest.mark.slow
def test_an_adapter_trained_with_relative_paths_works_from_any_directory(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """The run record holds the data file and the local base model absolute, so translate and evaluate find them
    from another working directory; a record with relative paths still works from the directory it names them in."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(tiny_model, project / "runs" / "demo" / "tiny-lfm2")
    shutil.copy(workbook, project / "data.xlsx")
    elsewhere.mkdir()

    def entry(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ENTRYPOINT), *args]
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)

    relative = {"SAUDIAL_DATA": "data.xlsx", "SAUDIAL_MODEL_NAME_OR_PATH": "runs/demo/tiny-lfm2"}
    trained = entry(project, base_env(tiny_model, workbook, Path("run"), SAUDIAL_EVAL="none", **relative))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = project / "run"
    manifest = json.loads((run / "run_manifest.json").read_text())
    model, data = str(project / "runs" / "demo" / "tiny-lfm2"), str(project / "data.xlsx")
    assert (manifest["config"]["model_name_or_path"], manifest["config"]["data"]) == (model, data)
    assert (manifest["model"]["name_or_path"], manifest["data"]["file"]) == (model, data)

    env = command_env(tiny_model, workbook, tmp_path)
    translated = entry(elsewhere, env, "translate", "--adapter", str(run), "--dialect", "Najdi", "Open the door.")
    assert translated.returncode == 0, translated.stderr[-3000:]
    evaluated = entry(elsewhere, env, "evaluate", "--adapter", str(run))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["evaluations"][-1]["data"] == data
    # A checkpoint has no run record: its adapter_config.json names the base absolute (PEFT writes the name the
    # model was loaded by), so it loads from anywhere too.
    checkpoint = next(run.glob("checkpoint-*"))
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == model
    from_checkpoint = entry(elsewhere, env, "translate", "--adapter", str(checkpoint), "--dialect", "Najdi", "Hi")
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr[-3000:]
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    (checkpoint / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "runs/demo/x"}))
    older = entry(elsewhere, env, "translate", "--adapter", str(checkpoint), "--dialect", "Najdi", "Hi")
    assert older.returncode == 2 and "its adapter_config.json names the base model 'runs/demo/x'" in older.stderr

    old = copy_run(run, tmp_path / "old")
    (old / "run_manifest.json").write_text(json.dumps(manifest | {"config": manifest["config"] | relative}))
    again = entry(project, env, "translate", "--adapter", str(old), "--dialect", "Najdi", "Open the door.")
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.slow
def test_merge_writes_a_plain_bf16_model(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    merged_dir = tmp_path / "merged"
    env = command_env(tiny_model, workbook, tmp_path)
    result = run_entry(env, "merge", "--adapter", str(trained), "--output", str(merged_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (merged_dir / "adapter_config.json").exists()
    assert (merged_dir / "tokenizer.json").is_file() and (merged_dir / "run_manifest.json").is_file()

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # plain transformers, no PEFT
    assert merged.dtype == torch.bfloat16 and merged.config.use_cache is True

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, str(trained)).merge_and_unload().state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    changed = 0
    for name, tensor in merged.state_dict().items():
        # bf16 merge vs fp32 merge: equal up to bf16 rounding (about 1 part in 256)
        assert torch.allclose(tensor.float(), expected[name], rtol=1e-2, atol=1e-4), name
        changed += not torch.equal(expected[name], original[name])
    assert changed > 0  # the trained adapter is not a no-op

    again = run_entry(env, "merge", "--adapter", str(trained), "--output", str(merged_dir))
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_merge_refuses_a_directory_without_adapter(tmp_path: Path, run_entry: RunEntry, tiny_model: Path) -> None:
    env = command_env(tiny_model, tmp_path, tmp_path)
    result = run_entry(env, "merge", "--adapter", str(tmp_path), "--output", str(tmp_path / "m"))
    assert result.returncode == 2 and "adapter_config.json" in result.stderr


def test_command_help(run_entry: RunEntry, tmp_path: Path) -> None:
    for command, flags in {
        "evaluate": ["--adapter", "--max-eval-samples"],
        "translate": ["--adapter", "--dialect", "--context", "--input", "--output", "TEXT"],
        "merge": ["--adapter", "--output"],
        "push": ["--output-dir", "--hub-model-id", "--hub-private"],
    }.items():
        result = run_entry(base_env(tmp_path, tmp_path, tmp_path), command, "--help")
        assert result.returncode == 0
        for flag in flags:
            assert flag in result.stdout, (command, flag)


def test_copy_run_helper(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    assert (copy_run(tmp_path / "a", tmp_path / "b") / "f").read_text() == "x"
