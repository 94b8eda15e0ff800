"""Each workaround of a library's behaviour, and the behaviour it works around.

If one of these fails, upstream changed: the workaround named in the failure may no longer be
needed (or may need changing). The workarounds live in saudial/model/patches.py and saudial/training/trainer.py.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from saudial.model import short_conv
from saudial.training.trainer import HANDLED_HERE, padding_free_collator


def test_lfm2_conv_fallback_still_mixes_packed_examples() -> None:
    """short_conv.install_boundary_aware_conv exists because transformers' fallback ignores `seq_idx`."""
    upstream = short_conv.upstream_causal_conv1d()
    torch.manual_seed(0)
    weight, parts = torch.randn(4, 3), [torch.randn(1, 4, n) for n in (5, 3)]
    seq_idx = torch.cat([torch.full((n.shape[-1],), i) for i, n in enumerate(parts)])[None]
    alone = torch.cat([upstream(p, weight) for p in parts], dim=-1)
    try:
        packed = upstream(torch.cat(parts, dim=-1), weight, seq_idx=seq_idx)
    except ValueError:  # some transformers builds refuse seq_idx without the causal_conv1d kernel
        return
    assert not torch.allclose(packed, alone, atol=1e-5), (
        "transformers' LFM2 conv now keeps packed examples apart: drop short_conv.install_boundary_aware_conv"
    )


def test_trl_still_refuses_padding_free_with_max_length(tiny_model: Path, tmp_path: Path) -> None:
    """training/trainer.py passes padding_free=False and gives the padding-free collator itself because of this."""
    assert "padding_free" in HANDLED_HERE
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}] * 2)
    args = SFTConfig(output_dir=str(tmp_path), padding_free=True, max_length=64, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="max_length"):
        SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model),
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
        )
    # ...and a custom collator, which padding_free=True would refuse too, is accepted without it.
    args = SFTConfig(output_dir=str(tmp_path), padding_free=False, max_length=64, use_cpu=True, report_to=[])
    collator = padding_free_collator(tokenizer.pad_token_id, 8)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=collator,
    )
    assert trainer.data_collator is collator


def test_trl_still_casts_quantized_lora_weights_to_bf16(tiny_model: Path, tmp_path: Path) -> None:
    """run/trainer.build_trainer turns them back to fp32 for fp16 training because of this cast."""
    from saudial.config.settings import Settings
    from saudial.model.lora import lora_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.is_loaded_in_4bit = True  # what TRL reads to decide that the base is quantized
    data = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}] * 2)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=False)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
        peft_config=lora_config(Settings(model_name_or_path=str(tiny_model))),
    )
    assert trainer.model is not None
    dtypes = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert dtypes == {torch.bfloat16}, "TRL no longer casts LoRA weights to bf16: drop the fp32 cast in build_trainer"


def test_torch_still_enables_cudnn_attention_by_default() -> None:
    """patches.avoid_cudnn_attention turns off what PyTorch turns on by default (run in a fresh process)."""
    import subprocess
    import sys

    code = "import torch; print(torch.backends.cuda.cudnn_sdp_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True", "PyTorch no longer enables cuDNN attention by default: drop patches.avoid_cudnn_attention"


AOT_PROBE = """
import os, sys, tempfile
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
import torch
import torch._functorch.config as functorch_config
from torch._dynamo.utils import counters

class Square(torch.autograd.Function):  # a custom autograd.Function, like bitsandbytes' MatMul4Bit
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad

functorch_config.autograd_cache_allow_custom_autograd_functions = sys.argv[1] == "allow"
torch.compile(lambda x: Square.apply(x).sum())(torch.randn(8, requires_grad=True)).backward()
print(sorted(counters["aot_autograd"]))
"""


def test_aot_autograd_cache_still_needs_the_flag_for_custom_functions() -> None:
    """patches.enable_compile_cache sets the flag because AOTAutograd bypasses its cache without it."""
    import subprocess
    import sys

    def counters(mode: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", AOT_PROBE, mode], capture_output=True, text=True, check=True, timeout=300
        ).stdout

    assert "autograd_cache_saved" in counters("allow"), "torch dropped or renamed the flag: fix enable_compile_cache"
    assert "autograd_cache_bypass" in counters("default"), (
        "AOTAutograd now caches custom autograd.Functions by itself: drop the flag in patches.enable_compile_cache"
    )
