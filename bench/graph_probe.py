"""What CUDA graphs of the decoder layers would give the defaults' step: eager against graphed, one fixed batch.

    SAUDIAL_DATA=... SAUDIAL_MODEL_NAME_OR_PATH=... python bench/graph_probe.py [--iters 20] [--json OUT.json]
    python bench/graph_probe.py --work /tmp/saudial-bench     the bench's LFM2-1.2B and 1,000 rows (bench/bench.py)

A CUDA graph replays a layer's kernels, forward and backward, with one launch from the host. This probe measures
what that would take off the defaults' step before any of it is built into training: the trainer is the one
`saudial.training.trainer.build_trainer` makes (the fused LoRA step, the Triton kernels, varlen attention), the
batch is its first padding-free batch, and each decoder layer is captured with `torch.cuda.make_graphed_callables`
at that batch's shape (training would need the shape fixed: the row padded to a bucket of tokens). It prints the
forward + backward time a step, eager and graphed (the loss head and the embedding stay eager in both), the
capture's time and memory, and whether the loss and the LoRA gradients match. The optimizer is not timed. On an
H100 (2026-12-07) the two took the same time: the forward and backward are bound by the GPU (docs/benchmarks.md).
`--cpu-check`: the same path without graphs, on the CPU (the wrapper must give the eager loss exactly;
tests/test_graph_probe.py). `bash bench/device-run.sh graphs` runs it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from saudial.config.settings import Settings
from saudial.data.examples import prepare
from saudial.data.examples import split as data_split
from saudial.data.workbook import load
from saudial.model.hardware import compute_dtype
from saudial.model.loading import load_model, load_tokenizer
from saudial.model.patches import _find_layers
from saudial.training.trainer import build_trainer

TENSOR_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx")


class LayerCall(torch.nn.Module):
    """One decoder layer's call with the batch's non-tensor arguments bound: tensors in, the hidden states out."""

    def __init__(self, layer: torch.nn.Module, forward: Any, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.layer = layer  # a submodule: its LoRA weights are the graph's parameters
        self._forward = forward  # the layer's own forward (saudial's fast one), before the probe replaced it
        self._static = {k: v for k, v in kwargs.items() if k not in TENSOR_KWARGS and k != "position_embeddings"}
        self._names = [k for k in TENSOR_KWARGS if isinstance(kwargs.get(k), torch.Tensor)]

    def tensors(self, kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        cos, sin = kwargs["position_embeddings"]
        return (cos, sin, *(kwargs[k] for k in self._names))

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *rest: torch.Tensor) -> Any:
        kwargs = dict(self._static, position_embeddings=(cos, sin), **dict(zip(self._names, rest, strict=True)))
        return self._forward(hidden, **kwargs)


def first_calls(model: Any, layers: list[torch.nn.Module], step: Any) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Each layer's (hidden states, keyword arguments) in one eager forward of `step`."""
    calls: list[tuple[torch.Tensor, dict[str, Any]]] = []
    originals = [layer.forward for layer in layers]

    def recorder(original: Any) -> Any:
        def forward(hidden: torch.Tensor, **kwargs: Any) -> Any:
            calls.append((hidden, kwargs))
            return original(hidden, **kwargs)

        return forward

    for layer, original in zip(layers, originals, strict=True):
        layer.forward = recorder(original)
    try:
        step(backward=False)  # with autograd on: which layers' inputs require a gradient
    finally:
        for layer, original in zip(layers, originals, strict=True):
            layer.forward = original
    return calls


