"""The 4-bit path on a real CUDA GPU. Skipped without one; run on the GPU machine (README, Developing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from saudial.config.settings import Settings
from tests.conftest import RunEntry, base_env

pytestmark = pytest.mark.gpu


def _gpu_env(model: Path, data: Path, out: Path, **extra: str) -> dict[str, str]:
    settings = {
        "SAUDIAL_QUANTIZATION": "4bit",
        "SAUDIAL_MAX_STEPS": "12",
        "SAUDIAL_LEARNING_RATE": "1e-3",
        "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "8",
    }
    return base_env(model, data, out, **(settings | extra))


def _losses(out: Path) -> list[float]:
    return [loss for _, loss in json.loads((out / "metrics.json").read_text())["loss_curve"]]


@pytest.fixture(scope="session")
def full_size_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFM2-1.2B's published architecture with random weights (bench/bench.py builds the same)."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from bench.bench import LFM2_1_2B, PARAMS_1_2B
    from saudial.devtools import synthetic, tiny

    path = tmp_path_factory.mktemp("lfm2-1.2b-random")
    frame = synthetic.make_rows(400)
    tokenizer = tiny.build_tokenizer([str(v) for c in frame.columns[5:9] for v in frame[c].dropna()])
    config = Lfm2Config(**LFM2_1_2B)
    config.eos_token_id = tokenizer.eos_token_id
    with torch.device("cuda"):
        model = Lfm2ForCausalLM(config).to(torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == PARAMS_1_2B
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def test_4bit_load_is_nf4_with_double_quant(tiny_model: Path) -> None:
    import bitsandbytes as bnb

    from saudial.model.loading import load_model

    model = load_model(Settings(model_name_or_path=str(tiny_model), quantization="4bit"))
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) >= 4 * 5  # every projection of every layer
    for module in linear4:
        state = module.weight.quant_state
        assert state.quant_type == "nf4"
        assert state.nested  # double quantization: the scales are quantized too
        assert module.weight.device.type == "cuda"


def test_4bit_training_small_model(tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    out = tmp_path / "out"
    result = run_entry(_gpu_env(tiny_model, workbook, out))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(out)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    # The adapter loads back onto a 4-bit base and changes its output.
    from peft import PeftModel

    from saudial.model.loading import load_model

    base = load_model(Settings(model_name_or_path=str(tiny_model), quantization="4bit"))
    ids = torch.tensor([[1, 20, 30, 40, 50]], device="cuda")
    with torch.no_grad():
        before = base(input_ids=ids).logits.float()
        tuned = PeftModel.from_pretrained(base, out)
        after = tuned(input_ids=ids).logits.float()
    assert (after - before).abs().max() > 1e-3


def test_fp16_compute_trains(tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    out = tmp_path / "out"
    result = run_entry(_gpu_env(tiny_model, workbook, out, SAUDIAL_TORCH_DTYPE="float16"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(out)
    assert all(math.isfinite(x) for x in losses)
    assert json.loads((out / "run_manifest.json").read_text())["config"]["torch_dtype"] == "float16"


def test_full_size_architecture_4bit(
    full_size_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    out = tmp_path / "out"
    env = _gpu_env(full_size_model, workbook, out, SAUDIAL_MAX_STEPS="15", SAUDIAL_LEARNING_RATE="5e-4")
    result = run_entry(env)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(out)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["peak_reserved_gib"] < 20
    # Expandable segments (config/runtime.py): the allocator reserves about what it allocates, no fragmentation.
    assert metrics["peak_reserved_gib"] <= 1.2 * metrics["peak_allocated_gib"] + 0.5, metrics
    print("full-size 4-bit:", {k: metrics.get(k) for k in ("steady_tokens_per_second", "peak_reserved_gib")}, losses)


def test_fused_lora_trains_like_peft_on_gpu(
    tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    """The default fused 4-bit LoRA step (model/fused_lora.py) against PEFT's layers: the same loss curve."""
    curves = {}
    for fused in ("true", "false"):
        out = tmp_path / fused
        result = run_entry(_gpu_env(tiny_model, workbook, out, SAUDIAL_FUSED_LORA=fused))
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("fused LoRA: " in result.stdout + result.stderr) == (fused == "true")
        curves[fused] = _losses(out)
    fused_curve, peft_curve = curves["true"], curves["false"]
    assert len(fused_curve) == len(peft_curve) == 12
    assert abs(fused_curve[0] - peft_curve[0]) <= 1e-2 * peft_curve[0], (fused_curve, peft_curve)
    assert all(abs(f - p) <= 0.05 * p for f, p in zip(fused_curve, peft_curve, strict=True)), (fused_curve, peft_curve)


