"""What a new user meets first, following the README: `make demo`, then `make train`, the cheap mistakes,
`saudial check`, the help texts. In-process and fast (no model is trained here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

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
    assert "Empty outputs: base 16 of 16, adapter 11 of 16. An empty output scores 0" in table
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
    assert "- SauDial" not in card.split("---")[1]  # the metadata names no SauDial dataset
