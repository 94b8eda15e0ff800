"""Quiet, line-based logs (saudial/cli/logs.py) and the model card on disk, through real runs.

The known-harmless warnings are filtered at their source: each filter is checked against the real
upstream message (so a changed text, or a fixed library, fails here), and against a neighbour it must
keep. Progress bars become lines when stderr is not a terminal: checked on tqdm itself, on datasets'
map and on a real training run, whose output must hold no carriage return at all.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import bitsandbytes
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from saudial.cli import logs
from tests.conftest import REPO, RunEntry, base_env

HUB_KERNELS = "transformers.integrations.hub_kernels"
BNB_CPU = "bitsandbytes.backends.cpu.ops"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_filters_drop_the_known_messages_and_keep_their_neighbours() -> None:
    logs.install_filters()
    logs.install_filters()  # idempotent: one filter per logger
    for name in (BNB_CPU, HUB_KERNELS):
        assert sum(isinstance(f, logs.DropKnownHarmless) for f in logging.getLogger(name).filters) == 1
    collect = Collect()
    for name in (BNB_CPU, HUB_KERNELS):
        logging.getLogger(name).addHandler(collect)
    try:
        logging.getLogger(BNB_CPU).warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            ModuleNotFoundError("No module named 'kernels'"),
        )
        logging.getLogger(BNB_CPU).warning("Failed to load the native library")
        for func in ("causal_conv1d_fn", "causal_conv1d_update"):
            logging.getLogger(HUB_KERNELS).warning(
                f"`{func}` is falling back to its reference PyTorch implementation because `causal_conv1d` is "
                "not installed. This is correct but much slower; install `causal_conv1d` for the optimized kernel."
            )
        logging.getLogger(HUB_KERNELS).warning("`fla_chunk` is falling back to its reference PyTorch implementation")
    finally:
        for name in (BNB_CPU, HUB_KERNELS):
            logging.getLogger(name).removeHandler(collect)
    assert collect.messages == [
        "Failed to load the native library",
        "`fla_chunk` is falling back to its reference PyTorch implementation",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.install_filters()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, 1)
        warnings.warn("`something_else` is deprecated", FutureWarning, 1)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]


# --- upstream still says what is filtered (when it stops, the filter goes) -------------------------


def test_upstream_bitsandbytes_still_warns_about_the_cpu_kernel() -> None:
    source = Path(bitsandbytes.__file__).parent / "backends" / "cpu" / "ops.py"
    text = source.read_text()
    assert "logger = logging.getLogger(__name__)" in text  # the logger the filter sits on: BNB_CPU
    start = logs.KNOWN_HARMLESS[0][1]
    assert re.search(r'"' + start + r": %s\. Please make sure you already `pip install kernels`", text)


def test_upstream_transformers_deprecation_and_peft_still_reading_it(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.is_gradient_checkpointing is False
    assert any(re.match(logs.DEPRECATION_FILTERS[0][0], str(w.message)) for w in caught)
    assert "is_gradient_checkpointing" in inspect.getsource(PeftModel.__init__)  # PEFT 0.21.2 still reads it


@pytest.mark.slow
def test_upstream_lfm2_generation_says_what_the_filter_drops(tiny_model: Path) -> None:
    """A fresh process (transformers says it once per process): the raw messages, and the filter on them."""
    code = f"""
import logging, torch
from transformers import AutoModelForCausalLM
from saudial.cli.logs import DropKnownHarmless, KNOWN_HARMLESS
seen = []
class Keep(logging.Handler):
    def emit(self, record):
        seen.append(record)
logging.getLogger({HUB_KERNELS!r}).addHandler(Keep())
model = AutoModelForCausalLM.from_pretrained({str(tiny_model)!r})
model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
drop = DropKnownHarmless(KNOWN_HARMLESS[1][1])
print("SEEN", len(seen), "KEPT", sum(drop.filter(r) for r in seen))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SEEN 2 KEPT 0" in result.stdout, result.stdout + result.stderr[-2000:]


PROGRESS = """
import io, sys, time
from tqdm import tqdm

# Upstream first: tqdm has no line mode; on a file it redraws after a carriage return.
plain = io.StringIO()
for _ in tqdm(range(3), file=plain, mininterval=0):
    pass
print("UPSTREAM_CR", "\\r" in plain.getvalue())

from saudial.cli import logs
logs.setup()  # stderr is a pipe here: line mode
logs.MIN_GAP_S = 0.0  # every 10% gets its line (a real bar waits 2 s between lines)
for _ in tqdm(range(20), desc="counting", mininterval=0):
    pass
for _ in tqdm(range(5), desc="vanishing", leave=False, mininterval=0):  # leave=False: no last line
    time.sleep(0.01)
logs.MIN_GAP_S = 0.5
for _ in tqdm(range(5), desc="quick", mininterval=0):  # over within MIN_GAP_S: nothing at all
    pass
steps = tqdm(total=6, desc="steps", mininterval=0)  # as the Trainer's: closed after its own last lines
for pause in (0.3, 0.3, 0.3, 0.3, 0.3, 0.1):  # lines at steps 2 and 4; the last step within MIN_GAP_S of one
    time.sleep(pause)
    steps.update(1)
print("AFTER THE LAST STEP", file=sys.stderr, flush=True)
steps.close()
import datasets
datasets.Dataset.from_dict({"a": list(range(40))}).map(lambda row: time.sleep(0.05) or row, desc="Mapping rows")

class Terminal(io.StringIO):
    def isatty(self):
        return True

tty = Terminal()
for _ in tqdm(range(3), file=tty, desc="on a terminal", mininterval=0):
    pass
print("TTY_CR", "\\r" in tty.getvalue(), "TTY_BAR", "|" in tty.getvalue())
"""


