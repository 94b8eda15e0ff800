"""Benchmark: each LFM2 size with a published shape, trained in 4-bit with its own recipe, start to end.

    python bench/family.py --out OUT                          # on a CUDA GPU: every size, ~10-15 min on an H100
    python bench/family.py --out OUT --sizes 2.6B             # a part (a later call into the same OUT keeps the rest)
    python bench/family.py --out /tmp/family-smoke --smoke    # the same code path on the CPU, tiny models

For each size of the table (model/family.py: LFM2-350M, LFM2-700M, LFM2-1.2B, LFM2-2.6B; LFM2.5-1.2B has
LFM2-1.2B's shape, so its number is that one's) it builds a random-weight `Lfm2ForCausalLM` of the size's
published shape, saves it, and through the real entry point (`entrypoint.py train --config RECIPE`, the model
loaded from disk through the 4-bit path):
- trains the whole 900-row synthetic workbook with the size's recipe (recipes/lfm2-350m.yaml, lfm2-700m.yaml,
  default.yaml, lfm2-2.6b.yaml): non-pad tokens/s (steady state), peak reserved GiB, whole-run wall time;
- for 2.6B also the small-GPU path (gradient checkpointing, micro-batches of 16 x 4, recipes/small-gpu.yaml);
- evaluates the trained adapter (`saudial evaluate`: base and adapter on the held-out rows) and translates one
  line with it (`saudial translate`), each as a user runs it: exit code and wall time.
Results are written to OUT/family.json after every run (a run cut short still leaves its numbers) and as a
table to OUT/family.txt. A random model rarely stops at EOS: evaluation generates to max_new_tokens (64), so
its rate is the measure, not its scores. --smoke builds each size's real config (on the meta device: its
parameter count) and trains, evaluates and translates a tiny model with the size's layer pattern on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench import ROWS, config_env, sh, slug_of, write_rows  # noqa: E402

# size -> (the table's model, the recipe its run uses)
SIZES: dict[str, tuple[str, str]] = {
    "350M": ("LiquidAI/LFM2-350M", "recipes/lfm2-350m.yaml"),
    "700M": ("LiquidAI/LFM2-700M", "recipes/lfm2-700m.yaml"),
    "1.2B": ("LiquidAI/LFM2-1.2B", "recipes/default.yaml"),
    "2.6B": ("LiquidAI/LFM2-2.6B", "recipes/lfm2-2.6b.yaml"),
}
SMALL_GPU = {  # recipes/small-gpu.yaml, as variables (they win over the size's recipe)
    "SAUDIAL_GRADIENT_CHECKPOINTING": "true",
    "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "16",
    "SAUDIAL_GRADIENT_ACCUMULATION_STEPS": "4",
    "SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE": "4",
}
SMOKE_STEPS = 2
SMOKE = {"SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "4", "SAUDIAL_MAX_EVAL_SAMPLES": "4", "OMP_NUM_THREADS": "1"}


def shape_config(size: str, smoke: bool, vocab_size: int) -> dict[str, Any]:
    """Lfm2Config arguments of the size's published shape; with `smoke`, a tiny model of its layer pattern."""
    from saudial.model import family

    shape = family.FAMILY[SIZES[size][0].lower()].shape
    assert shape is not None, size
    kwargs = shape.config_kwargs()
    if smoke:
        kwargs |= dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
        kwargs |= dict(block_auto_adjust_ff_dim=False, vocab_size=vocab_size)
    return kwargs


