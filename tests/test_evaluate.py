"""Evaluation: normalisation, sacrebleu scoring per dialect, base vs adapter, metrics.json and the table."""

from __future__ import annotations

import json
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from saudial.config.settings import Settings
from saudial.data.examples import split
from saudial.data.text import clean_text
from saudial.errors import EXIT_IO
from saudial.inference.evaluation import cap, evaluate
from saudial.inference.scoring import OVERALL, normalize, score, score_by_dialect
from tests.adapter_run import copy_run, random_adapter, trained_adapter
from tests.conftest import RunEntry, base_env
from tests.entry import error_line, tree


def test_normalize_nfc_quotes_whitespace_and_keeps_diacritics() -> None:
    decomposed = "\u0627\u0654"  # alef + combining hamza above -> NFC: U+0623 (أ)
    assert normalize(f'  "{decomposed}هلا   وغلا\n يا  بعد" ') == "\u0623هلا وغلا يا بعد"
    assert normalize("“مرحبا”") == "مرحبا"  # curly quotes too
    shadda = "حّب"
    assert normalize(shadda) == unicodedata.normalize("NFC", shadda)  # diacritics are kept, not stripped
    assert normalize("أهلاً") != normalize("اهلا")  # no alef/tanween folding
    assert normalize(None) == "" and normalize(float("nan")) == ""


def test_score_identity_and_nothing() -> None:
    refs = ["هلا والله يا الغالي", "وش تبي تشتري اليوم؟"]
    assert score(refs, refs) == {"chrf++": 100.0, "bleu": 100.0, "n": 2}
    # Normalisation applies to both sides: quotes and spacing do not cost points.
    assert score(['"هلا والله  يا الغالي"', " وش تبي تشتري اليوم؟"], refs)["chrf++"] == 100.0
    assert score(["", ""], refs)["chrf++"] == 0.0


def test_score_by_dialect_counts_each_dialect() -> None:
    rows = pd.DataFrame({"dialect": ["Najdi", "Najdi", "Hijazi"], "translation": ["وش تبي", "هلا والله", "ايش تبغى"]})
    result = score_by_dialect(rows, ["وش تبي", "هلا والله", "شي ثاني"])
    assert result["Najdi"]["chrf++"] == 100.0 and result["Najdi"]["n"] == 2
    assert result["Hijazi"]["chrf++"] < 20 and result[OVERALL]["n"] == 3


def test_cap_is_deterministic_and_keeps_dialects(saudial_frame: pd.DataFrame) -> None:
    rows = split(_rows(saudial_frame), 0.3, 0).eval
    capped = cap(rows, 12, seed=1)
    assert len(capped) == 12 and capped.equals(cap(rows, 12, seed=1))
    assert set(capped["dialect"]) == set(rows["dialect"])
    assert cap(rows, None, 1).equals(rows.reset_index(drop=True))


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    renamed = frame.rename(
        columns={
            "Dialect": "dialect",
            "English Text": "english",
            "Dialect Translation": "translation",
            "In-Game Context": "context",
            "Modern Standard Arabic (MSA) Translation": "msa",
        }
    )[["dialect", "english", "translation", "context", "msa"]]
    for column in renamed.columns:
        renamed[column] = [clean_text(v) for v in renamed[column]]
    return renamed.drop_duplicates().reset_index(drop=True)


@pytest.fixture
def peft_model(tiny_model: Path) -> tuple[Any, Any, Settings]:
    settings = Settings.model_validate(
        {
            "model_name_or_path": str(tiny_model),
            "quantization": "none",
            "max_new_tokens": 6,
            "per_device_eval_batch_size": 4,
            "max_eval_samples": 6,
        }
    )
    model, tokenizer = random_adapter(settings)
    return model, tokenizer, settings


