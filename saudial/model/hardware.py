"""What the hardware can do: is CUDA usable, and which dtype to compute in. Needs torch only.

Kept apart from loading.py so that a GPU run on a machine without a usable GPU fails in seconds,
before transformers, PEFT and TRL are even imported.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saudial.errors import ConfigError

if TYPE_CHECKING:
    from saudial.config.settings import Settings

# torch's CUDA 13 wheels need an NVIDIA driver of the R580 branch or newer (see docs/docker.md).
MIN_DRIVER = "580"


def cuda_problem() -> str | None:
    """Why CUDA is not usable here, in a few words (None when it is)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable:
        return None
    reasons = " ".join(str(w.message).splitlines()[0] for w in caught)
    if "too old" in reasons:
        return (
            f"the NVIDIA driver is too old for this build of torch (CUDA {torch.version.cuda}): "
            f"install driver >= {MIN_DRIVER} or use an image built for an older CUDA (docs/docker.md). {reasons}"
        )
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    in_container = Path("/.dockerenv").exists() or os.environ.get("NVIDIA_VISIBLE_DEVICES") is not None
    if in_container:
        return (
            "no GPU is visible in the container: run it with `--gpus all` (docker run) or keep the GPU "
            "reservation of compose.yaml, on a host with the NVIDIA Container Toolkit"
        )
    return "no CUDA GPU is visible"


def check_cuda() -> None:
    """Fail early, and say why and what else to do, when a run needs a GPU that is not usable."""
    problem = cuda_problem()
    if problem is None:
        return
    raise ConfigError(
        f"a 4-bit or 8-bit base model (SAUDIAL_QUANTIZATION, 4bit by default) needs a CUDA GPU, but {problem}. "
        "`saudial check` says what this machine can do; without a GPU, `make demo` runs the whole pipeline on "
        "the CPU with a tiny model, and SAUDIAL_QUANTIZATION=none trains unquantized (slow on the CPU)"
    )


def compute_dtype(settings: Settings) -> torch.dtype:
    """The dtype matmuls run in: bf16 where the GPU has it, else fp16; fp32 on the CPU."""
    if settings.torch_dtype != "auto":
        return getattr(torch, settings.torch_dtype)
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# CPU threads for generation. Decoding is one token at a time: each step's matmuls are as small as the model,
# and every thread waits for the slowest at each of them. Measured on a 2-core machine whose cores were
# busy with other work (load 11), 48 greedy tokens: the tiny demo LFM2 (0.2M parameters) 0.27 s on 1 thread
# vs 4.6 s on 2; a 165M-parameter LFM2 10.3 s vs 109 s. So: a model below SMALL_MODEL_PARAMETERS gets one
# thread (its steps are too small to split, busy cores or not); a larger one gets torch's default (one
# per core this process may run on) less the cores other processes keep busy (the 1-minute load average),
# at least one: on idle cores, a real 1.2B model's steps are large enough to gain from every core.
SMALL_MODEL_PARAMETERS = 10_000_000
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_threads(parameters: int) -> tuple[int, str]:
    """The threads for CPU generation with a model of `parameters`, and why, in a few words."""
    for name in THREAD_VARIABLES:
        if os.environ.get(name, "").strip():
            return torch.get_num_threads(), f"{name}={os.environ[name].strip()}"
    if parameters < SMALL_MODEL_PARAMETERS:
        return 1, f"a model of {parameters / 1e6:.1f}M parameters runs fastest on one; OMP_NUM_THREADS sets it"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    threads = max(1, min(cores, cores - busy))
    return threads, f"{cores} core(s), {min(busy, cores)} busy with other work; OMP_NUM_THREADS sets it"


def set_cpu_threads(model: torch.nn.Module) -> None:
    """On the CPU, generate with `cpu_threads` threads, and say so."""
    if next(model.parameters()).device.type != "cpu":
        return
    threads, why = cpu_threads(sum(p.numel() for p in model.parameters()))
    torch.set_num_threads(threads)
    logging.getLogger(__name__).info("CPU generation: %d thread(s) (%s)", threads, why)
