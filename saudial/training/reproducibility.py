"""Repeatable runs: the deterministic settings that cost nothing (the lock file's hash is in rundir/record.py).

On the CPU a run is bitwise repeatable (same seed, data, settings, package versions and thread count):
the Trainer seeds Python, NumPy and torch (`seed`), the data order has its own seed (`data_seed`), and
the checkpoints hold every RNG state, so a resumed run equals an uninterrupted one (tests/test_resume.py).

On a GPU `configure` asks cuBLAS and cuDNN for their deterministic algorithms, which cost little.
What stays nondeterministic there is listed in docs/resume.md (bitsandbytes' 4-bit kernels, atomic
adds in attention backward kernels, NCCL reduction order with several GPUs); we do not switch on
`torch.use_deterministic_algorithms`, which raises on some of those kernels or makes them much slower.
"""

from __future__ import annotations

import os


def configure() -> dict[str, str | bool]:
    """Set the cheap deterministic switches; return what was set (recorded in the manifest)."""
    import torch

    # cuBLAS picks reduction order by workspace; a fixed workspace config makes it deterministic
    # (CUDA >= 10.2). Must be set before the first cuBLAS call; a value the user set is kept.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False  # autotuning may pick different kernels run to run
    torch.backends.cudnn.deterministic = True
    return {
        "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"],
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "torch_num_threads": str(torch.get_num_threads()),
    }
