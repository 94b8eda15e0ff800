"""`saudial check`: one screen that says what this machine can do, and what a run here would pick.

The data file first (read and checked as training reads it: its problem is the first one listed), then
versions (Python, saudial, torch, CUDA, NVIDIA driver), the GPU (name, memory, compute capability), bf16
or fp16, whether bitsandbytes' CUDA library loads, the Hub (reachable in a few seconds?) and the token
(present or not; never shown), the base model (family, size, LiquidAI's status, its shape, and what a run
does with it; a model saudial cannot train is a blocker), then the settings a run would pick here:
gradient checkpointing, batch, torch.compile. Every problem found is listed, in that order. Without a
usable GPU it names the two ways forward: `make demo`, and SAUDIAL_QUANTIZATION=none. Returns 0 when
training can run here, 2 when it cannot (`make train` runs `saudial check --quiet` first: silent when
training can run).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from saudial import __version__
from saudial.config import huggingface as hf
from saudial.config.settings import Settings
from saudial.data.text import SYNTHETIC
from saudial.errors import EXIT_CONFIG, EXIT_OK, SaudialError
from saudial.model import base_model, hardware


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.lines.append((label, text))


def driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except FileNotFoundError:
        return "none found (no nvidia-smi)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown (nvidia-smi: {type(exc).__name__})"
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    return first if out.returncode == 0 and first else f"unknown (nvidia-smi exit {out.returncode})"


def gpu_section(report: Report, settings: Settings) -> float | None:
    """The GPU, its memory and dtype; returns its memory in GiB (None without a usable GPU)."""
    import torch

    report.add("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none, CPU only'})")
    report.add("NVIDIA driver", driver_version())
    problem = hardware.cuda_problem()
    if problem is not None:
        report.add("GPU", f"none usable: {problem}")
        report.add("compute dtype", "float32 (CPU)")
        if settings.quantization != "none":
            report.blockers.append(
                f"no usable CUDA GPU, and SAUDIAL_QUANTIZATION={settings.quantization}"
                f"{'' if 'quantization' in settings.model_fields_set else ' (the default)'} needs one"
            )
        return None
    props = torch.cuda.get_device_properties(0)
    count = torch.cuda.device_count()
    memory = props.total_memory / 2**30
    report.add("GPU", f"{count} x {props.name}, {memory:.1f} GiB, compute capability {props.major}.{props.minor}")
    bf16 = torch.cuda.is_bf16_supported()
    report.add("compute dtype", "bfloat16" if bf16 else "float16, with fp32 LoRA weights (this GPU has no bf16)")
    return memory


def bitsandbytes_section(report: Report, needs_cuda: bool) -> None:
    from importlib.metadata import version

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from bitsandbytes import cextension
    lib = cextension.lib
    if getattr(lib, "compiled_with_cuda", False):
        report.add("bitsandbytes", f"{version('bitsandbytes')}, CUDA library loaded")
    elif isinstance(lib, cextension.ErrorHandlerMockBNBNativeLibrary):
        report.add("bitsandbytes", f"{version('bitsandbytes')}, no native library loaded")
        if needs_cuda:
            report.blockers.append("bitsandbytes' CUDA library does not load (4-bit needs it)")
    else:
        report.add("bitsandbytes", f"{version('bitsandbytes')}, CPU library only (4-bit training needs its CUDA one)")


def hub_section(report: Report, settings: Settings) -> None:
    endpoint = hf.hub_endpoint()
    if hf.hub_offline():
        report.add("endpoint", f"offline (HF_HUB_OFFLINE=1): local directories and the cache ({hf.hub_cache()}) only")
    else:
        why = hf.hub_unreachable()
        report.add("endpoint", f"{endpoint} reachable" if why is None else f"{endpoint} NOT reachable ({why})")
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN") or get_token():
        source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "a saved login"
        report.add("token", f"found in {source} (its value is never shown)")
    else:
        report.add("token", "none (needed only for gated or private models and --push-to-hub)")
    try:
        hf.check_model_access(settings.model_name_or_path, settings.model_revision)
    except SaudialError as exc:
        report.add("base model", f"{settings.model_name_or_path}: cannot be loaded here")
        report.blockers.append(str(exc))
        return
    where = "local directory" if Path(settings.model_name_or_path).is_dir() else "from the Hub or its cache"
    report.add("base model", f"{settings.model_name_or_path} ({where})")


def base_section(report: Report, settings: Settings) -> None:
    """The base model's family, size and status, its shape, and what a run does with it (model/base_model.py)."""
    report.add("", f"Base model {settings.model_name_or_path}:")
    try:
        info = base_model.inspect_base(settings)
    except SaudialError as exc:
        report.add("family", "cannot be trained by saudial")
        report.blockers.append(str(exc))
        return
    for label, text in base_model.describe(info, settings):
        report.add(label, text)


