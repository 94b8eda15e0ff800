"""What kind of GPU work each kernel of a step profile is, and each kind's share of the GPU's busy time.

bench/profile_step.py prints the shares under its summary. Issue #28's element-wise target (at most 12% of the
GPU's busy time) reads off the "element-wise" line: saudial's own Triton kernels (SwiGLU, the norms, the short
conv, q/k norm and rotation) and PyTorch's element-wise, copy and reduction kernels (`cat`, casts, sums, the
embedding's gather), the optimizer's and the matrix multiplies' apart. Kernels are told apart by name: cuBLAS's
(`nvjet_*`, `*gemm*`, `splitKreduce`), flash attention's, bitsandbytes' dequantize, the fused AdamW's
`multi_tensor_apply` and the memsets and copies the profiler names; saudial's Triton kernels by the names of the
`@triton.jit` functions in saudial/model, read from the modules themselves so a new kernel is counted at once.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path

# Lower-case name fragments, tried in this order (the first that matches decides)
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memsets and copies", ("memset", "memcpy")),
    ("matrix multiplies", ("nvjet", "gemm", "cutlass", "xmma", "splitkreduce", "cublas")),
    ("attention", ("flash", "fmha")),
    ("optimizer step (AdamW, the gradient norm)", ("multi_tensor_apply", "adam", "lpnorm")),
    ("dequantize", ("kdequantize", "dequantize")),
)
TRITON = "saudial's Triton kernels"
OTHER = "PyTorch's element-wise and reductions"
ELEMENT_WISE = (TRITON, OTHER)


@cache
def triton_kernels() -> frozenset[str]:
    """The names of the Triton kernels saudial/model defines (the modules that hold `@triton.jit`)."""
    from triton.runtime import KernelInterface

    from saudial import model

    names: set[str] = set()
    for info in pkgutil.iter_modules(model.__path__):
        source = Path(model.__path__[0], f"{info.name}.py")
        if source.is_file() and "@triton.jit" in source.read_text(encoding="utf-8"):
            module = importlib.import_module(f"saudial.model.{info.name}")
            names |= {v.fn.__name__ for v in vars(module).values() if isinstance(v, KernelInterface)}
    return frozenset(names)


def kind(name: str) -> str:
    """The kind of work of a kernel, from its name as the profiler reports it."""
    if name in triton_kernels():
        return TRITON
    lower = name.lower()
    for label, fragments in KINDS:
        if any(f in lower for f in fragments):
            return label
    return OTHER


def shares(kernels: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Microseconds of GPU time per kind, largest first, from (kernel name, self GPU microseconds) pairs."""
    totals: dict[str, float] = {}
    for name, us in kernels:
        label = kind(name)
        totals[label] = totals.get(label, 0.0) + us
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def report(kernels: Iterable[tuple[str, float]], steps: int) -> str:
    """The shares as the profile prints them: ms per step and percent of busy time, then the element-wise sum
    (nothing without GPU kernels: a profile on the CPU)."""
    totals = shares(kernels)
    busy = sum(totals.values())
    if not busy:
        return ""
    lines = ["GPU busy time by kind of kernel, ms per step"]
    lines += [f"  {us / steps / 1e3:7.2f}  {us / busy:6.1%}  {label}" for label, us in totals.items()]
    element_wise = sum(totals.get(label, 0.0) for label in ELEMENT_WISE)
    lines.append(f"element-wise ({' + '.join(ELEMENT_WISE)}): {element_wise / busy:.1%} of GPU busy time")
    return "\n".join(lines) + "\n"