@pytest.mark.slow
def test_progress_bars_are_lines_without_a_terminal() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRESS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "UPSTREAM_CR True" in result.stdout  # if tqdm grows a line mode, use it instead of logs.line_progress
    assert "TTY_CR True TTY_BAR True" in result.stdout  # on a terminal: tqdm as it is
    err = result.stderr
    assert "\r" not in err
    counting = re.findall(r"^\S+ INFO saudial\.progress: counting: +(\d+)% (\d+)/20 \[.*\]$", err, re.M)
    assert [int(p) for p, _ in counting] == list(range(10, 101, 10))
    vanishing = re.findall(r"saudial\.progress: vanishing: +(\d+)%", err)
    assert vanishing == ["20", "40", "60", "80", "100"]  # its 10% lines, and no last line after them
    assert "quick" not in err
    steps = re.findall(r"saudial\.progress: steps: +(\d+)% ", err)
    assert steps[-1] == "100" and err.index("steps: 100%") < err.index("AFTER THE LAST STEP"), err
    mapping = re.findall(r"saudial\.progress: Mapping rows: +(\d+)% ", err)
    assert 2 <= len(mapping) <= 10 and mapping[-1] == "100", mapping  # datasets' map: a line per 0.5 s


# --- a real run: quiet, line-based, with saudial's card on disk ------------------------------------


@pytest.mark.slow
def test_tiny_run_logs_lines_and_leaves_the_saudial_card(
    tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    out = tmp_path / "out"
    env = base_env(
        tiny_model,
        workbook,
        out,
        SAUDIAL_EVAL="full",
        SAUDIAL_MAX_EVAL_SAMPLES="8",
        SAUDIAL_MAX_NEW_TOKENS="8",
        SAUDIAL_LOGGING_STEPS="2",
        CI="true",  # transformers would print its warnings twice under CI without the folding in logs.py
    )
    result = run_entry(env)  # stdout and stderr are pipes: no terminal
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    # Trainer, datasets' map, the weights' loading and generation all draw tqdm bars, which redraw after
    # '\r' on a pipe as upstream draws them (test above): in line mode none does. (This run's bars are over
    # within 2 s, so they print nothing; the test above checks the lines of longer ones.)
    assert "\r" not in text, "a progress bar drew in place"
    for line in re.findall(r"saudial\.progress: (.*)", result.stderr):
        assert re.search(r"\d+% \d+/\d+ \[", line), line
    for noise in ("gemm_4bit_forward", "is_gradient_checkpointing", "is falling back to its reference"):
        assert noise not in text, noise
    assert "'learning_rate': '0'" not in result.stdout  # no log of the warm-up's first step (lr 0)
    # One line per logged step (training/steplines.py), never upstream's printed dicts of TRL's diagnostics.
    steps = re.findall(
        r"^step (\d+)/4  loss [\d.]+  grad_norm [\d.e+-]+  learning_rate [\d.e+-]+  epoch", result.stdout, re.M
    )
    assert steps == ["2", "4"], result.stdout[-2000:]
    assert re.search(r"^trained 4 steps in [\d.]+ s, mean loss [\d.]+$", result.stdout, re.M), result.stdout[-2000:]
    assert "{'" not in result.stdout and "mean_token_accuracy" not in text
    assert result.stderr.count("settings that differ from the defaults") == 1
    assert re.search(r"^ {2}max_steps +4 +env$", result.stderr, re.M)
    lines = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(lines) == len(set(lines)), "a warning printed twice"

    card = (out / "README.md").read_text()
    assert "fine-tuned version of" not in card and 'model="None"' not in card  # not TRL's placeholder
    assert f"base_model: {tiny_model}" in card
    assert f"A LoRA (on the unquantized float32 base) adapter for {tiny_model}" in card
    assert "| Dialect | train | eval |" in card
    for dialect in ("Eastern", "Hijazi", "Najdi", "Southern"):
        assert re.search(rf"^\| {dialect} \| \d+ \| \d+ \|$", card, re.M), dialect
    assert "chrF++" in card and f"saudial translate --adapter {out}" in card
    assert "| `max_steps` | `4` |" in card  # the settings that differ from the defaults
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"on {metrics['evaluation']['samples']} of the {metrics['eval_samples']} held-out" in card

    # Inference prints no training settings; an empty translation is said in words.
    result = run_entry(
        {k: v for k, v in env.items() if k != "SAUDIAL_OUTPUT_DIR"},
        "translate",
        "--adapter",
        str(out),
        "--dialect",
        "Najdi",
        "Open the door.",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "settings that differ" not in result.stderr
    said_empty = "the translation is empty" in result.stderr
    assert said_empty == (result.stdout.strip() == ""), result.stdout + result.stderr[-1000:]