def published_parameters(size: str) -> int:
    """The full-size config built on the meta device (no memory): its parameter count."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    with torch.device("meta"):
        model = Lfm2ForCausalLM(Lfm2Config(**shape_config(size, False, 0)))
    return sum(p.numel() for p in model.parameters())


def build_model(size: str, work: Path, smoke: bool) -> Path:
    """A random-weight LFM2 of the size's shape (bf16 on the GPU) and the bench's BPE tokenizer, saved to disk."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from saudial.devtools import synthetic, tiny

    model_dir = work / "models" / slug_of(size)
    if (model_dir / "config.json").is_file() and os.environ.get("BENCH_REUSE_MODEL"):
        return model_dir
    frame = synthetic.make_rows(2000, seed=1, **ROWS)
    texts = [str(v) for column in frame.columns[5:9] for v in frame[column].dropna()]
    tokenizer = tiny.build_tokenizer([*texts, "### Instruction:", "### Input:", "### Response:"], vocab_size=4096)
    config = Lfm2Config(**shape_config(size, smoke, len(tokenizer)))
    config.eos_token_id = tokenizer.eos_token_id
    config.architectures = ["Lfm2ForCausalLM"]
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    with torch.device(device):
        model = Lfm2ForCausalLM(config)
        if device == "cuda":
            model = model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model_dir


def train(
    size: str, label: str, recipe: str, extra: dict[str, str], data: Path, model: Path, args: Any
) -> dict[str, Any]:
    """One whole run of `entrypoint.py train --config RECIPE` (the bench's fixed settings win over the recipe)."""
    slug = slug_of(f"{size} {label}")
    out = args.work / "runs" / slug
    env = config_env(
        SMOKE | extra if args.smoke else extra, data, model, out, args.smoke, SMOKE_STEPS if args.smoke else None
    )
    log = args.work / "logs" / f"{slug}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(REPO / "entrypoint.py"), "train", "--config", str(REPO / recipe)]
    code, wall = sh(argv, env, log, 600)
    result: dict[str, Any] = {"size": size, "run": label, "recipe": recipe, "settings": extra, "exit_code": code}
    result |= {"wall_s": round(wall, 1), "log": str(log), "output_dir": str(out)}
    metrics_path = out / "metrics.json"
    if code == 0 and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        keep = ("steady_tokens_per_second", "peak_reserved_gib", "train_steps", "train_runtime_s", "train_loss")
        result |= {k: metrics.get(k) for k in keep} | {"lora_target_modules": metrics.get("lora_target_modules")}
        result["trainable_parameters"] = metrics.get("trainable_parameters")
        result["timings"] = metrics.get("timings")
    else:
        result["error_tail"] = log.read_text()[-1500:]
    return result


def command(name: str, argv: list[str], adapter: Path, args: Any, max_new_tokens: int) -> dict[str, Any]:
    """`entrypoint.py evaluate|translate --adapter ...` as a user runs it: model and data from the run record."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAUDIAL_") and k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "SAUDIAL_MAX_NEW_TOKENS": str(max_new_tokens)}
    if args.smoke:  # a few held-out rows, one thread: the code path, not the speed
        env |= {"SAUDIAL_MAX_EVAL_SAMPLES": "4", "OMP_NUM_THREADS": "1"}
    log = args.work / "logs" / f"{slug_of(name)}.log"
    code, wall = sh([sys.executable, str(REPO / "entrypoint.py"), *argv, "--adapter", str(adapter)], env, log, 600)
    result: dict[str, Any] = {"exit_code": code, "wall_s": round(wall, 1), "log": str(log)}
    if code != 0:
        result["error_tail"] = log.read_text()[-1500:]
    return result


def evaluate_and_translate(size: str, trained: dict[str, Any], args: Any) -> dict[str, Any]:
    adapter = Path(trained["output_dir"])
    tokens = 8 if args.smoke else 64
    evaluation = command(f"{size} evaluate", ["evaluate"], adapter, args, tokens)
    metrics_path = adapter / "metrics.json"
    if evaluation["exit_code"] == 0 and metrics_path.is_file():
        speed = (json.loads(metrics_path.read_text()).get("evaluation") or {}).get("generation_speed") or {}
        evaluation["generated_tokens_per_second"] = {k: v.get("tokens_per_second") for k, v in speed.items()}
    line = ["translate", "--dialect", "Najdi", "Open the old door."]
    return {"evaluate": evaluation, "translate": command(f"{size} translate", line, adapter, args, tokens)}


def num(value: Any, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def timed(command: dict[str, Any]) -> str:
    """A follow-up command's wall time, and its exit code where it failed."""
    code = command.get("exit_code")
    return num(command.get("wall_s"), 1) + ("" if code in (0, None) else f" (exit {code})")


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| size | run | exit | tok/s (steady) | peak reserved GiB | whole run s | steps | evaluate s | translate s |"
    ]
    rows.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "run" not in r:
            continue
        follow = r.get("after") or {}
        ev, tr = follow.get("evaluate") or {}, follow.get("translate") or {}

        rows.append(
            f"| {r['size']} | {r['run']} | {r['exit_code']} | {num(r.get('steady_tokens_per_second'))} | "
            f"{num(r.get('peak_reserved_gib'), 2)} | {num(r.get('wall_s'), 1)} | {num(r.get('train_steps'))} | "
            f"{timed(ev)} | {timed(tr)} |"
        )
    return "\n".join(rows)


