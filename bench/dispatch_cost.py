"""Host microseconds per call of the operations a QLoRA step issues most, on a CUDA GPU.

The step is bound by the host (docs/benchmarks.md): what one matmul, one fused multiply-add or one 4-bit
dequantize costs the CPU decides how fast it can go. Each operation is issued `--calls` times back to back
(fewer than the GPU's launch queue holds, so the host never waits for the GPU) and timed on the host; the
GPU is synchronized between operations. Shapes are LFM2-1.2B's at the default batch (~8,400 tokens).

    python bench/dispatch_cost.py [--calls 200]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def host_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(10):  # warm: cuBLAS handles, heuristics, allocator blocks
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    import bitsandbytes as bnb

    dev, dt = "cuda", torch.bfloat16
    tokens, hidden, rank = 8448, 2048, 8
    x = torch.randn(tokens, hidden, device=dev, dtype=dt)
    w = torch.randn(hidden, hidden, device=dev, dtype=dt)
    a = torch.randn(rank, hidden, device=dev, dtype=dt)
    h = x @ a.t()
    packed, state = bnb.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    out = torch.empty(tokens, hidden, device=dev, dtype=dt)
    ops = torch.ops.bitsandbytes
    rows: list[tuple[str, Callable[[], object]]] = [
        ("torch.mm (tokens x 2048 x 2048)", lambda: torch.mm(x, w.t())),
        ("F.linear", lambda: torch.nn.functional.linear(x, w)),
        ("addmm_ (LoRA B, rank 8)", lambda: out.addmm_(h, a, alpha=2.0)),
        ("mm (LoRA A, rank 8)", lambda: x @ a.t()),
        ("mul (tokens x 2048)", lambda: x * 2.0),
        (
            "dequantize_4bit op, fp32 scales",
            lambda: ops.dequantize_4bit.default(packed, absmax, 64, "nf4", w.shape, dt),
        ),
        ("bnb.functional.dequantize_4bit, nested", lambda: bnb.functional.dequantize_4bit(packed, state)),
    ]
    print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, {torch.cuda.get_device_name()}")
    for library in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(library)
        print(f"\npreferred BLAS library: {library}")
        for name, fn in rows:
            print(f"{host_us(fn, args.calls):9.1f} us  {name}")


if __name__ == "__main__":
    main()