def timed(step: Any, iters: int, device: str) -> float:
    """Seconds a forward + backward, over `iters` back to back (the GPU synchronized at both ends)."""
    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cpu-check", action="store_true")
    parser.add_argument("--work", type=Path, help="build (or reuse) the bench's model and rows here and use them")
    args = parser.parse_args()
    device = "cpu" if args.cpu_check else "cuda"
    if args.work is not None:  # the bench's own model and rows (the tiny model with --cpu-check)
        from bench.bench import build_model, write_rows

        args.work.mkdir(parents=True, exist_ok=True)
        model_dir, _ = build_model(args.work, smoke=args.cpu_check)
        rows = write_rows(args.work / "rows-1000.xlsx", 1000)
        os.environ.update(SAUDIAL_DATA=str(rows), SAUDIAL_MODEL_NAME_OR_PATH=str(model_dir), HF_HUB_OFFLINE="1")
        os.environ.setdefault("SAUDIAL_OUTPUT_DIR", str(args.work / "graph-probe"))
        if args.cpu_check:
            os.environ.setdefault("SAUDIAL_QUANTIZATION", "none")

    settings = Settings()
    assert settings.data is not None, "set SAUDIAL_DATA"
    dataset = load(settings.data, settings.sheet_name, settings.dialects)
    split = data_split(dataset.rows, settings.eval_size, settings.seed)
    tokenizer = load_tokenizer(settings)
    train_ds, eval_ds, _ = prepare(dataset, split, tokenizer, settings.max_length)
    trainer = build_trainer(settings, load_model(settings), tokenizer, train_ds, eval_ds, compute_dtype(settings))
    model: Any = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    params = [p for p in model.parameters() if p.requires_grad]

    def step(backward: bool = True) -> torch.Tensor:
        loss: torch.Tensor = trainer.compute_loss(model, dict(batch))
        if backward:
            loss.backward()
        return loss

    def grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        for p in params:
            p.grad = None
        loss = step().detach().float()
        return loss, [p.grad.detach().float().clone() for p in params if p.grad is not None]

    tokens = int(batch["input_ids"].numel())
    report: dict[str, Any] = {"tokens": tokens, "layers": 0, "device": device}
    loss_eager, grads_eager = grads()
    report["eager_s"] = timed(step, args.iters, device)
    print(f"eager: {report['eager_s'] * 1e3:.1f} ms a forward + backward, {tokens} tokens", flush=True)

    layers = _find_layers(model)
    calls = first_calls(model, layers, step)
    wrappers = [LayerCall(layer, layer.forward, kwargs) for layer, (_, kwargs) in zip(layers, calls, strict=True)]
    # Each layer's own placeholders (the graphs copy each call's tensors into them): copies of the recorded call.
    samples = tuple(
        (hidden.detach().clone().requires_grad_(hidden.requires_grad), *(t.clone() for t in w.tensors(kw)))
        for w, (hidden, kw) in zip(wrappers, calls, strict=True)
    )
    report["call"] = {k: type(v).__name__ for k, v in calls[0][1].items()}
    del calls
    report["layers"] = len(layers)
    before = torch.cuda.memory_reserved() if device == "cuda" else 0
    tick = time.perf_counter()
    try:
        if device == "cuda":
            graphed = torch.cuda.make_graphed_callables(tuple(wrappers), samples, allow_unused_input=True)
        else:
            graphed = tuple(wrappers)
    except Exception as e:  # the probe's answer is then why it cannot be captured
        report["capture_error"] = f"{type(e).__name__}: {e}"[:2000]
        print("capture failed:", report["capture_error"], flush=True)
        graphed = None
    report["capture_s"] = time.perf_counter() - tick
    report["capture_reserved_gib"] = ((torch.cuda.memory_reserved() - before) / 2**30) if device == "cuda" else 0.0
    if graphed is not None:
        for layer, call, wrapper in zip(layers, graphed, wrappers, strict=True):

            def forward(hidden: torch.Tensor, _call: Any = call, _w: LayerCall = wrapper, **kwargs: Any) -> Any:
                return _call(hidden, *_w.tensors(kwargs))

            layer.forward = forward
        loss_graphed, grads_graphed = grads()
        report["loss_eager"], report["loss_graphed"] = float(loss_eager), float(loss_graphed)
        report["max_grad_diff"] = max(
            float((a - b).abs().max()) for a, b in zip(grads_eager, grads_graphed, strict=True)
        )
        report["grad_count"] = len(grads_graphed)
        report["graphed_s"] = timed(step, args.iters, device)
        print(
            f"graphed: {report['graphed_s'] * 1e3:.1f} ms ({report['eager_s'] / report['graphed_s']:.2f}x), capture "
            f"{report['capture_s']:.1f} s and {report['capture_reserved_gib']:.2f} GiB; loss {report['loss_eager']:.6f}"
            f" / {report['loss_graphed']:.6f}, max LoRA gradient difference {report['max_grad_diff']:.3g}",
            flush=True,
        )
    if torch.cuda.is_available():
        report["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
