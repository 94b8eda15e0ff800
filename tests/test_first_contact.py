"""What a new user meets first, following the README: `make demo`, then `make train`, the cheap mistakes,
`saudial check`, the help texts. In-process and fast (no model is trained here)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saudial.config.settings import Settings
from saudial.rundir import record
from saudial.rundir.outputs import prepare_output_dir
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "saudial_synthetic_sample.xlsx"


def makefile_value(name: str) -> str:
    found = re.search(rf"^{name} \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, f"Makefile sets no {name}"
    return found.group(1)


def test_make_demo_then_make_train_use_different_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's order: `make demo` leaves its tiny model and finished run in DEMO_DIR; `make train`'s output
    directory (the default SAUDIAL_OUTPUT_DIR) is then prepared as for a first run, and the demo is untouched."""
    demo, default = Path(makefile_value("DEMO_DIR")), Settings.model_fields["output_dir"].default
    assert not demo.is_absolute() and default not in (demo, *demo.parents) and demo not in default.parents
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{demo}/adapter/x"], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{demo} is not ignored by git"
    monkeypatch.chdir(tmp_path)
    (demo / "tiny-lfm2").mkdir(parents=True)
    (demo / "tiny-lfm2" / "config.json").write_text("{}")
    adapter = demo / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    record.update(adapter, {"saudial_run": 1, "status": record.FINISHED, record.FILES: ["adapter_config.json"]})
    before = {p.as_posix(): p.read_bytes() for p in demo.rglob("*") if p.is_file()}

    plan = prepare_output_dir(Settings(data=SAMPLE, output_dir=default), "f" * 64, "0" * 64)

    assert plan.stage == "train" and plan.run_dir == default / record.STAGING
    assert json.loads((plan.run_dir / record.MANIFEST).read_text())["status"] == record.RUNNING
    assert {p.as_posix(): p.read_bytes() for p in demo.rglob("*") if p.is_file()} == before


def test_cpu_generation_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread for a small model; for a larger one the cores not busy with other work; the user's
    OMP_NUM_THREADS always wins (and is named)."""
    import torch

    from saudial.model import hardware

    for name in hardware.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert hardware.cpu_threads(250_000)[0] == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert hardware.cpu_threads(1_200_000_000) == (
        cores,
        f"{cores} core(s), 0 busy with other work; OMP_NUM_THREADS sets it",
    )
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 9.0, 0.0, 0.0))
    assert hardware.cpu_threads(1_200_000_000)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.cpu_threads(250_000) == (torch.get_num_threads(), "OMP_NUM_THREADS=3")


def test_the_evaluation_table_says_why_its_scores_are_zero() -> None:
    from saudial.inference.scoring import markdown_table, signatures

    zero = {"chrf++": 0.0, "bleu": 0.0, "n": 16}
    evaluation = {
        "task": "translate",
        "samples": 16,
        "generation": {"max_new_tokens": 48, "do_sample": False},
        "normalization": "NFC",
        "signatures": signatures(),
        "scores": {"base": {"overall": zero}, "adapter": {"overall": zero}},
        "empty_outputs": {"base": 16, "adapter": 11},
    }
    table = markdown_table(evaluation)
    assert "Empty outputs: base 16 of 16, adapter 11 of 16 (nothing but whitespace before the end token" in table
    assert "Empty outputs" not in markdown_table(evaluation | {"empty_outputs": {"base": 0, "adapter": 0}})


def card_for(tmp_path: Path, config: dict[str, str], data: dict[str, object], dtype: str | None) -> str:
    from saudial.publish.card import build_card

    manifest = {"saudial_run": 1, "config": config, "data": data} | ({"compute_dtype": dtype} if dtype else {})
    (tmp_path / "run_manifest.json").write_text(json.dumps(manifest))
    return str(build_card(tmp_path))


def test_the_card_names_what_the_run_was(tmp_path: Path) -> None:
    """LoRA on an unquantized base is not QLoRA; the card says the base's dtype, and QLoRA where it was."""
    lora = card_for(tmp_path, {"quantization": "none", "model_name_or_path": "m"}, {}, "float32")
    assert "A LoRA (on the unquantized float32 base) adapter" in lora
    assert "QLoRA" not in lora and "(none base)" not in lora and "- qlora" not in lora
    qlora = card_for(tmp_path, {"quantization": "4bit", "model_name_or_path": "m"}, {}, "bfloat16")
    assert "A QLoRA (LoRA on the 4-bit NF4-quantized base, bfloat16 compute) adapter" in qlora and "- qlora" in qlora


