"""Benchmark: the seed recipe, the project's defaults and faster settings, side by side, in one run.

    python bench/bench.py --out bench/results            # on a CUDA GPU (see docs/benchmarks.md)
    python bench/bench.py --out /tmp/smoke --smoke       # the same code path on the CPU, tiny model

It builds the full-size LFM2-1.2B architecture with random weights from the published config, saves
it, and trains every configuration through the real `entrypoint.py` in its own process (model
loaded from local disk through the real 4-bit path), on synthetic SauDial-shaped rows. It reports
non-pad tokens/s (steady state, after warm-up), samples/s, step time, peak reserved GPU memory,
MFU against the bf16 matmul rate measured on the card in the same run, loss curves, and the
whole-run wall time split into import, load, data, train and save. JSON, a PNG plot and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from saudial.model import family  # noqa: E402  (the checkout's saudial, as every bench run imports it)

# The published LFM2-1.2B configuration (saudial/model/family.py's shape, with its sources) and its parameter
# count as LiquidAI's model card gives it (built models are checked against it: tests/test_gpu.py).
LFM2_1_2B = family.LFM2_1_2B.config_kwargs()
PARAMS_1_2B = 1_170_340_608

# Synthetic rows shaped like the published ones: mostly one short line, a tenth paragraphs.
# With the bench tokenizer this gives ~125 tokens per example (p90 ~195, max ~460); the published
# rows average ~114 with the LFM2 tokenizer.
ROWS: dict[str, Any] = dict(paragraph_share=0.1, paragraph_sentences=12)

# The seed recipe as written: bare load_in_4bit (FP4, no double quant), fp16 compute and fp16=True,
# LoRA r8/alpha16 on q_proj,v_proj, batch 1 x 8, TRL's default gradient checkpointing, padded batches.
# The only change: fp32 trainable weights (saudial does this for fp16), without which it crashes. It runs
# LFM2's own modules, as the notebook did: saudial's Triton kernels off. With them on, the notebook's settings ran
# 4.4x faster (1,092 against 248 tok/s in one call, H100; 6aa1fd9's tree, before the kernels: 248), which is
# saudial's speed work, not the notebook's (docs/benchmarks.md, the seed's row).
SEED = {
    "SAUDIAL_BNB_4BIT_QUANT_TYPE": "fp4",
    "SAUDIAL_BNB_4BIT_USE_DOUBLE_QUANT": "false",
    "SAUDIAL_TORCH_DTYPE": "float16",
    "SAUDIAL_TARGET_MODULES": "q_proj,v_proj",
    "SAUDIAL_LORA_R": "8",
    "SAUDIAL_LORA_ALPHA": "16",
    "SAUDIAL_LORA_DROPOUT": "0.05",
    "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "1",
    "SAUDIAL_GRADIENT_ACCUMULATION_STEPS": "8",
    "SAUDIAL_GRADIENT_CHECKPOINTING": "true",
    "SAUDIAL_PADDING_FREE": "false",
    "SAUDIAL_LEARNING_RATE": "2e-4",
    "SAUDIAL_OPTIM": "adamw_torch",  # transformers' default then
    "SAUDIAL_FUSED_KERNELS": "false",
}


# Compiled decoder layers (SAUDIAL_TORCH_COMPILE=true, off by default), everything else the defaults: the
# "compiled" and "compilecache" sections measure them against the eager defaults.
COMPILED = {"SAUDIAL_TORCH_COMPILE": "true"}
SDPA = {"SAUDIAL_ATTN_IMPLEMENTATION": "sdpa"}  # transformers' SDPA with a block-diagonal mask, no varlen


def configurations(smoke: bool) -> list[tuple[str, dict[str, str], int]]:
    """(name, settings that differ from the defaults, optimizer steps to time)."""
    steps = 4 if smoke else 0
    return [
        ("seed as written (bs 1x8)", SEED, steps or 4),
        ("seed, batch 8x8", SEED | {"SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "8"}, steps or 4),
        ("saudial defaults", {}, steps or 40),
        ("defaults, every layer checkpointed", {"SAUDIAL_GRADIENT_CHECKPOINTING": "true"}, steps or 30),
        # The defaults on smaller GPUs, emulated by PyTorch's own cap on what this process may allocate: each
        # step checkpoints the fewest layers it needs (model/activation_memory.py).
        ("defaults on a 4 GiB GPU", {"BENCH_GPU_GIB": "4"}, steps or 30),
        ("defaults on an 8 GiB GPU", {"BENCH_GPU_GIB": "8"}, steps or 30),
        ("defaults on a 24 GiB GPU", {"BENCH_GPU_GIB": "24"}, steps or 30),
        ("defaults, SDPA + mask, no varlen", SDPA, steps or 40),
        ("defaults, foreach AdamW", FOREACH_ADAMW, steps or 40),
        ("defaults, bs 128", {"SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "128"}, steps or 20),
        ("defaults + compile", COMPILED, steps or 80),
    ]  # fmt: skip


PEFT_BEFORE = {"SAUDIAL_FUSED_LORA": "false", "SAUDIAL_LORA_DROPOUT": "0.05"}
FOREACH_ADAMW = {"SAUDIAL_OPTIM": "adamw_torch"}  # the default before 2026-11-30: AdamW's foreach path
LOADER_WORKERS = {"SAUDIAL_DATALOADER_NUM_WORKERS": "2"}  # the collator off the training loop's thread


def levers(smoke: bool) -> list[tuple[str, dict[str, str], int | None]]:
    """(name, settings that differ from the defaults, optimizer steps to time; None: the whole run).

    The same-call pairs of saudial's speed overrides (docs/architecture.md, Upstream overrides): the defaults
    against each override taken out, in turns, twice (single runs on the lent hosts vary by ~10%).
    BENCH_WITHOUT names an override bench/ablate.py takes out; the others have a setting of their own.
    """
    steps = 4 if smoke else 40
    without = [
        ("logs read at their step", {"BENCH_WITHOUT": "late-log"}),
        ("logging every 10 steps (users' default)", DEFAULT_LOGGING),
        ("TRL's loss head", {"BENCH_WITHOUT": "compact-loss-head"}),
        ("LoRA layers of one input unstacked", {"BENCH_WITHOUT": "stacked-lora"}),
        ("q/k norm, then PyTorch's rotation", {"BENCH_WITHOUT": "qk-rope"}),
        ("dequantized on each use", {"SAUDIAL_DEQUANTIZE_ONCE": "false"}),
        ("SDPA + mask, no varlen", SDPA),
        ("SDPA + mask, cuDNN attention on", SDPA | {"BENCH_WITHOUT": "cudnn-attention-off"}),
        ("kernels off", {"SAUDIAL_FUSED_KERNELS": "false"}),
        # Set, PyTorch parses it with a regex on every cuBLAS call (training/reproducibility.py)
        ("CUBLAS_WORKSPACE_CONFIG set", {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}),
    ]
    runs: list[tuple[str, dict[str, str], int | None]] = []
    for turn in ("", ", again"):
        rows: list[tuple[str, dict[str, str], int | None]] = [(f"levers: defaults{turn}", {}, steps)]
        rows += [(f"levers: {name}{turn}", extra, steps) for name, extra in without]
        runs += rows if not turn else rows[::-1]  # the second turn backwards: a drifting host favours no row
    # The original recipe's settings with saudial's kernels on (the seed's row has them off)
    runs.append(("levers: seed's settings, kernels on", SEED | {"SAUDIAL_FUSED_KERNELS": "true"}, 4))
    return runs


def fitted_pairs(smoke: bool) -> list[tuple[str, dict[str, str], int]]:
    """The checkpointing fitted to each step against its parts, in turns, forwards then backwards: the defaults;
    PyTorch's cap on the process's memory alone (checkpointing set off); the cap with the fit (nothing checkpointed
    on 24 GiB); every layer checkpointed; and the fit on 4 GiB."""
    steps = 4 if smoke else 30
    cap_only = {"BENCH_GPU_GIB": "24", "SAUDIAL_GRADIENT_CHECKPOINTING": "false"}
    runs = []
    for turn in ("", ", again"):
        rows = [
            (f"fitted: defaults{turn}", {}, steps),
            (f"fitted: 24 GiB cap, checkpointing off{turn}", cap_only, steps),
            (f"fitted: 24 GiB cap, fitted{turn}", {"BENCH_GPU_GIB": "24"}, steps),
            (f"fitted: every layer checkpointed{turn}", {"SAUDIAL_GRADIENT_CHECKPOINTING": "true"}, steps),
            (f"fitted: 4 GiB cap, fitted{turn}", {"BENCH_GPU_GIB": "4"}, steps),
        ]
        runs += rows if not turn else rows[::-1]  # the second turn backwards: a drifting host favours no row
    return runs


def sh(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            code = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -9
    return code, time.perf_counter() - start


def matmul_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a, b = (
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
    )
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


def build_model(work: Path, smoke: bool) -> tuple[Path, int]:
    """Random-weight LFM2 (full size, or tiny with --smoke) and a BPE tokenizer, saved to disk."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from saudial.devtools import synthetic, tiny

    model_dir = work / "model"
    if (model_dir / "config.json").is_file() and os.environ.get("BENCH_REUSE_MODEL"):  # a later call, same machine
        return model_dir, PARAMS_1_2B if not smoke else sum(
            p.numel() for p in Lfm2ForCausalLM.from_pretrained(model_dir).parameters()
        )
    if smoke:
        tiny.build(model_dir)
        return model_dir, sum(p.numel() for p in Lfm2ForCausalLM.from_pretrained(model_dir).parameters())
    frame = synthetic.make_rows(2000, seed=1, **ROWS)
    texts = [str(v) for column in frame.columns[5:9] for v in frame[column].dropna()]
    tokenizer = tiny.build_tokenizer([*texts, "### Instruction:", "### Input:", "### Response:"], vocab_size=4096)
    config = Lfm2Config(**LFM2_1_2B)
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Lfm2ForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    return model_dir, n_params