def picks_section(report: Report, settings: Settings, memory: float | None) -> None:
    """The settings a run here would pick."""
    report.add("", "A run here would pick:")
    if "gradient_checkpointing" in settings.model_fields_set or settings.gradient_checkpointing:
        checkpointing = f"{'on, every layer' if settings.gradient_checkpointing else 'off'} (set)"
    elif settings.torch_compile or memory is None:
        checkpointing = "off (default)"
    else:  # training/checkpointing.py, when the run has its data and model
        checkpointing = (
            f"off where the data's largest micro-batch fits this GPU's {memory:.1f} GiB without it; otherwise each "
            "step checkpoints the fewest decoder layers its tokens need, or every layer with several processes or "
            "off the measured path (default: decided when training starts, docs/benchmarks.md)"
        )
    report.add("gradient checkpointing", checkpointing)
    processes = settings.num_processes or (_gpu_count() if memory is not None else 1)
    batch = settings.per_device_train_batch_size * settings.gradient_accumulation_steps * processes
    report.add(
        "batch",
        f"{settings.per_device_train_batch_size} per micro-batch x {settings.gradient_accumulation_steps} "
        f"accumulation x {processes} process(es) = {batch} examples per optimizer step",
    )
    report.add("torch.compile", "on (SAUDIAL_TORCH_COMPILE)" if settings.torch_compile else "off")
    needs = " (needs a CUDA GPU)" if settings.quantization != "none" else " (runs on the CPU too, slowly)"
    report.add("quantization", settings.quantization + needs)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def data_section(report: Report, settings: Settings) -> None:
    """The data file, read and checked as training reads it (data/conversations.py): its problem comes first."""
    report.add("", "Data:")
    if settings.data is None:
        report.add("data", "not set (saudial train needs --data or SAUDIAL_DATA)")
        return
    from saudial.data.conversations import ChatData, load_configured_data

    try:
        dataset = load_configured_data(settings)
    except SaudialError as exc:
        report.add("data", f"cannot be used: {exc}")  # the problem on its line, and first among the blockers
        report.blockers.append(str(exc))
        return
    if isinstance(dataset, ChatData):
        report.add("data", f"{settings.data} ({len(dataset.conversations)} conversations)")
    else:
        synthetic = f", the {SYNTHETIC}" if dataset.synthetic else ""
        report.add("data", f"{settings.data} ({len(dataset.rows)} usable rows{synthetic})")


def build(settings: Settings) -> Report:
    report = Report()
    data_section(report, settings)
    report.add("", "This machine:")
    report.add("python", f"{platform.python_version()} ({sys.executable})")
    report.add("saudial", __version__)
    memory = gpu_section(report, settings)
    bitsandbytes_section(report, needs_cuda=settings.quantization != "none" and memory is not None)
    report.add("", "Hugging Face Hub:")
    hub_section(report, settings)
    base_section(report, settings)
    picks_section(report, settings, memory)
    return report


def render(report: Report, settings: Settings) -> str:
    width = max(len(label) for label, _ in report.lines)
    out = []
    for label, text in report.lines:
        out.append(text if not label else f"  {label:<{width}}  {text}")
    out.append("")
    if not report.blockers:
        where = "on the CPU, unquantized (slow)" if settings.quantization == "none" else "here"
        out.append(f"Training can run {where}: saudial train (or make train).")
        return "\n".join(out)
    out.append("Training cannot run here:")
    out += [f"  - {b}" for b in report.blockers]
    if any(b.startswith("no usable CUDA GPU") for b in report.blockers):
        out += [
            "",
            "Two ways forward without a GPU:",
            "  make demo                              the whole pipeline on this CPU in about a minute, offline, with",
            "                                         a tiny LFM2 built locally (every stage; not a useful model)",
            "  SAUDIAL_QUANTIZATION=none make train   the real LFM2-1.2B unquantized on the CPU: very slow, and it",
            "                                         needs the Hub or a local copy (SAUDIAL_MODEL_NAME_OR_PATH)",
        ]
    return "\n".join(out)


def run_check(settings: Settings, quiet: bool = False) -> int:
    """Print the report (with `quiet`, only when training cannot run); 0 when training can run, else 2."""
    report = build(settings)
    if report.blockers or not quiet:
        print(render(report, settings), flush=True)
    return EXIT_CONFIG if report.blockers else EXIT_OK
