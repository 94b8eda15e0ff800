"""Where the training step's host time goes, from py-spy's sampled Python stacks.

The step is bound by the host (docs/benchmarks.md), and torch.profiler names operators, not the Python that
issues them. py-spy samples the training process's Python stacks; this reads its raw output (one line per
distinct stack, "frame;frame;... count") and prints, for the samples taken inside the training step, the
functions with the most samples of their own and the most samples in all they call.

    BENCH_WRAP="py-spy record --rate 250 --format raw --output /tmp/spy.txt --" \\
        python bench/bench.py --sections levers --only "levers: defaults" --skip "levers: defaults,"
    python bench/host_profile.py /tmp/spy.txt --top 40
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--inside", default="training_step", help="count only stacks through this frame")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
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
