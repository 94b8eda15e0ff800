"""Process-wide options of the libraries underneath, set before they initialize (no torch import here)."""

from __future__ import annotations

import os

# PyTorch's caching allocator with expandable segments. Padding-free rows change length every step, and the
# native allocator fragments on them: measured on an H200 (docs/benchmarks.md), the default 900-row run
# reserved 48.8 GiB for 22.0 GiB allocated, and 22.6 GiB with expandable segments at the same speed.
ALLOCATOR = "expandable_segments:True"


def configure_allocator() -> None:
    """Expandable segments, unless the user configured the allocator. Must run before CUDA is initialized
    (torch reads the variable at its lazy CUDA init); cli.main calls it first, and the image sets it too."""
    if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR


def configure_caches() -> None:
    """Compiled kernels kept in the Hugging Face cache directory (HF_HOME), unless the user placed them: Triton's
    (`TRITON_CACHE_DIR`: saudial's kernels, model/kernels.py) and TorchInductor's (`TORCHINDUCTOR_CACHE_DIR`:
    `torch_compile`). Their defaults are under the home directory, which in the image is the container's own
    and gone with it, while HF_HOME is the image's named volume: without this, every `docker compose run`
    compiled the kernels again, which on a machine's first run cost ~5 s of training warm-up and ~4 s of
    evaluation's first generation on an H100 (docs/benchmarks.md). Must run before torch is imported: importing
    Inductor sets its variable to a default under /tmp. Both libraries read the variables when they compile
    (tests/test_upstream.py); cli.main calls this first."""
    from huggingface_hub import constants

    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(constants.HF_HOME, "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(constants.HF_HOME, "torch-compile"))