def test_evaluate_writes_metrics_table_and_predictions(
    peft_model: tuple[Any, Any, Settings],
    saudial_frame: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, tokenizer, settings = peft_model
    rows = split(_rows(saudial_frame), 0.2, 0).eval
    (tmp_path / "metrics.json").write_text(json.dumps({"train_loss": 1.5}))

    results = evaluate(settings, model, tokenizer, rows, tmp_path)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_loss"] == 1.5  # merged with what training wrote
    assert metrics["eval_loss"] == results["eval_loss"] > 0
    scores = metrics["evaluation"]["scores"]
    assert set(scores) == {"base", "adapter", "msa_reference"}
    assert scores["adapter"][OVERALL]["n"] == 6  # max_eval_samples
    assert sum(v["n"] for k, v in scores["adapter"].items() if k != OVERALL) == 6
    assert metrics["eval_chrf++_adapter"] == scores["adapter"][OVERALL]["chrf++"]
    assert "nc:6|nw:2" in metrics["evaluation"]["signatures"]["chrf++"]  # chrF++, not chrF

    table = (tmp_path / "eval_results.md").read_text()
    assert table.startswith("| Dialect | n | chrF++ base | chrF++ adapter | Δ chrF++ |")
    assert "| **overall** | 6 |" in table and "MSA ref" in table
    assert table in capsys.readouterr().out  # printed too

    predictions = [json.loads(line) for line in (tmp_path / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and {"base", "adapter", "reference"} <= set(predictions[0])
    assert any(p["base"] != p["adapter"] for p in predictions)  # the adapter was switched off for "base"


def test_eval_loss_mode_and_none(
    peft_model: tuple[Any, Any, Settings], saudial_frame: pd.DataFrame, tmp_path: Path
) -> None:
    model, tokenizer, settings = peft_model
    rows = split(_rows(saudial_frame), 0.2, 0).eval
    assert evaluate(settings.model_copy(update={"eval": "none"}), model, tokenizer, rows, tmp_path) == {}
    assert not (tmp_path / "metrics.json").exists()
    results = evaluate(settings.model_copy(update={"eval": "loss"}), model, tokenizer, rows, tmp_path)
    assert set(results) == {"eval_loss", "eval_runtime_s"}
    assert not (tmp_path / "eval_results.md").exists()


def test_eval_loss_equals_the_trainers_completion_loss(
    peft_model: tuple[Any, Any, Settings], saudial_frame: pd.DataFrame
) -> None:
    """Our per-token loss over response+EOS matches a direct computation with TRL-style masking."""
    from saudial.data.prompts import build_prompt
    from saudial.inference.evaluation import eval_loss

    model, tokenizer, settings = peft_model
    rows = split(_rows(saudial_frame), 0.2, 0).eval.head(3)
    model.eval()  # no LoRA dropout
    total, count = 0.0, 0
    for r in rows.itertuples(index=False):
        prompt = build_prompt(r.dialect, r.english, r.context or None)
        n_prompt = len(tokenizer(prompt)["input_ids"])
        ids = [*tokenizer(prompt + r.translation)["input_ids"], tokenizer.eos_token_id]
        labels = torch.tensor([[-100] * n_prompt + ids[n_prompt:]])
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=labels)
        n = len(ids) - n_prompt
        total += float(out.loss) * n
        count += n
    assert eval_loss(model, tokenizer, rows, settings) == pytest.approx(total / count, rel=1e-4)


def test_the_evaluation_after_training_is_the_first_in_the_history(tmp_path: Path) -> None:
    """Training's own eval_loss (and eval_samples) in metrics.json is not an evaluation of its own; an evaluation
    held at the top without the list (it has eval_runtime_s) is kept as the first."""
    from saudial.rundir.record import EVALUATIONS, add_evaluation

    results = {"eval_loss": 6.79, "eval_runtime_s": 1.5}
    (tmp_path / "metrics.json").write_text(json.dumps({"train_loss": 7.1, "eval_samples": 19, "eval_loss": 6.79}))
    add_evaluation(tmp_path, results, {"command": "train"})
    history = json.loads((tmp_path / "metrics.json").read_text())[EVALUATIONS]
    assert [e["command"] for e in history] == ["train"]

    held = {"train_loss": 7.1, "eval_samples": 19, "eval_loss": 6.5, "eval_runtime_s": 2.0}
    (tmp_path / "metrics.json").write_text(json.dumps(held))
    add_evaluation(tmp_path, results, {"command": "evaluate"})
    history = json.loads((tmp_path / "metrics.json").read_text())[EVALUATIONS]
    assert history[0] == {"eval_samples": 19, "eval_loss": 6.5, "eval_runtime_s": 2.0}
    assert [e.get("command") for e in history] == [None, "evaluate"]


@pytest.fixture
def trained(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_adapter(tiny_model, workbook, tmp_path_factory)


@pytest.mark.slow
def test_evaluate_command(trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    out = copy_run(trained, tmp_path / "run")
    env = base_env(tiny_model, workbook, tmp_path / "unused", OMP_NUM_THREADS="1")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH"):
        env.pop(key)  # the command finds them in the run's manifest
    env.update(SAUDIAL_EVAL="full", SAUDIAL_MAX_EVAL_SAMPLES="5", SAUDIAL_MAX_NEW_TOKENS="6")
    result = run_entry(env, "evaluate", "--adapter", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| **overall** | 5 |" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert "train_loss" in metrics and "eval_loss" in metrics
    assert metrics["evaluation"]["scores"]["adapter"][OVERALL]["n"] == 5
    assert (out / "eval_results.md").is_file()
    assert "\r" not in result.stderr  # no terminal: progress as lines (saudial/cli/logs.py), none redrawn


@pytest.mark.slow
def test_evaluate_into_a_read_only_folder_exits_74_before_generating(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, tmpfs: Path, run_entry: RunEntry
) -> None:
    """A run on a read-only disk, evaluated into its own folder or an --output-dir there: exit 74 naming the
    folder, before the data is split or a model loaded (it was exit 74 only after base and adapter had
    translated the whole eval split)."""
    out = copy_run(trained, tmpfs / "run")
    (tmpfs / "results").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = tree(tmpfs)
    env = base_env(tiny_model, workbook, tmp_path / "unused", SAUDIAL_EVAL="full", SAUDIAL_MAX_NEW_TOKENS="4")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH"):
        env.pop(key)  # the command finds them in the run's manifest
    for folder, flags in ((out, []), (tmpfs / "results", ["--output-dir", str(tmpfs / "results")])):
        result = run_entry(env, "evaluate", "--adapter", str(out), *flags)
        assert result.returncode == EXIT_IO, result.stderr[-3000:]
        line = error_line(result.stderr)
        assert line.startswith(f"error: cannot write {folder}: EROFS (Read-only file system)"), line
        assert "generat" not in result.stderr, result.stderr[-3000:]  # no model loaded, nothing generated
    assert tree(tmpfs) == before


@pytest.mark.slow
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_evaluate_output_dir_that_cannot_be_a_folder_exits_2(
    where: str, trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    target = tmp_path / "notes.txt" if where == "a file" else tmp_path / "notes.txt" / "results"
    env = base_env(tiny_model, workbook, tmp_path / "unused", SAUDIAL_EVAL="full")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH"):
        env.pop(key)  # the command finds them in the run's manifest
    result = run_entry(env, "evaluate", "--adapter", str(trained), "--output-dir", str(target))
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert line.startswith(f"error: --output-dir='{target}' is ") and "give --output-dir a folder" in line, line
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_evaluate_output_dir_holds_evaluations_only(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    """--output-dir once wrote into any folder: another run's model card, metrics and record were replaced by
    this adapter's, and a user's metrics.json was edited. Now: a new or empty folder, or an earlier evaluation's."""
    env = base_env(tiny_model, workbook, tmp_path / "unused", SAUDIAL_EVAL="full", SAUDIAL_MAX_EVAL_SAMPLES="3")
    env["SAUDIAL_MAX_NEW_TOKENS"] = "4"
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH"):
        env.pop(key)  # the command finds them in the run's manifest
    other_run = copy_run(trained, tmp_path / "other run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"mine": 1}')
    refusals = ((other_run, "holds a saudial training run ("), (mine, "holds files that no saudial evaluation"))
    for target, said in refusals:
        before = tree(target)
        result = run_entry(env, "evaluate", "--adapter", str(trained), "--output-dir", str(target))
        assert result.returncode == 2, result.stderr[-3000:]
        assert said in error_line(result.stderr)
        assert tree(target) == before
    results = tmp_path / "results"
    for _ in range(2):  # a new folder, then the same folder again: an earlier evaluation's
        result = run_entry(env, "evaluate", "--adapter", str(trained), "--output-dir", str(results))
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads((results / "metrics.json").read_text())["evaluations"]) == 2
    assert json.loads((results / "run_manifest.json").read_text())["saudial_evaluate"] == 1
    assert not (results / "README.md").exists()


def test_evaluate_command_needs_an_adapter(
    tmp_path: Path, run_entry: RunEntry, tiny_model: Path, workbook: Path
) -> None:
    result = run_entry(base_env(tiny_model, workbook, tmp_path), "evaluate", "--adapter", str(tmp_path))
    assert result.returncode == 2
    assert "holds no adapter_config.json" in result.stderr


@pytest.mark.slow
def test_evaluate_again_updates_card_record_and_metrics_and_keeps_the_earlier_one(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `saudial evaluate` runs on a finished run (in-process, ~5 s): metrics.json shows the latest at the top
    and keeps both in `evaluations` with their settings; the run record's numbers and the model card agree."""
    from saudial.jobs.evaluate import run_evaluate

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = copy_run(trained, tmp_path / "run")
    card_before = (out / "README.md").read_text()
    for tokens in (3, 5):
        run_evaluate(Settings(eval="full", max_eval_samples=4, max_new_tokens=tokens), out)
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["evaluations"]
    assert [(e["command"], e["max_new_tokens"]) for e in history] == [("evaluate", 3), ("evaluate", 5)]
    assert history[0]["evaluation"]["generation"]["max_new_tokens"] == 3  # the first one, still readable
    assert history[-1]["eval_chrf++_adapter"] == metrics["eval_chrf++_adapter"]
    assert "train_loss" in metrics  # training's numbers stay
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["metrics"] == {
        k: v for k, v in metrics.items() if k not in ("timings", "evaluation", "evaluations")
    }
    assert manifest["evaluated"] == history[-1]["evaluated"] and manifest["status"] == "finished"
    card = (out / "README.md").read_text()
    assert card != card_before and (out / "eval_results.md").read_text().strip() in card
    assert f"| eval_loss | {metrics['eval_loss']:.4g} |" in card
    assert f"value: {metrics['eval_chrf++_adapter']}" in card  # the model-index
    assert "The latest of 2 evaluations" in card