@pytest.mark.parametrize("rows", ["translation", "chat"])
@pytest.mark.parametrize(
    ("varlen", "kernels"), [(False, False), (True, False), (True, True)], ids=["sdpa-mask", "flash-varlen", "kernels"]
)
def test_padding_free_equals_padded_on_gpu(
    tiny_model: Path, workbook: Path, varlen: bool, kernels: bool, rows: str
) -> None:
    """Per-example losses of a 4-bit bf16 model: padding-free row vs padded batch, to bf16 noise.

    With SDPA and a block-diagonal mask, and with the flash varlen kernel training uses (model/patches.py), that
    one also with the Triton kernels (model/fast_lfm2.py); translation rows and chat rows (conversations through
    the chat template).
    """
    from transformers import AutoTokenizer

    from saudial.model import patches as speed
    from saudial.model import short_conv
    from saudial.model.loading import load_model
    from saudial.training.trainer import padding_free_collator
    from tests.models import chat_examples, padded_batch, per_example_loss, row_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = load_model(Settings(model_name_or_path=str(tiny_model), quantization="4bit")).eval()
    examples = row_examples(workbook, tokenizer) if rows == "translation" else chat_examples(tokenizer)
    ids, mask = padded_batch(examples, tokenizer.pad_token_id)
    short_conv.install_boundary_aware_conv()
    batch = padding_free_collator(tokenizer.pad_token_id, 256)([{"input_ids": e} for e in examples])
    if varlen:
        speed.use_varlen_attention(model)
    if kernels:
        from saudial.model import fast_lfm2

        model.requires_grad_(False)  # the base is frozen under LoRA: the norm and conv kernels cover frozen weights
        assert fast_lfm2.install(model)["conv"] > 0
    inputs = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        padded = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), use_cache=False).logits.float().cpu()
        flat = model(**inputs, use_cache=False).logits[0].float().cpu()
    start = 0
    for i, e in enumerate(examples):
        a = per_example_loss(padded[i, : len(e)], torch.tensor(e)).mean()
        b = per_example_loss(flat[start : start + len(e)], torch.tensor(e)).mean()
        assert abs(a - b) < 2e-2 * max(1.0, float(a)), (i, float(a), float(b))
        start += len(e)


