"""Repeatable runs: the deterministic settings that cost nothing (the lock file's hash is in rundir/record.py).

On the CPU a run is bitwise repeatable (same seed, data, settings, package versions and thread count):
the Trainer seeds Python, NumPy and torch (`seed`), the data order has its own seed (`data_seed`), and
the checkpoints hold every RNG state, so a resumed run equals an uninterrupted one (tests/test_resume.py).

On a GPU `configure` asks cuDNN for its deterministic algorithms, which cost little. cuBLAS is repeatable as
PyTorch runs it: PyTorch gives each cuBLAS handle and stream a workspace of its own, of a size fixed for the run
(32 MiB on Hopper, the size of `CUBLAS_WORKSPACE_CONFIG=:4096:8`). That variable is not set here: where it is set,
PyTorch parses it with a new `std::regex` on every cuBLAS call (CublasHandlePool.cpp's getChosenWorkspaceSize, not
cached; seen in torch 2.11's native stacks on the GPU machine), ~620 times a step on LFM2-1.2B's defaults, all of
it host time on a step bound by the host (docs/benchmarks.md). A value the user sets is kept
(torch.use_deterministic_algorithms needs one) and recorded.
What stays nondeterministic is listed in docs/resume.md (bitsandbytes' 4-bit kernels, atomic adds in attention
backward kernels, NCCL reduction order with several GPUs); we do not switch on
`torch.use_deterministic_algorithms`, which raises on some of those kernels or makes them much slower.
"""

from __future__ import annotations

import os


def configure() -> dict[str, str | bool]:
    """Set the cheap deterministic switches; return what was set (recorded in the manifest)."""
    import torch

    torch.backends.cudnn.benchmark = False  # autotuning may pick different kernels run to run
    torch.backends.cudnn.deterministic = True
    return {
        # The user's, or unset: PyTorch's own workspace size (a value set here would cost a regex per GEMM).
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG") or "unset (PyTorch's default)",
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "torch_num_threads": str(torch.get_num_threads()),
    }