def write_rows(path: Path, rows: int, seed: int = 3, **shape: Any) -> Path:
    from saudial.devtools import synthetic

    return synthetic.write(synthetic.make_rows(rows, seed=seed, **(ROWS | shape)), path)


def slug_of(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def config_env(
    extra: dict[str, str], data: Path, model: Path, out: Path, smoke: bool, max_steps: int | None
) -> dict[str, str]:
    """The environment of one entrypoint.py run: the bench's fixed settings, then the configuration's."""
    # PYTHONDONTWRITEBYTECODE is dropped: the image ships .pyc files (pip and compileall write them), and a GPU
    # machine whose Python may not write them re-compiles torch's sources at every start (~14 s instead of ~5).
    skip = ("PYTHONDONTWRITEBYTECODE", "BENCH_WITHOUT")  # BENCH_WITHOUT: the configuration's own, if any
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAUDIAL_") and k not in skip}
    env.update(
        {
            "SAUDIAL_DATA": str(data),
            "SAUDIAL_MODEL_NAME_OR_PATH": str(model),
            "SAUDIAL_OUTPUT_DIR": str(out),
            "SAUDIAL_OVERWRITE_OUTPUT_DIR": "true",
            "SAUDIAL_EVAL": "none",
            "SAUDIAL_REPORT_TO": "none",
            "SAUDIAL_LOGGING_STEPS": "1",
            "SAUDIAL_SAVE_STEPS": "100000",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if max_steps:
        env["SAUDIAL_MAX_STEPS"] = str(max_steps)
    if smoke:
        env["SAUDIAL_QUANTIZATION"] = "none"
    env.update(extra)
    if gib := env.pop("BENCH_GPU_GIB", None):  # a smaller GPU: PyTorch's cap on what the process may allocate
        env["PYTORCH_CUDA_ALLOC_CONF"] = f"expandable_segments:True,per_process_memory_fraction:{gpu_fraction(gib)}"
    if env.get("SAUDIAL_NUM_PROCESSES", "1") == "1":
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]  # one GPU, no DataParallel
    if smoke:
        env.pop("SAUDIAL_TORCH_DTYPE", None)
        env.pop("SAUDIAL_TORCH_COMPILE", None)
    return env


def gpu_fraction(gib: str) -> float:
    """The share of this GPU's memory that is `gib` GiB (1 without a GPU: the smoke run)."""
    import torch

    if not torch.cuda.is_available():
        return 1.0
    return min(1.0, float(gib) * 2**30 / torch.cuda.get_device_properties(0).total_memory)


def run_config(
    name: str, extra: dict[str, str], data: Path, model: Path, work: Path, smoke: bool, max_steps: int | None
) -> dict[str, Any]:
    slug = slug_of(name)
    out = work / "runs" / slug
    env = config_env(extra, data, model, out, smoke, max_steps)
    log = work / "logs" / f"{slug}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # BENCH_WRAP: a command the run is started under, e.g. a sampling profiler (bench/host_profile.py)
    wrap = shlex.split(os.environ.get("BENCH_WRAP", ""))
    # BENCH_WITHOUT: overrides taken out for the "before" of a pair (bench/ablate.py runs the entry point)
    script = REPO / ("bench/ablate.py" if env.get("BENCH_WITHOUT") else "entrypoint.py")
    code, wall = sh([*wrap, sys.executable, str(script)], env, log, timeout=600)
    result: dict[str, Any] = {"name": name, "settings": extra, "exit_code": code, "wall_s": wall, "log": str(log)}
    metrics_path = out / "metrics.json"
    if code == 0 and metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        result.update(metrics)
        timings = metrics.get("timings", {})
        # import = process start until train() began (interpreter, torch/transformers/TRL imports, settings)
        result["import_s"] = wall - timings.get("total_s", 0.0)
        if result.get("steady_step_time_s") and result.get("train_steps") and result.get("train_runtime_s"):
            result["warmup_s"] = result["train_runtime_s"] - result["train_steps"] * result["steady_step_time_s"]
    else:
        result["error_tail"] = log.read_text()[-1500:]
    speed = (result.get("evaluation") or {}).get("generation_speed") or {}
    for system, rate in speed.items():
        result[f"generated_tokens_per_second_{system}"] = rate.get("tokens_per_second")
    keys: tuple[str, ...] = ("steady_tokens_per_second", "steady_step_time_s", "peak_reserved_gib", "train_steps")
    keys += (
        "import_s",
        "warmup_s",
        "eval_runtime_s",
        "generated_tokens_per_second_base",
        "generated_tokens_per_second_adapter",
    )
    summary = ", ".join(f"{k}={result[k]:.3g}" for k in keys if isinstance(result.get(k), (int, float)))
    print(f"  {name}: exit {code}, wall {wall:.1f}s, {summary}", flush=True)
    return result


def mfu(tokens_per_s: float | None, n_params: int, tflops: float | None, flops_per_token: int) -> float | None:
    if not tokens_per_s or not tflops:
        return None
    return tokens_per_s * flops_per_token * n_params / (tflops * 1e12)


def table(results: list[dict[str, Any]], n_params: int, tflops: float | None) -> str:
    head = (
        f"{'configuration':<34}{'tok/s':>9}{'samp/s':>8}{'step s':>8}{'GiB':>7}{'MFU4N':>7}{'MFU6N':>7}"
        f"{'loss0':>7}{'lossN':>7}{'wall':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        tps = r.get("steady_tokens_per_second")
        step = r.get("steady_step_time_s")
        curve = r.get("loss_curve") or []
        samples = r.get("samples_per_second")
        m4, m6 = mfu(tps, n_params, tflops, 4), mfu(tps, n_params, tflops, 6)
        lines.append(
            f"{r['name'][:33]:<34}"
            + (f"{tps:>9,.0f}" if tps else f"{'fail' if r['exit_code'] else '-':>9}")
            + (f"{samples:>8.1f}" if samples else f"{'-':>8}")
            + (f"{step:>8.3f}" if step else f"{'-':>8}")
            + (f"{r['peak_reserved_gib']:>7.2f}" if r.get("peak_reserved_gib") else f"{'-':>7}")
            + (f"{m4:>7.1%}" if m4 else f"{'-':>7}")
            + (f"{m6:>7.1%}" if m6 else f"{'-':>7}")
            + (f"{curve[0][1]:>7.2f}{curve[-1][1]:>7.2f}" if curve else f"{'-':>7}{'-':>7}")
            + f"{r['wall_s']:>7.1f}"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in results if r.get("steady_tokens_per_second")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    names = [r["name"] for r in ok]
    axes[0].barh(names, [r["steady_tokens_per_second"] for r in ok])
    axes[0].set_xlabel("non-pad tokens/s")
    axes[0].set_xscale("log")
    axes[1].barh(names, [r.get("peak_reserved_gib", 0) for r in ok])
    axes[1].set_xlabel("peak reserved GiB")
    for r in results:
        if r.get("loss_curve"):
            steps, losses = zip(*r["loss_curve"], strict=True)
            axes[2].plot(steps, losses, label=r["name"])
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("train loss")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/saudial-bench"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model: check the script, not the speed")
    parser.add_argument(
        "--sections",
        default="configs,wholerun,scaling,maxlen",
        help="comma list, run in this order: configs,levers,compilecache,compileprofile,compiled,wholerun,"
        "memory,activations,fitted,scaling,maxlen,profile,multigpu,unsloth",
    )
    parser.add_argument("--only", default="", help="configs/levers name prefixes to run, separated by ;")
    parser.add_argument("--skip", default="", help="configs/levers name prefixes not to run, separated by ;")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    from saudial.process.environment import device_name, versions

    tflops = matmul_tflops()
    model, n_params = build_model(args.work, args.smoke)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name(),
        "versions": versions(),
        "bf16_matmul_tflops": tflops,
        "parameters": n_params,
        "results": [],
    }
    print(f"device {report['device']}, bf16 matmul {tflops} TFLOP/s, {n_params:,} parameters", flush=True)
    data_900 = write_rows(args.work / "rows-1000.xlsx", 1000)  # 900 train + 100 eval rows
    report["first_import_s"] = warm_imports()  # writes the .pyc files the image ships, so runs start as there
    results: list[dict[str, Any]] = report["results"]

    from saudial.config.settings import Settings

    defaults = Settings()

    def record(result: dict[str, Any]) -> dict[str, Any]:
        """Keep a result and rewrite the report at once: a run cut short still leaves its numbers."""
        bs = int(result["settings"].get("SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE", defaults.per_device_train_batch_size))
        ga = int(result["settings"].get("SAUDIAL_GRADIENT_ACCUMULATION_STEPS", defaults.gradient_accumulation_steps))
        procs = int(result["settings"].get("SAUDIAL_NUM_PROCESSES", 1))
        if result.get("steady_tokens_per_second") and result.get("train_tokens") and result.get("train_steps"):
            tokens_per_sample = result["train_tokens"] / (result["train_steps"] * bs * ga * procs)
            result["samples_per_second"] = result["steady_tokens_per_second"] / tokens_per_sample
        for n in (4, 6):
            result[f"mfu_{n}n"] = mfu(result.get("steady_tokens_per_second"), n_params, tflops, n)
        results.append(result)
        (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "table.txt").write_text(table(results, n_params, tflops) + "\n")
        return result

    def picked(name: str) -> bool:
        """--only / --skip (name prefixes) for the configs, levers, scaling and profile ("profile: NAME") sections."""
        if args.only and not any(name.startswith(p) for p in args.only.split(";")):
            return False
        return not (args.skip and any(name.startswith(p) for p in args.skip.split(";")))

    def run(name: str, extra: dict[str, str], data: Path, steps: int | None) -> dict[str, Any]:
        return record(run_config(name, extra, data, model, args.work, args.smoke, steps))

    for section in args.sections.split(","):  # in the order given
        if section == "configs":
            for name, extra, steps in configurations(args.smoke):
                if picked(name):
                    run(name, extra, data_900, steps)
        elif section == "compiled":
            # The compiled layers against the eager defaults (config/settings.py's torch_compile says why off).
            run(COMPILED_RUN, COMPILED, data_900, 4 if args.smoke else 50)
        elif section == "wholerun":
            # The defaults on 900 training rows, start to adapter saved; then the same run as users run it,
            # with evaluation (base and adapter translate the 99 held-out rows; a random model rarely stops
            # at EOS, so every translation runs to max_new_tokens: the rate is the measure).
            run("defaults, whole 900-row run", {}, data_900, 4 if args.smoke else None)
            # The bench logs every step (a read of the GPU per step); users' default logs every 10th.
            run(WHOLE_RUN_DEFAULT_LOGGING, DEFAULT_LOGGING, data_900, 4 if args.smoke else None)
            evaluated = {"SAUDIAL_EVAL": "full", "SAUDIAL_MAX_NEW_TOKENS": "8" if args.smoke else "64"}
            run("defaults + evaluation, whole run", evaluated, data_900, 4 if args.smoke else None)
            # Its pair: SDPA free to pick cuDNN in generation, as PyTorch's default (model/patches.py, item 5).
            cudnn = evaluated | {"BENCH_WITHOUT": "cudnn-attention-off"}
            run("defaults + evaluation, cuDNN attention on", cudnn, data_900, 4 if args.smoke else None)
        elif section == "levers":
            # The speed overrides' same-call pairs (levers() says which), in turns.
            for name, extra, lever_steps in levers(args.smoke):
                if picked(name):
                    run(name, extra, data_900, lever_steps)
        elif section == "fitted":
            for name, extra, fitted_steps in fitted_pairs(args.smoke):
                if picked(name):
                    run(name, extra, data_900, fitted_steps)
        elif section == "compilecache":
            # Compile paid once: the compiled layers twice on one compile cache, emptied first; warmup_s is
            # the run's training time beyond its steady step time (the compile, mostly in the first steps).
            # Then warm again with inductor's Triton builds in the process itself instead of its worker pool.
            runs = cold_then_warm(args.work / "compile-cache")
            runs.append(("warm, 1 compile thread", runs[-1][1] | {"TORCHINDUCTOR_COMPILE_THREADS": "1"}))
            for label, cache in runs:
                run(f"{COMPILED_RUN} ({label})", COMPILED | cache, data_900, 4 if args.smoke else 50)
        elif section == "compileprofile":
            # Where a compiled run's warm-up goes: the step profile of the compiled layers (dynamo's compile
            # times and cache counters at its end) on an emptied compile cache, then on the one it filled.
            for label, cache in cold_then_warm(args.work / "compile-cache-profile"):
                extra = {"SAUDIAL_TORCH_COMPILE": "true"} | cache
                profile_config(f"defaults + compile ({label})", extra, data_900, model, args.work, args.out)
        elif section == "memory":
            # Does peak memory grow with the data? The same 100 steps over 900 and over 9,000 rows: the larger
            # file holds longer rows, so its longest padding-free micro-batch is longer (docs/benchmarks.md).
            data_9k = write_rows(args.work / "rows-10000.xlsx", 10000)
            run("defaults, 9,000 rows (100 steps)", {}, data_9k, 4 if args.smoke else 100)
        elif section == "activations":
            # What a step's peak memory is against its tokens, with no layer checkpointed, all and half
            # (bench/activation_memory.py: the measurements behind model/activation_memory.py's estimate), on
            # the defaults' rows and on long rows (micro-batch 16, max_length 2048: steps of many more tokens).
            long_rows = write_rows(args.work / "rows-long.xlsx", 400, paragraph_share=1.0, paragraph_sentences=60)
            for name, extra, data in (
                ("defaults", {}, data_900),
                ("long rows", {"SAUDIAL_MAX_LENGTH": "2048", "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "16"}, long_rows),
            ):
                if picked(f"activations: {name}"):
                    activations_config(name, extra, data, model, args, 3 if args.smoke else 10)
        elif section == "scaling":
            # 9,000 rows (whole run), then 90,000 capped at the 9,000-row run's steps; --only/--skip pick either.
            steps_9k = 4 if args.smoke else planned_steps(defaults, 9000, 1)  # 9,000 of the 10,000 rows train
            if picked("defaults, 9,000 rows"):
                run("defaults, 9,000 rows", {}, write_rows(args.work / "rows-10000.xlsx", 10000), None)
            if picked("defaults, 90,000 rows"):
                run("defaults, 90,000 rows (capped)", {}, write_rows(args.work / "rows-100000.xlsx", 100000), steps_9k)
        elif section == "maxlen":
            long_rows = write_rows(args.work / "rows-long.xlsx", 400, paragraph_share=1.0, paragraph_sentences=60)
            for length in (512, 2048):
                extra = {"SAUDIAL_MAX_LENGTH": str(length), "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "16"}
                run(f"long rows, max_length {length}", extra, long_rows, 8)
        elif section == "profile":
            # Eager with and without issue #15's levers (the compiled step: the compileprofile section).
            for name, extra in (
                ("defaults", {}),
                ("2 data loader workers", LOADER_WORKERS),
                ("PEFT layers, lora_dropout 0.05 (defaults before)", PEFT_BEFORE),
            ):
                if picked(f"profile: {name}"):
                    profile_config(name, extra, data_900, model, args.work, args.out)
        elif section == "multigpu":
            multigpu(run, data_900, model, args.work)
        elif section == "unsloth":
            record(run_unsloth(data_900, model, args.work))
        else:
            parser.error(f"unknown section {section!r}")

    plot(results, args.out / "bench.png")
    print("\n" + table(results, n_params, tflops))
    ratios = peer_ratios(results)
    report["ratios"] = ratios
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    if ratios:
        print("\n" + "\n".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))


def planned_steps(settings: Any, train_examples: int, processes: int) -> int:
    """Optimizer steps a run of `settings` takes over `train_examples` rows, as the Trainer counts them."""
    if settings.max_steps > 0:
        return int(settings.max_steps)
    batches = math.ceil(train_examples / (settings.per_device_train_batch_size * processes))
    per_epoch = max(1, batches // settings.gradient_accumulation_steps)
    return math.ceil(settings.num_train_epochs * per_epoch)


def cold_then_warm(cache: Path) -> list[tuple[str, dict[str, str]]]:
    """The compile cache `cache` emptied, and the environment of a run on it, once cold and once warm."""
    shutil.rmtree(cache, ignore_errors=True)
    return [(label, {"TORCHINDUCTOR_CACHE_DIR": str(cache)}) for label in ("cold cache", "warm cache")]


def warm_imports() -> float:
    """Import what a run imports once, in a child allowed to write bytecode; returns its seconds."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = "import saudial.jobs.train, saudial.training.recipe, saudial.inference.evaluation, saudial.publish.card"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True)
    return time.perf_counter() - start


def profile_config(name: str, extra: dict[str, str], data: Path, model: Path, work: Path, out: Path) -> None:
    """bench/profile_step.py on one configuration: GPU busy time against wall time per step."""
    slug = slug_of(name)
    env = config_env(extra, data, model, work / "profile" / slug, False, None)
    report = out / f"profile-{slug}.txt"
    log = work / "logs" / f"profile-{slug}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    trace = work / "profile" / f"{slug}-trace.json"  # the GPU's idle gaps come from it (bench/gaps.py)
    command = [
        sys.executable,
        str(REPO / "bench" / "profile_step.py"),
        str(report),
        "--trace",
        str(trace),
        "--syncs",
        "3",
    ]
    code, wall = sh(command, env, log, timeout=400)
    summary = report.read_text().splitlines()[1] if code == 0 and report.exists() else log.read_text()[-1500:]
    print(f"  profile {name}: exit {code}, wall {wall:.1f}s: {summary}", flush=True)


def activations_config(name: str, extra: dict[str, str], data: Path, model: Path, args: Any, steps: int) -> None:
    """bench/activation_memory.py on one configuration: peak memory per step against its tokens."""
    slug = slug_of(name)
    env = config_env(extra, data, model, args.work / "activations" / slug, args.smoke, None)
    report = args.out / f"activations-{slug}.json"
    log = args.work / "logs" / f"activations-{slug}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "bench" / "activation_memory.py"), str(report), "--steps", str(steps)]
    code, wall = sh(command, env, log, timeout=400)
    phases = json.loads(report.read_text())["phases"] if code == 0 and report.exists() else log.read_text()[-1500:]
    print(f"  activations {name}: exit {code}, wall {wall:.1f}s: {json.dumps(phases)}", flush=True)


def peer_ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """The side-by-side numbers the issues ask for, from the results of this run."""
    by_name = {r["name"]: r for r in results}

    def tps(name: str) -> float | None:
        return by_name.get(name, {}).get("steady_tokens_per_second")

    ratios: dict[str, float] = {}
    default, compiled = tps("defaults, whole 900-row run"), tps(COMPILED_RUN)
    logging_10 = tps(WHOLE_RUN_DEFAULT_LOGGING)
    mine_by_label = (
        ("defaults", default),
        ("defaults at the default logging", logging_10),
        ("compiled layers", compiled),
    )
    for label, mine in mine_by_label:
        for peer in ("seed as written (bs 1x8)", "seed, batch 8x8", UNSLOTH):
            if mine and tps(peer):
                ratios[f"{label} / {peer} tok/s"] = mine / tps(peer)  # type: ignore[operator]
    whole = by_name.get("defaults, whole 900-row run", {}).get("wall_s")
    peer_whole = by_name.get(UNSLOTH, {}).get("whole_run_900_s")
    if whole and peer_whole:
        ratios["defaults / Unsloth whole 900-row run wall time"] = whole / peer_whole
    return ratios


UNSLOTH = "Unsloth, bs 64, GC off"
WHOLE_RUN_DEFAULT_LOGGING = "defaults, whole run, logging every 10 steps (the default)"
COMPILED_RUN = "defaults + compiled layers (torch_compile)"
DEFAULT_LOGGING = {"SAUDIAL_LOGGING_STEPS": "10"}  # users' default; the bench's fixed settings log every step


def run_unsloth(data: Path, model: Path, work: Path) -> dict[str, Any]:
    """Unsloth as a peer, in its own package folder (UNSLOTH_SITE), same model, data and prompt."""
    # `make bench-peers` fills .unsloth-site; the offline wheel folder installs into /tmp/unsloth_site.
    local = REPO / ".unsloth-site"
    site = os.environ.get("UNSLOTH_SITE", str(local) if local.exists() else "/tmp/unsloth_site")
    env = dict(os.environ) | {
        "PYTHONPATH": f"{site}:{REPO}",
        "UNSLOTH_DISABLE_STATISTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    out = work / "unsloth"
    log = work / "logs" / "unsloth.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    script = REPO / "bench" / "unsloth_peer.py"
    code, wall = sh([sys.executable, str(script), str(model), str(data), str(out)], env, log, timeout=300)
    result: dict[str, Any] = {"name": UNSLOTH, "settings": {}, "exit_code": code, "wall_s": wall}
    if code == 0 and (out / "metrics.json").exists():
        result.update(json.loads((out / "metrics.json").read_text()))
    else:
        result["error_tail"] = log.read_text()[-2500:]
    print(f"  unsloth: exit {code}, wall {wall:.1f}s, {result.get('steady_tokens_per_second')}", flush=True)
    return result


def multigpu(run: Any, data: Path, model: Path, work: Path) -> None:
    """1 GPU against 2: at the same effective batch (32), and at 64 examples per GPU.

    Per-GPU memory is sampled during a 2-GPU run (each rank must hold its own 4-bit copy), and the
    adapter the 2-GPU run wrote is loaded back onto a fresh 4-bit base (bench/reload_check.py).
    """
    import torch

    if torch.cuda.device_count() < 2:
        print("  multigpu: fewer than 2 GPUs, skipped", flush=True)
        return
    data_9k = write_rows(work / "rows-10000.xlsx", 10000)
    pairs = [  # the default per-GPU batch (64), eager; then with compiled layers
        ("1 GPU, bs 64", {"SAUDIAL_NUM_PROCESSES": "1"}, "2 GPUs, bs 64 each", {}),
        ("1 GPU, bs 64 + compile", {"SAUDIAL_NUM_PROCESSES": "1"} | COMPILED, "2 GPUs, bs 64 each + compile", COMPILED),
    ]  # fmt: skip
    if os.environ.get("BENCH_MULTIGPU_EAGER_ONLY"):
        pairs = pairs[:1]
    for one_name, one_settings, two_name, two_extra in pairs:
        one = run(one_name, one_settings, data_9k, 40)
        sampler = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
            stdout=(work / "gpu-memory.csv").open("w"),
        )
        try:
            two = run(two_name, {"SAUDIAL_NUM_PROCESSES": "2"} | two_extra, data_9k, 40)
        finally:
            sampler.terminate()
        peak: dict[str, int] = {}
        for line in (work / "gpu-memory.csv").read_text().splitlines():
            index, used = (x.strip() for x in line.split(","))
            peak[index] = max(peak.get(index, 0), int(used))
        out = work / "runs" / slug_of(two_name)
        two["gpu_memory_peak_mib"] = peak
        two["outputs"] = sorted(p.name for p in out.iterdir()) if out.exists() else []
        if one.get("steady_tokens_per_second") and two.get("steady_tokens_per_second"):
            two["scaling_vs_1_gpu"] = two["steady_tokens_per_second"] / one["steady_tokens_per_second"]
        log = work / "logs" / f"reload-{slug_of(two_name)}.log"
        env = dict(os.environ) | {"CUDA_VISIBLE_DEVICES": "0", "HF_HUB_OFFLINE": "1"}
        code, _ = sh([sys.executable, str(REPO / "bench" / "reload_check.py"), str(model), str(out)], env, log, 300)
        two["adapter_reload_4bit"] = {"exit_code": code, "result": log.read_text().strip().splitlines()[-1:]}
        print(
            f"  multigpu: {two_name}: scaling {two.get('scaling_vs_1_gpu')}, peak MiB per GPU {peak}, "
            f"outputs {two['outputs']}, reload onto 4-bit base: {two['adapter_reload_4bit']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
