#!/usr/bin/env python3
"""Run entrypoint.py with some of saudial's speed overrides of upstream behaviour taken out.

The "before" side of a same-call pair (docs/benchmarks.md, Decisions; docs/architecture.md, Upstream overrides):
bench.py runs a configuration through this script instead of entrypoint.py when its settings hold
BENCH_WITHOUT, a comma list of the names below. Overrides that have a setting of their own (the kernels:
SAUDIAL_FUSED_KERNELS; varlen attention: SAUDIAL_ATTN_IMPLEMENTATION=sdpa; the fused LoRA step:
SAUDIAL_FUSED_LORA; the frozen weights kept dequantized: SAUDIAL_DEQUANTIZE_ONCE) are paired through that
setting instead.

    BENCH_WITHOUT=compact-loss-head python bench/ablate.py [entrypoint arguments]
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's saudial, which entrypoint.py runs (as bench.py does)


def _replace(module: object, name: str, value: object) -> None:
    """Set module.name, which must exist: an ablation of a renamed function would measure nothing."""
    if not callable(getattr(module, name, None)):
        raise SystemExit(f"ablate: {getattr(module, '__name__', module)}.{name} is gone: update bench/ablate.py")
    setattr(module, name, value)


def _trl_loss_head() -> None:
    """TRL's fused head (boolean indexes of the completion tokens) instead of model/lm_head.py's."""
    from saudial.model import lm_head

    _replace(lm_head, "supported", lambda model: False)


def _cudnn_attention() -> None:
    """SDPA free to pick its cuDNN backend, as PyTorch does by default (model/patches.avoid_cudnn_attention)."""
    from saudial.model import patches

    _replace(patches, "avoid_cudnn_attention", lambda: None)


def _one_step_per_layer() -> None:
    """One fused LoRA step per layer: each feed-forward's w1 and w3, and each attention's q, k and v, on their own
    (model/stacked_lora.py runs the layers of one input as one step)."""
    from saudial.model import stacked_lora

    _replace(stacked_lora, "stacked", lambda layers, x, split=False: None)


def _qk_norm_then_rope() -> None:
    """q and k through the RMSNorm kernel and upstream's `apply_rotary_pos_emb` (PyTorch's kernels) instead of one
    kernel each way for both (model/qk_kernels.py)."""
    from saudial.model import qk_kernels

    _replace(qk_kernels, "covers", lambda x, weight, cos, sin: False)


def _logs_read_at_once() -> None:
    """Each logged step's values read from the GPU at that step, as upstream reads them (training/late_log.py reads
    them one step later)."""
    from saudial.training import late_log

    _replace(late_log.LateLogs, "_log_late_ok", lambda self: False)


WITHOUT: dict[str, Callable[[], None]] = {
    "compact-loss-head": _trl_loss_head,
    "cudnn-attention-off": _cudnn_attention,
    "stacked-lora": _one_step_per_layer,
    "qk-rope": _qk_norm_then_rope,
    "late-log": _logs_read_at_once,
}


def main() -> None:
    names = [n.strip() for n in os.environ.get("BENCH_WITHOUT", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in WITHOUT]
    if unknown:
        sys.exit(f"ablate: unknown BENCH_WITHOUT name(s) {', '.join(unknown)}: choose from {', '.join(WITHOUT)}")
    # The ablations import the model libraries, and importing bitsandbytes initializes CUDA: the process setup of
    # cli.main (the allocator above all) first, or the "before" side runs with another allocator than the "after".
    from saudial.config.runtime import prepare_process

    prepare_process()
    for name in names:
        WITHOUT[name]()
        print(f"ablate: without {name}", flush=True)
    sys.argv = [str(REPO / "entrypoint.py"), *sys.argv[1:]]
    runpy.run_path(str(REPO / "entrypoint.py"), run_name="__main__")


if __name__ == "__main__":
    main()
