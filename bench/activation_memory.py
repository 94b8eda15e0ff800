"""Measure what model/activation_memory.py estimates: a training step's peak memory against its tokens, with no
decoder layer checkpointed, with all of them, and with half, on the real trainer and data.

    SAUDIAL_DATA=... SAUDIAL_MODEL_NAME_OR_PATH=... python bench/activation_memory.py OUT.json [--steps 12]

Settings come from the environment as for entrypoint.py (SAUDIAL_*); the trainer is the one
`saudial.training.trainer.build_trainer` makes, with gradient checkpointing set up and each phase's layers
flagged before every step. Per step it writes the micro-batch's tokens and scored positions, the layers
checkpointed, the memory held at the step's start and its peak (torch.cuda.max_memory_allocated, reset at each
step's start), and the estimate of `activation_memory.Fit` for that step; then, per phase, a least-squares fit
of the peak above the start against tokens and scored positions, and the largest ratio of peak to estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from saudial.config.settings import Settings
from saudial.data.examples import prepare
from saudial.data.examples import split as data_split
from saudial.data.workbook import load
from saudial.model import activation_memory
from saudial.model.hardware import compute_dtype
from saudial.model.lm_head import POSITIONS
from saudial.model.loading import load_model, load_tokenizer
from saudial.training.trainer import build_trainer

CUDA = torch.cuda.is_available()  # on the CPU (a smoke run of this script) the memory reads are zeros


def allocated(peak: bool = False) -> int:
    if not CUDA:
        return 0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


class Phases(TrainerCallback):
    """Flags the layers of each phase before every step; records each step's memory."""

    def __init__(self, fit: activation_memory.Fit, phases: list[tuple[str, int]], steps: int) -> None:
        self.fit, self.phases, self.steps = fit, phases, steps
        self.batch: tuple[int, int] = (0, 0)
        self.rows: list[dict[str, Any]] = []
        self.start = 0

    def phase(self, step: int) -> tuple[str, int]:
        return self.phases[min(step // self.steps, len(self.phases) - 1)]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _, count = self.phase(state.global_step)
        self.fit.checkpoint(count)
        self.start = allocated()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        name, count = self.phase(state.global_step - 1)
        tokens, scored = self.batch
        self.rows.append(
            {
                "step": state.global_step,
                "phase": name,
                "checkpointed": count,
                "tokens": tokens,
                "scored": scored,
                "start_gib": self.start / 2**30,
                "peak_gib": allocated(peak=True) / 2**30,
                "estimate_gib": (self.fit.need(tokens, count) - self.fit.fixed + self.start) / 2**30,
            }
        )
        print(json.dumps(self.rows[-1]), flush=True)


def fit_line(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least squares: peak - start = a * tokens + b * scored + c (bytes)."""
    a = torch.tensor([[r["tokens"], r["scored"], 1.0] for r in rows], dtype=torch.float64)
    y = torch.tensor([(r["peak_gib"] - r["start_gib"]) * 2**30 for r in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(a, y).solution.tolist()
    return {"bytes_per_token": coef[0], "bytes_per_scored": coef[1], "bytes_constant": coef[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=12, help="steps per phase")
    args = parser.parse_args()

    settings = Settings().model_copy(update={"gradient_checkpointing": True, "save_steps": 100_000})
    assert settings.data is not None, "set SAUDIAL_DATA"
    dataset = load(settings.data, settings.sheet_name, settings.dialects)
    split = data_split(dataset.rows, settings.eval_size, settings.seed)
    tokenizer = load_tokenizer(settings)
    train_ds, eval_ds, _ = prepare(dataset, split, tokenizer, settings.max_length)
    dtype = compute_dtype(settings)
    trainer = build_trainer(
        settings.model_copy(update={"max_steps": 3 * args.steps}),
        load_model(settings),
        tokenizer,
        train_ds,
        eval_ds,
        dtype,
    )
    model: Any = trainer.model
    layers = activation_memory.decoder_layers(model)
    budget = activation_memory.budget_bytes() if CUDA else None
    held = torch.cuda.memory_allocated() if CUDA else 0
    fit = activation_memory.plan(layers, dtype.itemsize, held, budget if budget is not None else 2**40)
    phases = Phases(fit, [("none", 0), ("all", len(layers)), ("half", len(layers) // 2)], args.steps)
    trainer.add_callback(phases)
    step = trainer.training_step

    def recorded(model: Any, inputs: dict[str, Any], *rest: Any) -> torch.Tensor:
        tokens = inputs["input_ids"].numel()
        scored = inputs[POSITIONS].numel() if POSITIONS in inputs else tokens
        phases.batch = (max(phases.batch[0], tokens), max(phases.batch[1], scored))
        return step(model, inputs, *rest)

    trainer.training_step = recorded  # type: ignore[method-assign,assignment]

    def reset(*_: Any, **__: Any) -> None:
        phases.batch = (0, 0)

    trainer.add_callback(type("Reset", (TrainerCallback,), {"on_step_begin": lambda self, *a, **k: reset()})())
    trainer.train()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if CUDA else "cpu",
        "keeps_per_layer": list(fit.keeps),
        "inputs_per_layer": list(fit.inputs),
        "work": fit.work,
        "fixed_gib": fit.fixed / 2**30,
        "steps": phases.rows,
        "phases": {},
    }
    for name, _ in phases.phases:
        rows = [r for r in phases.rows if r["phase"] == name and r["step"] > 1]  # step 1 allocates the optimizer
        if len(rows) >= 3:
            report["phases"][name] = fit_line(rows) | {
                "peak_over_estimate_max": max(r["peak_gib"] / max(r["estimate_gib"], 1e-9) for r in rows),
                "peak_over_estimate_min": min(r["peak_gib"] / max(r["estimate_gib"], 1e-9) for r in rows),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["phases"], indent=1))


if __name__ == "__main__":
    main()
