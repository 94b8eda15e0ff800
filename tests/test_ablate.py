"""bench/ablate.py: the "before" side of the speed overrides' same-call pairs takes out what it names."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from bench import ablate
from saudial.model import lm_head, patches, qk_kernels, stacked_lora
from saudial.training.late_log import LateLogs


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The ablations replace module attributes process-wide: monkeypatch puts them back after the test."""
    monkeypatch.setattr(lm_head, "supported", lm_head.supported)
    monkeypatch.setattr(patches, "avoid_cudnn_attention", patches.avoid_cudnn_attention)
    monkeypatch.setattr(stacked_lora, "stacked", stacked_lora.stacked)
    monkeypatch.setattr(qk_kernels, "covers", qk_kernels.covers)
    monkeypatch.setattr(LateLogs, "_log_late_ok", LateLogs._log_late_ok)
    return monkeypatch


def test_each_ablation_takes_its_override_out(restored: pytest.MonkeyPatch) -> None:
    tiny_head = torch.nn.Linear(4, 8, bias=False)

    class Model(torch.nn.Module):
        config = type("Config", (), {"get_text_config": lambda self: self})()

        def get_output_embeddings(self) -> torch.nn.Module:
            return tiny_head

    assert lm_head.supported(Model())  # the compact head takes a plain untied-or-tied linear head
    ablate.WITHOUT["compact-loss-head"]()
    assert not lm_head.supported(Model())  # TRL's fused head then serves, as without saudial's

    restored.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda enabled: pytest.fail("cuDNN switched"))
    ablate.WITHOUT["cudnn-attention-off"]()
    patches.avoid_cudnn_attention()  # what model/loading.load_model calls: PyTorch's own default stands

    stacked = stacked_lora.stacked
    ablate.WITHOUT["stacked-lora"]()
    assert stacked_lora.stacked is not stacked
    assert stacked_lora.stacked((torch.nn.Linear(4, 4),) * 2, torch.ones(1, 4)) is None  # each layer on its own

    x, weight, rotation = torch.ones(1, 3, 2, 8), torch.ones(8), torch.ones(1, 3, 8)
    assert qk_kernels.covers(x, weight, rotation, rotation)
    ablate.WITHOUT["qk-rope"]()
    assert not qk_kernels.covers(x, weight, rotation, rotation)  # upstream's norm, then rotation

    ablate.WITHOUT["late-log"]()
    assert LateLogs._log_late_ok(None) is False  # type: ignore[arg-type]  # every log read at its step


def test_an_ablation_whose_function_is_gone_stops_instead_of_measuring_nothing(restored: pytest.MonkeyPatch) -> None:
    restored.delattr(lm_head, "supported")
    with pytest.raises(SystemExit, match=r"saudial\.model\.lm_head\.supported is gone"):
        ablate.WITHOUT["compact-loss-head"]()


def test_the_process_is_set_up_before_any_ablation_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ablation imports the model libraries, and importing bitsandbytes initializes CUDA, which reads the
    allocator's variable: cli.main's process setup must come first, or the "before" side of a pair runs on
    another allocator (a pair once measured 36.1 GiB reserved against the defaults' 16.0 that way)."""
    from saudial.config import runtime

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    seen: dict[str, object] = {}

    def probe() -> None:
        seen["allocator"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        seen["triton cache"] = os.environ.get("TRITON_CACHE_DIR")

    monkeypatch.setitem(ablate.WITHOUT, "probe", probe)
    monkeypatch.setenv("BENCH_WITHOUT", "probe")
    monkeypatch.setattr(ablate.runpy, "run_path", lambda *a, **k: None)  # the run itself is not this test's
    monkeypatch.setattr(sys, "argv", ["ablate.py"])
    ablate.main()
    assert seen["allocator"] == runtime.ALLOCATOR
    assert seen["triton cache"] is not None  # the compiled kernels in HF_HOME, as a saudial run keeps them
