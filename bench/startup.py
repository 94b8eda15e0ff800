"""Benchmark: where a whole run's time goes outside training (the CPU and a tiny model, or the bench's GPU run).

    python bench/startup.py                   # default run (2 steps) and dry run, 3 times each
    python bench/startup.py --runs 5 --steps 2 --work /tmp/startup
    python bench/startup.py --gpu --runs 3    # the bench's whole 900-row run of LFM2-1.2B in 4-bit on a GPU

bench/bench.py's `wholerun` reports a GPU run's wall time less `timings.total_s` (what `train()` measures)
as "import_s". This splits that part, and the data part of `train()`, on any machine: it runs the real
`entrypoint.py` on a tiny LFM2 and 1000 synthetic rows shaped like the bench's (900 train rows, eval none),
in a child process that times a few of saudial's own functions (wrapped when their module is imported, so
nothing is imported earlier than in a real run). It prints medians, in seconds:

- start -> main(): the interpreter and entrypoint.py's imports (the CLI, settings)
- settings: parsing flags and SAUDIAL_* variables, printing the settings table
- imports for the data: jobs/train.py and what it imports (pandas), and transformers (its logging set up)
- data file: reading and checking the workbook (jobs/train.py's load_configured_data)
- imports for training: from the data to `train()` (torch, transformers, PEFT, TRL, datasets, ...)
- train(): the split, output directory, tokenizer, tokenizing (train()'s data_s parts), then
  the model, the trainer and the steps (not this benchmark's subject)
- after train(): evaluation (none here), moving staging into place, the model card
- exit: from main() returning until the process has ended (atexit, threads, interpreter teardown)

With --gpu the run is bench/bench.py's "defaults, whole 900-row run" (its model, rows and settings), so the
parts add up to that row's wall time; the dry run is left out there (it never touches the GPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (module, function) pairs the child times; each is wrapped as its module finishes importing.
PROBES: dict[str, tuple[str, ...]] = {
    "saudial.cli.main": ("main", "load_settings", "print_settings"),
    "saudial.jobs.train": ("load_configured_data", "after_training"),
    "saudial.training.recipe": ("train", "prepare_output_dir", "load_tokenizer", "load_model", "build_trainer"),
    "saudial.data.examples": ("split", "prepare"),
    "saudial.training.reproducibility": ("configure",),
    "saudial.process.distributed": ("init",),
}


def child(marks_path: str, argv: list[str]) -> None:
    """Run entrypoint.py with the probes; write {name: [start, end]} (time.time()) when main() returns."""
    import functools
    import importlib.abc
    import runpy
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    marks: dict[str, list[float]] = {"child_start": [START, START]}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            begin = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                marks.setdefault(name, [begin, time.time()])  # the first call
                if name == "saudial.cli.main.main":
                    Path(marks_path).write_text(json.dumps(marks))

        return wrapper

    class Loader(importlib.abc.Loader):
        def __init__(self, inner: Any, name: str) -> None:
            self.inner, self.name = inner, name

        def create_module(self, spec: ModuleSpec) -> ModuleType | None:
            return self.inner.create_module(spec)

        def exec_module(self, module: ModuleType) -> None:
            self.inner.exec_module(module)
            for attr in PROBES[self.name]:
                setattr(module, attr, timed(f"{self.name}.{attr}", getattr(module, attr)))

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(
            self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
        ) -> ModuleSpec | None:
            if fullname not in PROBES:
                return None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None and spec.loader is not None:
                        spec.loader = Loader(spec.loader, fullname)
                        return spec
            return None

    sys.meta_path.insert(0, Finder())
    sys.argv = [str(REPO / "entrypoint.py"), *argv]
    sys.path.insert(0, str(REPO))
    runpy.run_path(sys.argv[0], run_name="__main__")


def build(work: Path, gpu: bool) -> tuple[Path, Path]:
    """The tiny LFM2 (or, --gpu, bench/bench.py's LFM2-1.2B) and the bench's 1000-row workbook (900 train rows),
    built once in `work`."""
    if gpu:
        from bench.bench import build_model, write_rows

        os.environ.setdefault("BENCH_REUSE_MODEL", "1")  # built once per machine, as the bench does
        return build_model(work, smoke=False)[0], write_rows(work / "rows-1000.xlsx", 1000)
    model, data = work / "model", work / "rows-1000.xlsx"
    if not (model / "config.json").is_file() or not data.is_file():
        from saudial.devtools import synthetic, tiny

        tiny.build(model)
        # bench/bench.py write_rows: seed 3, a tenth paragraphs of 12 sentences
        synthetic.write(synthetic.make_rows(1000, seed=3, paragraph_share=0.1, paragraph_sentences=12), data)
    return model, data


def run_once(work: Path, model: Path, data: Path, steps: int | None, dry_run: bool, gpu: bool) -> dict[str, float]:
    """One entrypoint.py run in a child; the parts of its wall time, in seconds."""
    import shutil
    import subprocess

    out, marks_path = work / "out", work / "marks.json"
    marks_path.unlink(missing_ok=True)
    # A fresh output directory each time: on the last run's finished adapter, saudial would train nothing.
    shutil.rmtree(out, ignore_errors=True)
    # The bench's environment (bench/bench.py: bytecode may be written, as the image ships .pyc files), on the
    # CPU and unquantized, one thread per process; the token never reaches the child.
    from bench.bench import config_env

    if gpu:  # the bench's whole run: its settings, every step logged
        env = config_env({}, data, model, out, smoke=False, max_steps=steps)
    else:
        env = config_env({"OMP_NUM_THREADS": "1"}, data, model, out, smoke=True, max_steps=steps)
    env.pop("HF_TOKEN", None)
    command = [sys.executable, __file__, "--child", str(marks_path), *(["--dry-run"] if dry_run else [])]
    begin = time.time()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"entrypoint.py exited {done.returncode}:\n{done.stderr[-2000:]}")
    m = json.loads(marks_path.read_text())

    def span(name: str) -> float:
        first, last = m[name]
        return float(last - first)

    main, train = m["saudial.cli.main.main"], m["saudial.training.recipe.train"]
    data_file = m["saudial.jobs.train.load_configured_data"]
    parts = {
        "wall": end - begin,
        "start -> main()": main[0] - begin,
        "settings": span("saudial.cli.main.load_settings") + span("saudial.cli.main.print_settings"),
        "imports for the data": data_file[0] - m["saudial.cli.main.print_settings"][1],
        "data file": span("saudial.jobs.train.load_configured_data"),
        "imports for training": train[0] - data_file[1],
        "train(): split": span("saudial.data.examples.split"),
        "train(): tokenizer": span("saudial.training.recipe.load_tokenizer"),
        "train(): tokenizing": span("saudial.data.examples.prepare"),
        "train() total": train[1] - train[0],
    }
    if not dry_run:
        after = m["saudial.jobs.train.after_training"]
        parts |= {
            "train(): process group": span("saudial.process.distributed.init"),
            "train(): determinism": span("saudial.training.reproducibility.configure"),
            "train(): output dir": span("saudial.training.recipe.prepare_output_dir"),
            "train(): model": span("saudial.training.recipe.load_model"),
            "train(): trainer": span("saudial.training.recipe.build_trainer"),
            "after train()": after[1] - train[1],
        }
        metrics = json.loads((out / "metrics.json").read_text())
        parts["train() data_s"] = metrics["timings"]["data_s"]
        parts["train() train_s"] = metrics["timings"]["train_s"]
    parts["exit"] = end - main[1]
    return parts


def main() -> None:
    import argparse
    import statistics
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "saudial-startup")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind; medians are printed")
    parser.add_argument("--steps", type=int, default=2, help="SAUDIAL_MAX_STEPS of the default run (CPU)")
    parser.add_argument("--gpu", action="store_true", help="the bench's whole LFM2-1.2B run on the GPU instead")
    parser.add_argument("--json", type=Path, help="also write every run's parts here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, data = build(args.work, args.gpu)
    steps = None if args.gpu else args.steps
    run_once(args.work, model, data, steps, False, args.gpu)  # warm-up, not counted: .pyc files, page cache
    report: dict[str, list[dict[str, float]]] = {}
    kinds = (("default run", False),) if args.gpu else (("default run", False), ("dry run", True))
    for kind, dry in kinds:
        report[kind] = [run_once(args.work, model, data, steps, dry, args.gpu) for _ in range(args.runs)]
    if not args.gpu:
        print(f"CPU, {os.cpu_count()} cores, {args.runs} runs each, medians (s)")
    else:
        from saudial.process.environment import device_name

        print(f"{device_name()}, the bench's whole run, {args.runs} runs, medians (s)")
    names = list(report["default run"][0])
    print(f"{'part':<24}" + "".join(f"{kind:>12}" for kind in report))
    for name in names:
        cells = [
            f"{statistics.median(r[name] for r in runs):.2f}" if name in runs[0] else "-" for runs in report.values()
        ]
        print(f"{name:<24}" + "".join(f"{cell:>12}" for cell in cells))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


START = time.time()  # the child's first moment in Python (after the interpreter's own start)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
