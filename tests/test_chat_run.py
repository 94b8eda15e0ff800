"""Chat data end to end (#17), through the real entry point on the tiny LFM2: train with SAUDIAL_TASK=chat
(evaluation included), SIGTERM and resume to the same adapter, `evaluate`, `chat` (one turn and --input), the
model card and its usage snippet, and a tokenizer without a chat template.

The data is a chat JSONL the tests write (tests/chat_files.py): 48 conversations in four dialects, one or two
exchanges each, every fifth a conversational prompt/completion pair.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from saudial.config.settings import Settings
from saudial.errors import EXIT_INTERRUPTED, ConfigError
from saudial.jobs.translate import run_translate
from tests.chat_files import conversations, write_jsonl
from tests.conftest import REPO, RunEntry, base_env
from tests.jobs import ADAPTER, Job, adapter, assert_bitwise_equal, job_env, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("chat-data") / "dialect_chat.jsonl", conversations())


def chat_env(tiny_model: Path, data: Path, out: Path, **extra: str) -> dict[str, str]:
    return job_env(tiny_model, data, out, **{"SAUDIAL_TASK": "chat", "SAUDIAL_EVAL_SIZE": "0.2", **extra})


@pytest.fixture(scope="module")
def chat_run(tiny_model: Path, chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished chat run with the full evaluation (no checkpoint until the end): the resume test's reference."""
    out = tmp_path_factory.mktemp("chat-run") / "out"
    code, log = run_job(chat_env(tiny_model, chat_data, out, SAUDIAL_EVAL="full", SAUDIAL_MAX_NEW_TOKENS="4"))
    assert code == 0, log[-4000:]
    return out, log


def command_env(tiny_model: Path, data: Path, tmp_path: Path) -> dict[str, str]:
    """An inference command's environment: model, data and task come from the adapter's run record."""
    env = base_env(tiny_model, data, tmp_path / "unused", SAUDIAL_MAX_NEW_TOKENS="4", SAUDIAL_EVAL="full")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_QUANTIZATION"):
        env.pop(key)
    return env


def test_training_on_conversations(chat_run: tuple[Path, str]) -> None:
    out, log = chat_run
    assert "Traceback" not in log
    # The data summary: conversations, turns and roles, per dialect and split, tokens and max_length.
    assert "conversations read 48, exact duplicates removed 0, used 48" in log
    assert re.search(r"turns \d+ \(system 48, user \d+, assistant \d+\)", log)
    assert re.search(r"train tokens/conversation: mean [\d.]+, .* longer than max_length=128 will be truncated", log)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["task"] == "chat"
    data = manifest["data"]
    assert data["task"] == "chat" and data["rows_used"] == 48 and data["train_rows"] + data["eval_rows"] == 48
    assert set(data["per_dialect"]) == {"Najdi", "Hijazi", "Eastern", "Southern"}
    assert data["turns"]["roles"]["system"] == 48 and data["tokens"]["max_length"] == 128
    assert 0 < data["tokens"]["assistant"] < data["tokens"]["trained"]
    # The evaluation: eval loss, chrF++/BLEU of base and adapter overall and per dialect, the predictions.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["evaluation"]["task"] == "chat"
    scores = metrics["evaluation"]["scores"]
    assert set(scores) == {"base", "adapter"}
    assert set(scores["adapter"]) == {"overall", "Najdi", "Hijazi", "Eastern", "Southern"}
    assert scores["adapter"]["overall"]["n"] == data["eval_rows"]
    lines = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(lines) == data["eval_rows"]
    for line in lines:
        assert line["messages"][-1]["role"] == "user"  # the conversation up to the reply asked for
        assert {"dialect", "reference", "base", "adapter"} <= set(line)
    assert "last assistant turn" in (out / "eval_results.md").read_text()


