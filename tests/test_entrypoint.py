"""The real entry point, as a subprocess, on the tiny LFM2: the happy path and every bad input."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from saudial.devtools import synthetic
from tests.conftest import RunEntry, base_env
from tests.entry import run_in_process


@pytest.mark.slow
def test_train_end_to_end(tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    out = tmp_path / "out"
    secret = "hf_DoNotLeakThisToken0123456789"
    result = run_entry(base_env(tiny_model, workbook, out, HF_TOKEN=secret))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert secret not in log
    assert "Najdi" in log and "truncated" in log and f"it moves into {out} when the run is complete" in log
    # Every path named from the end of training on is where the file is once the run is in place.
    after = log[log.index("adapter saved") :]
    assert f"{out}/staging" not in after and "written to " + str(out / "metrics.json") in after, after

    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "run_manifest.json",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    manifest_text = (out / "run_manifest.json").read_text()
    assert secret not in manifest_text
    manifest = json.loads(manifest_text)
    assert manifest["config"]["quantization"] == "none"
    assert manifest["data"]["rows_read"] == 200 and manifest["data"]["duplicates_removed"] == 3
    assert len(manifest["data"]["sha256"]) == 64
    assert manifest["versions"]["trl"] and manifest["versions"]["torch"].startswith("2.13")
    assert manifest["started"] <= manifest["finished"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and metrics["train_tokens_per_second"] > 0
    assert torch.isfinite(torch.tensor([metrics["train_loss"], metrics["eval_loss"]])).all()
    assert [e["command"] for e in metrics["evaluations"]] == ["train"]  # one run, one evaluation
    # How many modules each LoRA target name selected (tiny model: attention at 1 of 4 layers), in the log and record.
    counts = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "out_proj": 4, "in_proj": 3, "w1": 4, "w2": 4, "w3": 4}
    assert metrics["lora_target_modules"] == counts == manifest["metrics"]["lora_target_modules"]
    assert "LoRA targets, modules each name selects: q_proj 1, k_proj 1" in log

    # LoRA on every LFM2 linear layer kind, in conv and attention blocks alike.
    adapter = load_file(out / "adapter_model.safetensors")
    for module in ("q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"):
        assert any(f".{module}.lora_B" in key for key in adapter), module
    assert any("conv.out_proj" in k for k in adapter) and any("self_attn.out_proj" in k for k in adapter)
    # lora_B starts at zero: training moved it.
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)

    # The adapter loads back onto the base with PEFT; the base weights are untouched.
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, out)
    for key, value in model.get_base_model().state_dict().items():
        if "lora_" in key:
            continue
        original = key.replace(".base_layer", "")
        assert torch.equal(value, reference[original]), key


@pytest.mark.slow
def test_dry_run_prints_summary_and_first_example(
    tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    out = tmp_path / "never-written"
    result = run_entry(base_env(tiny_model, workbook, out), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "### Instruction:" in result.stderr and "### Response:" in result.stderr
    assert "Eastern" in result.stderr and "rows read 200" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_flags_override_env(tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    env = base_env(tiny_model, workbook, tmp_path / "o", SAUDIAL_LEARNING_RATE="1e-3")
    result = run_entry(env, "--dry-run", "--learning-rate", "7e-5", "--dialects", "Najdi")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^ {2}learning_rate +7e-05 +flag$", result.stderr, re.M)  # the flag beats the variable
    assert "Hijazi" not in result.stderr.split("data:")[1].split("first training example")[0]


def _bad(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "data file not found"),
        ("html-as-xlsx", "is not an Excel workbook"),
        ("corrupt-zip", "corrupt Excel workbook"),
        ("missing-columns", "lacks column(s) ['Dialect Translation']"),
        ("no-rows", "has no usable rows"),
        ("unknown-dialect", "SAUDIAL_DIALECTS names ['Bedouin']"),
        ("unknown-sheet", "SAUDIAL_SHEET_NAME='Sheet9' is not a sheet"),
        ("bad-value", "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE='-1' is invalid"),
        ("typo", "did you mean SAUDIAL_NUM_TRAIN_EPOCHS"),
        ("wrong-type", "unsupported data file type '.txt'"),
        pytest.param("4bit-on-cpu", "SAUDIAL_QUANTIZATION=none", marks=pytest.mark.slow),  # a real process
        ("unknown-optimizer", "SAUDIAL_OPTIM='adamw_bogus' is not an optimizer transformers knows"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    case: str,
    expected: str,
    tiny_model: Path,
    workbook: Path,
    saudial_frame: pd.DataFrame,
    tmp_path: Path,
    run_entry: RunEntry,
) -> None:
    data, extra = workbook, {}
    if case == "missing":
        data = tmp_path / "SauDial Dataset.xlsx"
    elif case == "html-as-xlsx":
        data = _bad(tmp_path / "page.xlsx", b"<!DOCTYPE html><html>Sign in</html>")
    elif case == "corrupt-zip":
        data = tmp_path / "broken.xlsx"
        with zipfile.ZipFile(data, "w") as archive:
            archive.writestr("hello.txt", "not a workbook")
    elif case == "missing-columns":
        data = synthetic.write(saudial_frame.drop(columns=["Dialect Translation"]), tmp_path / "cols.xlsx")
    elif case == "no-rows":
        data = synthetic.write(saudial_frame.assign(**{"English Text": ""}), tmp_path / "empty.xlsx")
    elif case == "unknown-dialect":
        extra = {"SAUDIAL_DIALECTS": "Najdi,Bedouin"}
    elif case == "unknown-sheet":
        extra = {"SAUDIAL_SHEET_NAME": "Sheet9"}
    elif case == "bad-value":
        extra = {"SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "-1"}
    elif case == "typo":
        extra = {"SAUDIAL_NUM_TRAIN_EPOCH": "2"}
    elif case == "wrong-type":
        data = _bad(tmp_path / "data.txt", b"hello")
    elif case == "4bit-on-cpu":
        extra = {"SAUDIAL_QUANTIZATION": "4bit"}
    elif case == "unknown-optimizer":
        extra = {"SAUDIAL_OPTIM": "adamw_bogus"}
    out = tmp_path / "out"
    # Through main in this process (tests/entry.py); 4-bit without CUDA, refused once torch and the model
    # libraries are imported, as a real process: the contract end to end.
    result = (run_entry if case == "4bit-on-cpu" else run_in_process)(base_env(tiny_model, data, out, **extra))
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    assert "Traceback" not in result.stderr
    assert not (out / "adapter_model.safetensors").exists()


def test_missing_columns_lists_expected_and_found(
    tiny_model: Path, saudial_frame: pd.DataFrame, tmp_path: Path
) -> None:
    data = synthetic.write(saudial_frame[["Dialect", "English Text"]], tmp_path / "two-columns.csv")
    result = run_in_process(base_env(tiny_model, data, tmp_path / "out"))
    assert result.returncode == 2
    assert "expected ['Dialect', 'English Text', 'Dialect Translation']" in result.stderr
    assert "found ['Dialect', 'English Text']" in result.stderr


@pytest.mark.slow
def test_earlier_output_is_never_silently_overwritten(
    tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"earlier run")
    result = run_entry(base_env(tiny_model, workbook, out))
    assert result.returncode == 2
    assert "SAUDIAL_OVERWRITE_OUTPUT_DIR=true" in result.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == b"earlier run"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["one row", "SAUDIAL_EVAL_SIZE=0, chat"])
def test_a_run_that_holds_nothing_out_trains_and_says_it_will_not_evaluate(
    case: str, tiny_model: Path, saudial_frame: pd.DataFrame, tmp_path: Path, run_entry: RunEntry
) -> None:
    """A held-out side left empty (SAUDIAL_EVAL_SIZE=0, or data too small to hold a sentence out) once stopped
    the run with exit 1: datasets cannot build a data set from an empty list of records."""
    from tests.chat_files import conversations, write_jsonl

    if case == "one row":
        data = synthetic.write(saudial_frame.head(1), tmp_path / "one row.xlsx")
        extra = {"SAUDIAL_EVAL": "full", "SAUDIAL_MAX_NEW_TOKENS": "4"}
        said = f"no rows could be held out of {data} at SAUDIAL_EVAL_SIZE=0.1"
    else:
        data = write_jsonl(tmp_path / "chat.jsonl", conversations(8))
        extra = {"SAUDIAL_TASK": "chat", "SAUDIAL_EVAL_SIZE": "0", "SAUDIAL_EVAL": "loss"}
        said = "SAUDIAL_EVAL_SIZE=0 holds no rows out"
    out = tmp_path / "out"
    result = run_entry(base_env(tiny_model, data, out, SAUDIAL_MAX_STEPS="2", **extra))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    warning = [line for line in log.splitlines() if "will not evaluate" in line]
    assert len(warning) == 1 and said in warning[0], warning
    assert (out / "adapter_model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_loss" not in json.dumps(metrics) and "bleu" not in json.dumps(metrics).lower()
