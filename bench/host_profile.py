"""Where the training step's host time goes, from py-spy's sampled Python stacks.

The step is bound by the host (docs/benchmarks.md), and torch.profiler names operators, not the Python that
issues them. py-spy samples the training process's Python stacks; this reads its raw output (one line per
distinct stack, "frame;frame;... count") and prints, for the samples taken inside the training step, the
functions with the most samples of their own and the most samples in all they call.

    BENCH_WRAP="py-spy record --rate 250 --format raw --output /tmp/spy.txt --" \\
        python bench/bench.py --sections levers --only "levers: defaults" --skip "levers: defaults,"
    python bench/host_profile.py /tmp/spy.txt --top 40

With `--phases` it prints instead how the training loop's samples split by phase (the first rule of PHASES whose
frame a stack passes through), and how many samples the other threads took: the autograd engine's thread runs
the Python of custom autograd Functions' backwards while the main thread waits in `backward`. Record with
py-spy's `--threads` for the threads' split.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def read(path: Path, inside: str) -> tuple[list[tuple[list[str], int]], int]:
    """Stacks (root first) that pass through a frame containing `inside`, with their counts; all samples."""
    stacks, total = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        names = frames.split(";")
        if any(inside in name for name in names):
            stacks.append((names, int(count)))
    return stacks, total


# (phase, frames any of which puts a stack of the training loop in it), first match wins: the main thread's backward
# (waiting for the autograd thread), the optimizer, clipping, the model's forward under compute_loss, the rest of
# compute_loss (the loss and TRL's metrics), the next batch, logging and callbacks.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backward (main thread)", ("_engine_run_backward", "backward (torch/_tensor")),
    ("optimizer step", ("step (torch/optim/", "optimizer_step")),
    ("gradient clipping", ("clip_grad_norm",)),
    ("model forward", ("_call_impl (torch/nn/modules/module",)),
    ("loss and metrics", ("compute_loss",)),
    ("next batch", ("__next__ (torch/utils/data", "get_batch_samples")),
    ("logging, saving, callbacks", ("_maybe_log_save_evaluate", "call_event")),
)
LOOP = "_inner_training_loop"


def phases(path: Path) -> tuple[Counter[str], int, Counter[str]]:
    """Samples of the training loop by phase, their total, and the other stacks' samples by their root frame
    (a thread where py-spy ran with --threads)."""
    stacks, _ = read(path, "")
    by_phase: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for names, count in stacks:
        if not any(LOOP in name for name in names):
            others[names[0]] += count
            continue
        phase = next((p for p, marks in PHASES if any(m in name for name in names for m in marks)), "other")
        by_phase[phase] += count
    return by_phase, sum(by_phase.values()), others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--inside", default="training_step", help="count only stacks through this frame")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--phases", action="store_true", help="the training loop's samples by phase (PHASES)")
    args = parser.parse_args()
    if args.phases:
        by_phase, loop, others = phases(args.raw)
        print(f"{loop:,} samples in the training loop ({LOOP})")
        for phase, count in by_phase.most_common():
            print(f"{count / max(loop, 1):7.1%}  {phase}")
        print("\nsamples outside it, by root frame (a thread, with py-spy --threads)")
        for root, count in others.most_common(args.top):
            print(f"{count:8,}  {root[:160]}")
        return
    stacks, total = read(args.raw, args.inside)
    inside = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    for names, count in stacks:
        own[names[-1]] += count
        for name in set(names):
            under[name] += count
    print(f"{inside:,} of {total:,} samples inside {args.inside!r}")
    for title, counter in (("own samples", own), ("samples in the function and all it calls", under)):
        print(f"\n{title}")
        for name, count in counter.most_common(args.top):
            print(f"{count / max(inside, 1):7.1%}  {name[:160]}")


if __name__ == "__main__":
    main()
