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
