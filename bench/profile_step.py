"""Where a training step's time goes: torch.profiler over a few steady-state steps of the real trainer.

    SAUDIAL_DATA=... SAUDIAL_MODEL_NAME_OR_PATH=... python bench/profile_step.py OUT.txt [--steps 3]

Settings come from the environment exactly as for entrypoint.py (SAUDIAL_*), and the trainer is the one
`saudial.training.trainer.build_trainer` makes. It prints, per step: wall time, GPU busy time (sum of kernel times),
kernel launches and CPU-side operator calls, the busy time by kind of kernel (bench/kernel_kinds.py: the
element-wise share), then the top kernels and the top CPU operators. A step whose wall time is far above its GPU
busy time is bound by the host (Python, dispatch, launches), not the GPU.
With `--syncs N`, the N steps before the profiled ones run under torch's sync debug mode and the report
lists each place that made the host wait for the GPU (`.item()`, a blocking copy, a boolean index), per step.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.kernel_kinds import report as kinds_report
from saudial.config.settings import Settings
from saudial.data.examples import prepare
from saudial.data.examples import split as data_split
from saudial.data.workbook import load
from saudial.model.hardware import compute_dtype
from saudial.model.loading import load_model, load_tokenizer
from saudial.training.trainer import build_trainer


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepProfiler(TrainerCallback):
    """Profile optimizer steps [start, start + count) and keep the profiler's summary."""

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count = start, count
        self.prof: Any = None
        self.wall = 0.0
        self._t0 = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.start:
            sync()
            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.prof is not None and state.global_step == self.start + self.count:
            sync()
            self.wall = time.perf_counter() - self._t0
            self.prof.__exit__(None, None, None)
            control.should_training_stop = True


class SyncCounter(TrainerCallback):
    """Count the host-device synchronizations of steps (start, start + count], by the code that made them.

    Each window step runs from the end of the previous step to its own end, so it holds one batch fetch.
    """

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count = start, count
        self.sites: collections.Counter[str] = collections.Counter()
        self._show: Any = None

    def _record(self, message: Any, *args: Any, **kwargs: Any) -> None:
        if "synchronizing CUDA operation" not in str(message):
            self._show(message, *args, **kwargs)
            return
        frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith(SKIPPED_FRAMES)]
        where = [f"{_short(f.filename)}:{f.lineno} {f.name}" for f in frames[-2:]]
        self.sites[" <- ".join(reversed(where))] += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.start:
            self._show, warnings.showwarning = warnings.showwarning, self._record
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif state.global_step == self.start + self.count and self._show is not None:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = self._show

    def report(self) -> str:
        total = sum(self.sites.values())
        lines = [
            f"host-device syncs per step: {total / self.count:.1f} (steps {self.start + 1}-{self.start + self.count})"
        ]
        lines += [f"  {n / self.count:5.1f}  {site}" for site, n in self.sites.most_common()]
        return "\n".join(lines) + "\n"


# Where a sync is reported, not made: torch's own package and the warnings module. Matched as path prefixes: a
# substring such as "/torch/" also drops every library frame of a Python installed under a folder of that name.
SKIPPED_FRAMES = (os.path.dirname(torch.__file__) + os.sep, warnings.__file__)


def _short(path: str) -> str:
    """A library's file from its package folder on, one of ours from the repository's folder on."""
    for packages in ("site-packages/", "dist-packages/"):
        if packages in path:
            return path.split(packages, 1)[1]
    for marker in ("/saudial/", "/bench/"):
        if marker in path:
            return marker[1:] + path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8, help="steps before profiling (compile warm-up included)")
    parser.add_argument("--trace", type=Path, help="also write the Chrome trace here and report the GPU's idle gaps")
    parser.add_argument("--syncs", type=int, default=0, help="count the host-device syncs of this many steps first")
    args = parser.parse_args()
    assert args.syncs < args.warmup, "the sync-counted steps come before the profiled ones: --syncs < --warmup"

    settings = Settings()
    assert settings.data is not None, "set SAUDIAL_DATA"
    dataset = load(settings.data, settings.sheet_name, settings.dialects)
    split = data_split(dataset.rows, settings.eval_size, settings.seed)
    tokenizer = load_tokenizer(settings)
    train_ds, eval_ds, _ = prepare(dataset, split, tokenizer, settings.max_length)  # the records training gets
    dtype = compute_dtype(settings)
    trainer = build_trainer(
        settings.model_copy(update={"max_steps": args.warmup + args.steps + 1}),
        load_model(settings),
        tokenizer,
        train_ds,
        eval_ds,
        dtype,
    )
    profiler = StepProfiler(args.warmup, args.steps)
    trainer.add_callback(profiler)
    counter = SyncCounter(args.warmup - args.syncs, args.syncs) if args.syncs and torch.cuda.is_available() else None
    if counter is not None:
        trainer.add_callback(counter)
    trainer.train()

    events = profiler.prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in kernels)
    cpu_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    n = args.steps
    head = (
        f"{settings.per_device_train_batch_size=} {settings.torch_compile=} {settings.gradient_checkpointing=}\n"
        f"per step: wall {profiler.wall / n * 1e3:.1f} ms, GPU busy {gpu_us / n / 1e3:.1f} ms "
        f"({gpu_us / 1e6 / profiler.wall:.0%} of wall), {launches / n:,.0f} kernels, {cpu_ops / n:,.0f} aten ops\n"
    )
    head += "\n" + kinds_report(((e.key, e.self_device_time_total) for e in kernels), n)
    idle = ""  # the GPU's idle gaps, from the trace (bench/gaps.py), right under the summary
    if args.trace:
        from bench.gaps import gaps

        profiler.prof.export_chrome_trace(str(args.trace))
        idle = "\n" + gaps(args.trace, n)
    syncs = "\n" + counter.report() if counter is not None else ""
    text = (
        head
        + syncs
        + idle
        + "\ntop GPU kernels\n"
        + events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=70)
        + "\ntop CPU operators\n"
        + events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=70)
        + "\nmost frequent operators (calls over the profiled steps)\n"
        + events.table(sort_by="count", row_limit=40, max_name_column_width=70)
    )
    if settings.torch_compile is True:
        from torch._dynamo.utils import compile_times, counters

        text += "\ncompile times\n" + str(compile_times(repr="str", aggregate=True))
        text += "\ncache counters\n" + "\n".join(f"{k}: {dict(v)}" for k, v in counters.items() if v)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(head + syncs, flush=True)


if __name__ == "__main__":
    main()