def test_a_pushed_card_names_the_published_base_not_a_local_path(tmp_path: Path) -> None:
    """A run trained from a local copy of the base records its absolute path; the card pushed to the Hub names the
    published model it is (the run's base-model record), or the folder alone, and never this machine's path.
    The card kept in the run's own folder still shows where the base is."""
    from saudial.publish.card import build_card

    local = "/home/someone/models/LFM2-1.2B"
    manifest = {"saudial_run": 1, "config": {"model_name_or_path": local, "quantization": "4bit"}, "data": {}}
    (tmp_path / "run_manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "metrics.json").write_text(json.dumps({"base_model": {"name": "LiquidAI/LFM2-1.2B"}}))
    pushed = str(build_card(tmp_path, "someone/lfm2-saudial"))
    assert "/home/someone" not in pushed
    assert "base_model: LiquidAI/LFM2-1.2B" in pushed and '"LiquidAI/LFM2-1.2B"' in pushed  # metadata, usage
    (tmp_path / "metrics.json").write_text(json.dumps({"base_model": {"name": None}}))  # not a published shape
    unnamed = str(build_card(tmp_path, "someone/lfm2-saudial"))
    assert "/home/someone" not in unnamed and "LFM2-1.2B" in unnamed and "base_model:" not in unnamed
    assert local in str(build_card(tmp_path))  # the local card


def test_a_finished_runs_files_are_readable_as_the_umask_says(
    tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """safetensors writes its files 0600 (tests/test_upstream.py); a finished run's adapter, its checkpoint's too,
    gets the mode of the run's other files: 0666 less the umask."""
    import stat

    from saudial.rundir import modes
    from tests.adapter_run import trained_adapter

    out = trained_adapter(tiny_model, workbook, tmp_path_factory)
    expected = 0o666 & ~modes.umask()
    found = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in found and any(n.endswith("/adapter_model.safetensors") for n in found)
    assert {name: mode for name, mode in found.items() if mode != expected} == {}


def test_the_local_cards_snippet_runs_from_any_folder(
    tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The card of a run's folder loads the adapter by its absolute path, the base in the run's compute dtype
    (float32 on the CPU), and says that an adapter trained on the synthetic sample does not translate."""
    from tests.adapter_run import trained_adapter

    card = (trained_adapter(tiny_model, workbook, tmp_path_factory) / "README.md").read_text()
    assert "so it does not translate" in card and "that translates English game text" not in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S)
    assert snippet and "dtype=torch.float32" in snippet.group(1)
    code = snippet.group(1).replace("max_new_tokens=256", "max_new_tokens=4")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_synthetic_chat_sample_is_the_generators_and_reads_as_chat(tmp_path: Path) -> None:
    """samples/saudial_synthetic_chat.jsonl (`make demo-chat`) is what its generator writes, read as conversations."""
    from saudial.data.conversations import ChatData, load_configured_data
    from saudial.devtools import synthetic

    chat_sample = REPO / "samples" / "saudial_synthetic_chat.jsonl"
    again = synthetic.write_jsonl(tmp_path / "chat.jsonl", synthetic.make_conversations(120))
    assert again.read_bytes() == chat_sample.read_bytes(), "regenerate: python -m saudial.devtools.synthetic --chat"
    data = load_configured_data(Settings(data=chat_sample, task="auto"))
    assert isinstance(data, ChatData) and len(data.conversations) == 120 and data.duplicates_removed == 0
    assert "samples/saudial_synthetic_chat.jsonl" in (REPO / "Makefile").read_text()


def test_the_synthetic_sample_is_named_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The bundled sample (and any file devtools/synthetic.py writes) is found by its Scenario mark, and the data
    summary and the model card say "synthetic sample (not SauDial)"; a file without the mark is not."""
    import pandas as pd

    from saudial.data import examples, workbook

    sample = workbook.load(SAMPLE)
    assert sample.synthetic
    frame = pd.read_excel(SAMPLE)
    frame["Scenario"] = frame["Scenario"].str.removeprefix("SYNTHETIC ")
    frame.to_csv(tmp_path / "SauDial.csv", index=False)
    assert not workbook.load(tmp_path / "SauDial.csv").synthetic
    split = examples.split(sample.rows, 0.1, 0)
    summary = examples.summarize(sample, split, None, 512, None)
    with caplog.at_level("INFO"):
        examples.log_summary(summary)
    assert "(sha256 b5739d7accb9), synthetic sample (not SauDial)" in caplog.text
    card = card_for(tmp_path, {"quantization": "none", "model_name_or_path": "m"}, summary, "float32")
    assert "on the synthetic sample (not SauDial)" in card and "**The bundled synthetic sample, not SauDial.**" in card
    metadata = card.split("---")[1]
    assert "- SauDial" not in metadata and "type: SauDial" not in metadata  # it names no SauDial dataset


# The command line in a fresh process (the test process has torch already): the error, its exit code, and
# whether torch was imported before it.
CHEAP = """
import sys
from saudial.cli.main import main
code = main(sys.argv[1:])
print("EXIT", code, "torch" in sys.modules)
"""


def fake_adapter(directory: Path, task: str) -> Path:
    """What these checks read of an adapter: adapter_config.json, the run record's task and dialects."""
    directory.mkdir()
    (directory / "adapter_config.json").write_text("{}")
    manifest = {"saudial_run": 1, "config": {"task": task}, "data": {"per_dialect": {"Najdi": {}, "Hijazi": {}}}}
    (directory / "run_manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.mark.parametrize(
    ("task", "args", "said"),
    [
        ("translate", ["translate", "Open the door."], "--dialect is required: one of Hijazi, Najdi"),
        ("translate", ["translate", "--dialect", "Kuwaiti", "Hi"], "'Kuwaiti' is not a dialect this adapter was"),
        ("translate", ["chat", "Where is the market?"], "was trained to translate SauDial rows"),
        ("chat", ["translate", "--dialect", "Najdi", "Hi"], "is a chat adapter (trained on conversations)"),
        ("translate", ["translate", "--dialect", "Najdi"], "translate needs either an English TEXT argument"),
        (
            "translate",
            ["translate", "--input", "{csv}"],
            "lines.csv' row 2 has no dialect: pass --dialect (one of Hijazi, Najdi) for the whole file, or give each "
            "row one in a 'Dialect' column",
        ),
    ],
    ids=["no-dialect", "unknown-dialect", "chat-on-translate", "translate-on-chat", "no-text", "file-no-dialect"],
)
def test_cheap_mistakes_are_said_before_torch_is_imported(
    task: str, args: list[str], said: str, tmp_path: Path
) -> None:
    adapter = fake_adapter(tmp_path / "adapter", task)
    (tmp_path / "lines.csv").write_text("English Text\nOpen the door.\n")  # no Dialect column
    args = [a.replace("{csv}", str(tmp_path / "lines.csv")) for a in args]
    command = [sys.executable, "-c", CHEAP, args[0], "--adapter", str(adapter), *args[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAUDIAL_")}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "EXIT 2 False", result.stdout + result.stderr[-2000:]
    assert said in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="what `check` says on a machine without CUDA")
def test_check_lists_every_problem_the_data_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing data file, no GPU for 4-bit and a model not in the cache while offline: all three, in one
    screen, the data first."""
    from huggingface_hub import constants

    from saudial.jobs.check import build, render

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = Settings(data=tmp_path / "SauDial Dataset.xlsx")
    report = build(settings)
    assert len(report.blockers) == 3, report.blockers
    assert report.blockers[0].startswith("data file not found: ") and "SauDial Dataset.xlsx" in report.blockers[0]
    assert report.blockers[1].startswith("no usable CUDA GPU")
    assert "is not in the Hugging Face cache" in report.blockers[2]
    screen = render(report, settings)
    assert screen.index("Data:") < screen.index("This machine:") and len(screen.splitlines()) <= 40
    sample = build(Settings(data=SAMPLE))
    assert ("data", f"{SAMPLE} (197 usable rows, the synthetic sample (not SauDial))") in sample.lines


def tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(listed.splitlines())


# Where a CI script writes: the target of a shell redirection or tee; a line of sed -i, or of Python's
# write_text / write_bytes / open(..., "w").
REDIRECT = re.compile(r"(?:>>?|\btee(?:\s+-a)?)\s*\"?([^\s\"&|;)]+)")
WRITES = re.compile(r"\bsed -i\b|write_text|write_bytes|open\(.*['\"][wax]")


def test_ci_writes_no_tracked_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """CI measures and logs; it never edits the tree: no line of a .ci script that writes names a tracked file,
    the image report's invocations name none, and the report (run here with recorded measurements, as docker
    is not on this machine) prints the block and writes only where --out says."""
    import importlib.util

    tracked = tracked_files()
    for script in sorted((REPO / ".ci").iterdir()):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            named = {path for path in tracked if re.search(rf"(?<![\w./-]){re.escape(path)}(?![\w/-])", line)}
            if "image_report.py" in line:
                assert not named - {".ci/image_report.py"}, f"{script.name}:{number}: {line}"
            targets = {target.removeprefix("./") for target in REDIRECT.findall(line)}
            assert not targets & tracked, f"{script.name}:{number} writes {targets & tracked}: {line}"
            assert not (named and WRITES.search(line)), f"{script.name}:{number} writes {named}: {line}"

    spec = importlib.util.spec_from_file_location("image_report", REPO / ".ci" / "image_report.py")
    assert spec and spec.loader
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    measured = {"size": 1_950_000_000, "layers": [(865_000_000, "RUN pip install torch")], "n_layers": 9}
    monkeypatch.setattr(report, "measure", lambda ref: measured)
    monkeypatch.setattr(report, "docker", lambda *args: "20.10.24\n")
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    monkeypatch.chdir(REPO)
    assert report.main(["--out", str(tmp_path / "sizes.md"), "CPU=saudial:ci-cpu=torch+cpu"]) == 0
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert after == before
    written = (tmp_path / "sizes.md").read_text()
    assert "| CPU | `saudial:ci-cpu` | torch+cpu | **1.95 GB** |" in written and written in capsys.readouterr().out


def command_help(name: str) -> str:
    from saudial.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices[name].format_help().split())  # argparse's wrapping undone


def test_help_says_where_each_command_takes_its_settings_from() -> None:
    for name in ("train", "check"):
        assert "which win over a recipe, then the defaults." in command_help(name)
    for name in ("translate", "chat", "evaluate", "merge"):
        assert "which win over the adapter's run record, then the defaults." in command_help(name), name
        assert "recipe" not in command_help(name), name
    assert "which win over the defaults." in command_help("push") and "recipe" not in command_help("push")
    evaluate = command_help("evaluate")
    data = evaluate[evaluate.index("--data PATH") :].split("--sheet-name")[0]
    assert "Required" not in data and "[SAUDIAL_DATA; default: the adapter's run record]" in data
    assert "[SAUDIAL_DATA; default: none]" in command_help("train") and "Required." in command_help("train")


def test_deploy_validation_summary_names_actionlint_with_a_space() -> None:
    """deploy/validate.sh's last lines (its summary), run as they are with and without an actionlint found."""
    lines = (REPO / "deploy" / "validate.sh").read_text().splitlines()
    summary = [line for line in lines if "actionlint_said" in line or "all checks passed" in line]
    script = "set -euo pipefail\nK8S_VERSIONS=(1.31 1.33)\n" + "\n".join(summary)
    found = subprocess.run(
        ["bash", "-c", "actionlint_bin=/opt/bin/actionlint\n" + script], capture_output=True, text=True
    )
    assert found.stdout.endswith("(Kubernetes 1.31 1.33; actionlint: ran (/opt/bin/actionlint))\n"), found
    missing = subprocess.run(["bash", "-c", "actionlint_bin=\n" + script], capture_output=True, text=True)
    assert missing.stdout.endswith("; actionlint: skipped)\n"), missing