@pytest.fixture(scope="module")
def interrupted(tiny_model: Path, chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("chat-interrupted") / "out"
    job = Job(chat_env(tiny_model, chat_data, out, SAUDIAL_SAVE_STEPS="1"))
    job.wait_for(r"checkpoint saved: checkpoint-2 \(step 2\)")
    job.signal(signal.SIGTERM)
    assert job.finish() == EXIT_INTERRUPTED, job.output[-4000:]
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", job.output)
    assert stopped, job.output[-4000:]
    return out, int(stopped.group(1))


def test_resume_after_sigterm_equals_an_uninterrupted_run(
    interrupted: tuple[Path, int], chat_run: tuple[Path, str], tiny_model: Path, chat_data: Path, tmp_path: Path
) -> None:
    source, step = interrupted
    assert not (source / ADAPTER).exists()
    out = shutil.copytree(source, tmp_path / "out")
    code, log = run_job(chat_env(tiny_model, chat_data, out, SAUDIAL_SAVE_STEPS="1"))
    assert code == 0, log[-4000:]
    assert f"resuming from checkpoint-{step} (step {step})" in log
    assert_bitwise_equal(adapter(out), adapter(chat_run[0]))


def test_evaluate_command(chat_run: tuple[Path, str], tiny_model: Path, chat_data: Path, tmp_path: Path) -> None:
    source, _ = chat_run
    out = shutil.copytree(source, tmp_path / "run")
    (out / "eval_results.md").unlink()
    result = subprocess.run(
        [sys.executable, str(REPO / "entrypoint.py"), "evaluate", "--adapter", str(out)],
        env=command_env(tiny_model, chat_data, tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["task"] == "chat" and metrics["eval_loss"] > 0
    assert "| **overall** |" in (out / "eval_results.md").read_text()


def test_chat_one_turn(
    chat_run: tuple[Path, str], tiny_model: Path, chat_data: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    out, _ = chat_run
    env = command_env(tiny_model, chat_data, tmp_path)
    result = run_entry(env, "chat", "--adapter", str(out), "--system", "Answer in Najdi Arabic.", "Open the dragon.")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith("\n") and result.stdout.count("\n") >= 1  # the reply only
    if not result.stdout.strip():  # an untrained adapter may write nothing: said in words
        assert "the reply is empty" in result.stderr


def test_chat_input_file_writes_replies_next_to_it(
    chat_run: tuple[Path, str], tiny_model: Path, chat_data: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    out, _ = chat_run
    asked = [
        {"messages": [{"role": "user", "content": "Open the dragon."}]},
        {"messages": [{"role": "system", "content": "Answer in Hijazi Arabic."}, {"role": "user", "content": "Buy"}]},
        {"prompt": [{"role": "user", "content": "Find the friend."}]},
    ]
    source = write_jsonl(tmp_path / "ask.jsonl", asked)
    env = command_env(tiny_model, chat_data, tmp_path)
    result = run_entry(env, "chat", "--adapter", str(out), "--input", str(source))
    assert result.returncode == 0, result.stderr[-3000:]
    target = tmp_path / "ask.replies.jsonl"
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(written) == 3 and all(isinstance(line["reply"], str) for line in written)
    assert written[1]["messages"] == asked[1]["messages"]  # each row as it was, plus its reply
    before = target.read_bytes()
    again = run_entry(env, "chat", "--adapter", str(out), "--input", str(source))
    assert again.returncode == 2 and "already exists" in again.stderr.splitlines()[-1]
    assert target.read_bytes() == before  # never overwritten


def test_translate_refuses_a_chat_adapter(chat_run: tuple[Path, str]) -> None:
    with pytest.raises(ConfigError, match="is a chat adapter"):
        run_translate(Settings(), chat_run[0], "Hello", "Najdi", None, None)


def test_card_says_chat_and_its_snippet_runs(chat_run: tuple[Path, str], tiny_model: Path) -> None:
    out, _ = chat_run
    card = (out / "README.md").read_text()
    assert "chat adapter" in card and "apply_chat_template" in card and "- conversational" in card
    assert "type: text-generation" in card and "saudial chat --adapter" in card and "SauDial workbook" not in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S)
    assert snippet
    code = snippet.group(1).replace("max_new_tokens=256", "max_new_tokens=4")
    result = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_tokenizer_without_chat_template_is_exit_2(
    tiny_model: Path, chat_data: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    model = shutil.copytree(tiny_model, tmp_path / "plain")
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    result = run_entry(chat_env(model, chat_data, tmp_path / "out", SAUDIAL_TASK="auto"), "--dry-run")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"SAUDIAL_TASK=auto: {chat_data} holds conversations ('messages'): task chat" in result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"error: the tokenizer of {model} has no chat template") and "Traceback" not in result.stderr