def test_chat_training_on_gpu(tiny_model: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    """SAUDIAL_TASK=chat on the 4-bit model, padding-free through the flash varlen kernel: the loss on the
    assistant turns falls, the evaluation scores base vs adapter, and `saudial chat` replies."""
    from tests.chat_files import conversations, write_jsonl

    data = write_jsonl(tmp_path / "chat.jsonl", conversations())
    out = tmp_path / "out"
    extra = {"SAUDIAL_TASK": "chat", "SAUDIAL_EVAL": "full", "SAUDIAL_EVAL_SIZE": "0.2", "SAUDIAL_LOGGING_STEPS": "1"}
    result = run_entry(_gpu_env(tiny_model, data, out, SAUDIAL_MAX_NEW_TOKENS="8", **extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attention: flash varlen over the examples of each padding-free row" in result.stderr
    losses = _losses(out)
    assert all(math.isfinite(x) for x in losses) and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["task"] == "chat" and math.isfinite(metrics["eval_loss"])
    env = base_env(tiny_model, data, out, SAUDIAL_MAX_NEW_TOKENS="8")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_QUANTIZATION"):
        env.pop(key)
    reply = run_entry(env, "chat", "--adapter", str(out), "Open the dragon.")
    assert reply.returncode == 0, reply.stderr[-3000:]
    print("chat on GPU:", {"losses": losses[:2] + losses[-2:], "reply": reply.stdout.strip()[:80]})


@pytest.mark.compiles
def test_compiled_layers_train_on_gpu(tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    """SAUDIAL_TORCH_COMPILE=true on the 4-bit model: same first losses as eager (bf16 noise), loss falls."""
    curves = {}
    for compiled in ("false", "true"):
        out = tmp_path / f"compile-{compiled}"
        env = _gpu_env(tiny_model, workbook, out, SAUDIAL_TORCH_COMPILE=compiled, SAUDIAL_LOGGING_STEPS="1")
        result = run_entry(env)
        assert result.returncode == 0, result.stderr[-3000:]
        curves[compiled] = _losses(out)
    eager, compiled_curve = curves["false"], curves["true"]
    assert all(math.isfinite(x) for x in compiled_curve)
    assert abs(compiled_curve[0] - eager[0]) < 2e-2 * max(1.0, eager[0]), (eager[:3], compiled_curve[:3])
    assert sum(compiled_curve[-3:]) / 3 < sum(compiled_curve[:3]) / 3, compiled_curve


def test_dense_generation_equals_4bit_on_gpu(tiny_model: Path, workbook: Path) -> None:
    """Evaluation dequantizes the 4-bit base once (inference/dense.py): the same greedy translations, in bf16."""
    from peft import LoraConfig, get_peft_model

    from saudial.data.workbook import iter_rows, load
    from saudial.inference.dense import dequantize_base_weights
    from saudial.inference.generate import Request, translate
    from saudial.model.loading import load_model, load_tokenizer

    settings = Settings(model_name_or_path=str(tiny_model), quantization="4bit", max_new_tokens=24)
    model = get_peft_model(load_model(settings), LoraConfig(r=4, target_modules=["q_proj", "w1", "in_proj"]))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    tokenizer = load_tokenizer(settings)
    requests = [Request(r.dialect, r.english, r.context or None) for r in iter_rows(load(workbook).rows.head(24))]
    before = translate(model, tokenizer, requests, settings, progress=False)
    assert dequantize_base_weights(model) > 0
    after = translate(model, tokenizer, requests, settings, progress=False)
    assert after == before


def test_generation_runs_attention_without_cudnn(tiny_model: Path, workbook: Path) -> None:
    """A model saudial loads generates with SDPA's flash or memory-efficient backend, never cuDNN's, whose host
    cost for every new shape (each decode step's) made the first generation over a batch 3.5-5.4x slower
    (model/patches.py, item 5). With cuDNN allowed, PyTorch picks it for the same generation: the upstream
    behaviour the patch is for."""
    from saudial.data.workbook import iter_rows, load
    from saudial.inference.generate import Request, translate
    from saudial.model import patches
    from saudial.model.loading import load_model, load_tokenizer

    settings = Settings(model_name_or_path=str(tiny_model), quantization="4bit", max_new_tokens=8)
    model = load_model(settings)
    tokenizer = load_tokenizer(settings)
    # Prompts of different lengths: the batch is left-padded, so attention runs under a mask.
    requests = [Request(r.dialect, r.english, r.context or None) for r in iter_rows(load(workbook).rows.head(8))]

    def attention_ops() -> set[str]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            translate(model, tokenizer, requests, settings, progress=False)
        return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}

    assert not torch.backends.cuda.cudnn_sdp_enabled()
    ours = attention_ops()
    assert ours and not any("cudnn" in op for op in ours), ours
    torch.backends.cuda.enable_cudnn_sdp(True)  # PyTorch's default
    try:
        upstream = attention_ops()
    finally:
        patches.avoid_cudnn_attention()
    assert any("cudnn" in op for op in upstream), f"PyTorch no longer picks cuDNN here ({upstream}): drop the patch"


def test_a_small_gpu_checkpoints_only_the_layers_each_step_needs(
    full_size_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    """LFM2-1.2B's shape at the default micro-batch of 64 on a GPU capped at 4 GiB (PyTorch's own cap, as a user
    sharing a GPU sets it): the run fits, the steps checkpoint some layers and not all, and the losses are those of
    the same run with the whole GPU, where nothing is checkpointed (model/activation_memory.py)."""
    total = torch.cuda.get_device_properties(0).total_memory
    capped = {"PYTORCH_CUDA_ALLOC_CONF": f"expandable_segments:True,per_process_memory_fraction:{4 * 2**30 / total}"}
    runs = {}
    for name, extra in (("whole", {}), ("capped", capped)):
        out = tmp_path / name
        env = _gpu_env(full_size_model, workbook, out, SAUDIAL_MAX_STEPS="6", SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE="64")
        result = run_entry(env | extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.loads((out / "metrics.json").read_text())
    whole, fitted = runs["whole"], runs["capped"]
    assert "gradient_checkpointing" not in whole and whole["peak_reserved_gib"] > 4
    plan = fitted["gradient_checkpointing"]
    assert 0 < plan["checkpointed_max"] <= plan["layers"] and plan["checkpointed_min"] < plan["layers"], plan
    assert fitted["peak_reserved_gib"] <= 4, fitted
    assert _losses(tmp_path / "capped") == pytest.approx(_losses(tmp_path / "whole"), rel=2e-3)
    print("4 GiB:", plan, {k: fitted.get(k) for k in ("steady_tokens_per_second", "peak_reserved_gib")})
