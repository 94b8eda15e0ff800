"""When the GPU waits, and for what: idle gaps between kernels in a torch.profiler trace, by the host work
that ended them.

A host-bound step shows as GPU busy time well under wall time (bench/profile_step.py). This reads the
profiler's Chrome trace of the same steps: GPU activity (kernels, copies, memsets) merged into busy intervals;
each idle gap between two of them is charged to the CPU operators that launched the work ending it (the
launch's correlation id links it to its kernel): the outermost operator on the launching thread (what the
program was doing: a layer's autograd Function, the optimizer, the data loader) and the innermost (which
call was late). Gaps of the profiled steps only; a gap is time the GPU had nothing queued.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}


class _Thread:
    """One host thread's operators, which nest: the outermost containing a time is found among the top-level
    ones by bisection, the innermost as the latest-starting one that contains it."""

    def __init__(self, ops: list[dict[str, Any]]) -> None:
        self.ops = sorted(ops, key=lambda e: (e["ts"], -e["dur"]))
        self.starts = [e["ts"] for e in self.ops]
        self.top: list[int] = []  # indexes of operators inside no other
        end = float("-inf")
        for i, op in enumerate(self.ops):
            if op["ts"] >= end:
                self.top.append(i)
                end = op["ts"] + op["dur"]
        self.top_starts = [self.ops[i]["ts"] for i in self.top]

    def enclosing(self, t: float) -> tuple[str, str]:
        k = bisect.bisect_right(self.top_starts, t) - 1
        if k < 0 or not _contains(self.ops[self.top[k]], t):
            return "", ""
        first = self.top[k]
        for i in range(bisect.bisect_right(self.starts, t) - 1, first - 1, -1):
            if _contains(self.ops[i], t):
                return self.ops[first]["name"], self.ops[i]["name"]
        return self.ops[first]["name"], self.ops[first]["name"]


def _contains(op: dict[str, Any], t: float) -> bool:
    return bool(op["ts"] <= t <= op["ts"] + op["dur"])


def gaps(trace: Path, steps: int, min_us: float = 5.0, top: int = 25) -> str:
    """A text report of the trace's GPU idle gaps, per step, charged to the host operators that ended them."""
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})
    }
    ops_by_tid: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("cat") in ("cpu_op", "user_annotation"):
            ops_by_tid[e["tid"]].append(e)
    threads = {tid: _Thread(ops) for tid, ops in ops_by_tid.items()}
    by_outer: Counter[str] = Counter()
    by_inner: Counter[str] = Counter()
    idle, count = 0.0, 0
    busy = end = gpu[0]["dur"] if gpu else 0.0
    end += gpu[0]["ts"] if gpu else 0.0
    for e in gpu[1:]:
        gap = e["ts"] - end
        if gap >= min_us:
            idle += gap
            count += 1
            launch = launches.get(e.get("args", {}).get("correlation"))
            outer = inner = "(no launch found)"
            if launch is not None and launch["tid"] in threads:
                outer, inner = threads[launch["tid"]].enclosing(launch["ts"])
            by_outer[outer or "(outside any operator)"] += gap
            by_inner[inner or "(outside any operator)"] += gap
        busy += max(0.0, e["ts"] + e["dur"] - max(e["ts"], end))
        end = max(end, e["ts"] + e["dur"])
    span = (end - gpu[0]["ts"]) if gpu else 0.0
    lines = [
        f"GPU span {span / steps / 1e3:.1f} ms per step: busy {busy / steps / 1e3:.1f} ms, idle in gaps of "
        f">= {min_us:g} us {idle / steps / 1e3:.1f} ms ({count / steps:,.0f} gaps per step)",
    ]
    for title, counter in (("outermost host operator", by_outer), ("innermost host operator", by_inner)):
        lines.append(f"\nidle ms per step, by the {title} that launched the work ending the gap")
        lines += [f"{ms / steps / 1e3:8.2f}  {name[:110]}" for name, ms in counter.most_common(top)]
    return "\n".join(lines) + "\n"