RECIPE_RUN = "recipe, whole 900-row run"
SMALL_GPU_RUN = "small-GPU path (checkpointing, 16 x 4)"


def reruns(result: dict[str, Any], sizes: list[str], kinds: set[str]) -> bool:
    """Whether this call's --sizes/--runs replace an earlier call's result (a size's header row: with recipe)."""
    if result.get("size") not in sizes:
        return False
    run = result.get("run")
    return ("small-gpu" if run == SMALL_GPU_RUN else "recipe") in kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results-family")
    parser.add_argument("--work", type=Path, default=Path("/tmp/saudial-family-bench"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models of each size's layer pattern")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument(
        "--runs",
        default="recipe,small-gpu",
        help="comma list: recipe (each size's whole run, evaluate, translate), small-gpu (2.6B's checkpointing run)",
    )
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}: choose from {', '.join(SIZES)}")
    kinds = {k.strip() for k in args.runs.split(",") if k.strip()}
    if not kinds or kinds - {"recipe", "small-gpu"}:
        parser.error(f"--runs {args.runs!r}: a comma list of recipe, small-gpu")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    from saudial.process.environment import device_name, versions

    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "device": device_name(), "versions": versions()}
    report["smoke"], report["results"] = args.smoke, []
    results: list[dict[str, Any]] = report["results"]
    earlier = args.out / "family.json"
    if earlier.is_file():  # a call per part (--sizes): the other sizes' results of an earlier call are kept
        kept = [r for r in json.loads(earlier.read_text()).get("results", []) if not reruns(r, sizes, kinds)]
        results.extend(kept)
    data = write_rows(args.work / "rows-1000.xlsx", 1000)  # 900 train + 100 eval rows, as bench.py's whole run

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        (args.out / "family.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "family.txt").write_text(table(results) + "\n")

    for size in sizes:
        name, recipe = SIZES[size]
        runs: list[tuple[str, dict[str, str]]] = [(RECIPE_RUN, {})] if "recipe" in kinds else []
        if size == "2.6B" and "small-gpu" in kinds:
            runs.append((SMALL_GPU_RUN, SMALL_GPU))
        if not runs:
            continue
        if "recipe" in kinds:
            record({"size": size, "model": name, "published_shape_parameters": published_parameters(size)})
        tick = time.perf_counter()
        model = build_model(size, args.work, args.smoke)
        print(f"{size}: built {model} in {time.perf_counter() - tick:.0f}s", flush=True)
        for label, extra in runs:
            result = train(size, label, recipe, extra, data, model, args)
            if result["exit_code"] == 0 and not extra:
                result["after"] = evaluate_and_translate(size, result, args)
            speed, memory = result.get("steady_tokens_per_second"), result.get("peak_reserved_gib")
            print(f"  {size} {label}: exit {result['exit_code']}, {result['wall_s']}s, {speed} tok/s, {memory} GiB")
            record(result)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
