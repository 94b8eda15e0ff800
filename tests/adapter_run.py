"""Adapters for the tests (not a test module): one short training run shared by the evaluation, translate,
merge and push tests, and an untrained adapter with random weights for the in-process generation tests.

Training the tiny model through the real entry point takes tens of seconds on 2 CPU cores, so the
tests that only need *an* adapter share one run per session; each copies it before changing it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENTRYPOINT, REPO, base_env

_RUNS: dict[tuple[str, str], Path] = {}


def trained_adapter(tiny_model: Path, workbook: Path, factory: pytest.TempPathFactory) -> Path:
    """The output directory of a finished 4-step run without evaluation (read-only: copy it)."""
    key = (str(tiny_model), str(workbook))
    if key not in _RUNS:
        out = factory.mktemp("trained") / "out"
        env = base_env(tiny_model, workbook, out, SAUDIAL_EVAL="none", OMP_NUM_THREADS="1")
        result = subprocess.run(
            [sys.executable, str(ENTRYPOINT)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        _RUNS[key] = out
    return _RUNS[key]


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def random_adapter(settings: Any) -> tuple[Any, Any]:
    """`settings`' base model (the tiny LFM2) with saudial's LoRA, its B matrices drawn from N(0, 0.5) under seed
    0 (LoRA's B starts at zero: base and adapter would not differ), and the tokenizer."""
    import torch
    from peft import get_peft_model

    from saudial.model.loading import load_model, load_tokenizer
    from saudial.model.lora import lora_config

    tokenizer = load_tokenizer(settings)
    torch.manual_seed(0)
    model = get_peft_model(load_model(settings), lora_config(settings))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model, tokenizer
