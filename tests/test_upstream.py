"""Each place saudial replaces or wraps a library's behaviour, and what it relies on there.

If one of these fails, upstream changed: the override named in the failure may no longer be needed, or may
need changing. docs/architecture.md ("Upstream overrides") lists every override with the upstream versions it
was written against; the behaviour tests of each override live beside it (tests/test_sync_free.py,
tests/test_fused_lora.py, tests/test_fused_norm.py, tests/test_padding_free.py, tests/test_logs.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_callback import ProgressCallback
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


def test_torch_still_enables_cudnn_attention_by_default() -> None:
    """patches.avoid_cudnn_attention turns off what PyTorch turns on by default (checked in a fresh process)."""
    code = "import torch; print(torch.backends.cuda.cudnn_sdp_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True", "PyTorch no longer enables cuDNN attention by default: drop patches.avoid_cudnn_attention"


@pytest.mark.parametrize(("attention", "cudnn"), [("auto", False), ("sdpa", False), ("eager", True)])
def test_a_model_loaded_to_run_sdpa_turns_cudnn_attention_off(tiny_model: Path, attention: str, cudnn: bool) -> None:
    """load_model, which training, evaluation and translation all go through, turns SDPA's cuDNN backend off
    where the model runs SDPA (model/patches.py, item 5) and leaves PyTorch's choice alone otherwise."""
    from saudial.config.settings import Settings
    from saudial.model.loading import load_model

    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)  # PyTorch's default
    try:
        load_model(Settings(model_name_or_path=str(tiny_model), quantization="none", attn_implementation=attention))
        assert torch.backends.cuda.cudnn_sdp_enabled() is cudnn
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_trl_still_casts_quantized_lora_weights_to_bf16(tiny_model: Path, tmp_path: Path) -> None:
    """training/trainer.build_trainer turns them back to fp32 for fp16 training because of this cast."""
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


def params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trainer_methods_sync_free_overrides_keep_their_signatures() -> None:
    """training/sync_free.SyncFreeSFTTrainer overrides these methods and calls them through super()."""
    from transformers import Trainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from saudial.training.sync_free import CountingCollator, SyncFreeSFTTrainer

    expected = {
        (Trainer, "training_step"): ["self", "model", "inputs", "num_items_in_batch"],
        (Trainer, "_track_num_input_tokens"): ["self", "inputs"],
        (SFTTrainer, "compute_loss"): ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        (Trainer, "log"): ["self", "logs", "start_time"],
        (Trainer, "_save_checkpoint"): ["self", "model", "trial"],
        (Trainer, "_finalize_training"): ["self", "trial", "num_train_samples", "start_time"],
        (Trainer, "_maybe_log_save_evaluate"): [
            "self",
            "tr_loss",
            "grad_norm",
            "model",
            "trial",
            "epoch",
            "ignore_keys_for_eval",
            "start_time",
            "learning_rate",
        ],
        (DataCollatorForLanguageModeling, "torch_call"): ["self", "examples"],
    }
    for (cls, name), names in expected.items():
        assert params(getattr(cls, name)) == names, f"{cls.__name__}.{name} changed: review training/sync_free.py"
        ours = SyncFreeSFTTrainer if cls is not DataCollatorForLanguageModeling else CountingCollator
        assert params(getattr(ours, name)) == names, f"{ours.__name__}.{name} no longer matches upstream's"
    source = inspect.getsource(Trainer)
    assert "self._track_num_input_tokens(inputs)" in source, "the Trainer no longer counts tokens there"
    assert "self._tr_loss = torch.tensor" in source, "the Trainer's on-device running loss (_save_checkpoint reads it)"
    # What training/late_log.py writes one step late: upstream's log of a step, line for line.
    for line in (
        "tr_loss_scalar = nested_gather(tr_loss, self.args.parallel_mode).mean().item()",
        'logs["loss"] = tr_loss_scalar / (self.state.global_step - self._globalstep_last_logged)',
        'logs["grad_norm"] = grad_norm.item() if isinstance(grad_norm, torch.Tensor) else grad_norm',
        "self._total_loss_scalar += tr_loss_scalar",
        "self._maybe_log_save_evaluate(",
        "self._total_loss_scalar += self._tr_loss.item()",  # in _finalize_training, which writes a held log first
    ):
        assert line in source, f"the Trainer changed ({line}): review training/late_log.py"


def test_sft_trainer_state_that_sync_free_reads(tiny_model: Path, tmp_path: Path) -> None:
    """SyncFreeSFTTrainer reads and writes TRL's private metric state and repeats TRL's plain-loss conditions."""
    data = datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}] * 2)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=False)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
    )
    assert set(trainer._metrics) == {"train", "eval"} and trainer._metrics["train"]["entropy"] == []
    assert trainer._total_train_tokens == 0 and trainer._tp_size == 1 and trainer.get_tp_size() == 1
    assert trainer.aux_loss_enabled is False and trainer.compute_loss_func is None and trainer.label_smoother is None
    assert args.loss_type == "nll"
    # training/trainer.build_trainer swaps this callback for saudial's step lines.
    assert ProgressCallback in {type(c) for c in trainer.callback_handler.callbacks}
    # TRL's plain path, which SyncFreeSFTTrainer.compute_loss repeats without the per-step reads.
    source = inspect.getsource(SFTTrainer.compute_loss)
    for piece in (
        "outputs = model(**inputs, fused_lm_head=True)",
        "per_token_loss = -outputs.log_probs",
        "outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch",
        'self._metrics[mode]["entropy"].append(',
        'self._metrics[mode]["mean_token_accuracy"].append(',
        'self._metrics[mode]["num_tokens"] = [self._total_train_tokens]',
        ".item()",  # the per-step reads SyncFreeSFTTrainer exists to avoid
    ):
        assert piece in source, f"TRL's compute_loss changed ({piece!r}): review SyncFreeSFTTrainer.compute_loss"


def test_trl_chunked_logprob_kernel_as_lm_head_calls_it() -> None:
    """model/lm_head.py calls ChunkedLogProbFunction.apply with 9 positional arguments and reads 3 of its 5
    outputs; it must score exactly as a full log-softmax does."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer import utils as trl_utils

    from saudial.model import lm_head

    assert params(ChunkedLogProbFunction.forward) == [
        "ctx", "hidden", "weight", "bias", "targets", "temperature", "chunk_size",
        "final_logit_softcapping", "logit_scale", "outputs",
    ]  # fmt: skip
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == lm_head.CHUNK
    torch.manual_seed(0)
    hidden, weight = torch.randn(6, 8), torch.randn(11, 8)
    targets = torch.randint(0, 11, (6,))
    out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 4, None, 1.0, lm_head.OUTPUTS)
    assert len(out) == 5
    log_probs, entropy, _, _, is_top1 = out
    logp = torch.log_softmax(hidden @ weight.T, dim=-1)
    torch.testing.assert_close(log_probs, logp.gather(1, targets[:, None])[:, 0])
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1))
    assert torch.equal(is_top1.bool(), logp.argmax(-1) == targets)


def test_trl_fused_head_scales_logits_only_by_what_lm_head_refuses() -> None:
    """lm_head.supported leaves to TRL every model whose head TRL rescales; a new scaling attribute in TRL's
    add_fused_lm_head must be added to lm_head.SCALED_BY."""
    import re

    from trl.trainer import utils as trl_utils

    from saudial.model import lm_head

    source = inspect.getsource(trl_utils.add_fused_lm_head)
    read = set(re.findall(r'getattr\(text_config, "(\w+)"', source))
    # MoE's router loss: such a model has TRL's aux_loss_enabled, and SyncFreeSFTTrainer._plain_loss leaves it to TRL.
    known = {*lm_head.SCALED_BY, "output_router_logits", "router_aux_loss_coef"}
    assert read and read <= known, f"TRL's head also reads {sorted(read - known)}: review lm_head.supported"
    assert 'outputs=("log_probs", "entropy", "is_top1")' in inspect.getsource(SFTTrainer.__init__)
    fields = {f.name for f in dataclasses.fields(trl_utils.FusedCausalLMOutput)}
    assert {"log_probs", "entropy", "is_top1", "label_mask"} <= fields


def test_lfm2_short_conv_looks_up_the_function_short_conv_replaces() -> None:
    """short_conv.install_boundary_aware_conv swaps the module-level `causal_conv1d_fn` of modeling_lfm2; LFM2's
    conv must still look it up there at call time, with a signature the replacement covers."""
    from transformers.models.lfm2 import modeling_lfm2

    assert "causal_conv1d_fn" in inspect.unwrap(modeling_lfm2.Lfm2ShortConv.forward).__code__.co_names
    upstream = params(short_conv.upstream_causal_conv1d())
    assert upstream == ["hidden_states", "weight", "bias", "activation", "kwargs"]
    assert set(upstream) <= set(params(short_conv.boundary_aware_causal_conv1d))


def test_lfm2_rms_norm_is_what_the_fused_forward_replaces() -> None:
    """patches.use_fused_rms_norm swaps Lfm2RMSNorm.forward per module; it reads `variance_epsilon` and `weight`
    and must compute upstream's value (tests/test_fused_norm.py checks the whole model)."""
    from transformers.models.lfm2.modeling_lfm2 import Lfm2RMSNorm

    from saudial.model import patches

    norm = Lfm2RMSNorm(16, eps=1e-5)
    assert params(Lfm2RMSNorm.forward) == ["self", "hidden_states"]
    assert isinstance(norm.variance_epsilon, float) and isinstance(norm.weight, torch.nn.Parameter)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(patches.fused_rms_norm(norm, x), norm(x), rtol=0, atol=0)


def test_lfm2_modules_whose_forwards_fast_lfm2_replaces() -> None:
    """fast_lfm2.install gives LFM2's MLP, attention, decoder layer and short conv modules forwards of their own:
    they take upstream's arguments, read these attributes and functions, and compute what upstream's forwards
    compute (the MLP's w2(silu(w1 x) * w3 x)). The layer's checkpointing is upstream's class wrapper, which
    fast_lfm2 repeats. tests/test_kernels.py and tests/test_fused_lora.py check the whole model with and without."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.models.lfm2 import modeling_lfm2 as lfm2

    from saudial.devtools.tiny import tiny_config

    assert params(lfm2.Lfm2MLP.forward) == ["self", "x"]
    layer_args = ["self", "hidden_states", "position_embeddings", "attention_mask", "position_ids", "past_key_values"]
    assert params(lfm2.Lfm2DecoderLayer.forward) == [*layer_args, "kwargs"]
    assert params(lfm2.Lfm2ShortConv.forward) == [
        "self",
        "hidden_states",
        "past_key_values",
        "attention_mask",
        "kwargs",
    ]
    assert issubclass(lfm2.Lfm2DecoderLayer, GradientCheckpointingLayer)
    attention_args = ["self", "hidden_states", "position_embeddings", "attention_mask", "past_key_values", "kwargs"]
    assert params(lfm2.Lfm2Attention.forward) == attention_args
    assert callable(lfm2.apply_rotary_pos_emb) and callable(lfm2.eager_attention_forward)
    assert callable(lfm2.ALL_ATTENTION_FUNCTIONS.get_interface)
    config = tiny_config(vocab_size=32)
    torch.manual_seed(0)
    mlp = lfm2.Lfm2MLP(config)
    x = torch.randn(3, config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.w2(torch.nn.functional.silu(mlp.w1(x)) * mlp.w3(x)), rtol=0, atol=0)
    kinds = {}
    for index in range(config.num_hidden_layers):
        layer = lfm2.Lfm2DecoderLayer(config, index)
        kinds[layer.is_attention_layer] = layer
        for name in ("operator_norm", "ffn_norm", "feed_forward", "self_attn" if layer.is_attention_layer else "conv"):
            assert hasattr(layer, name), f"Lfm2DecoderLayer has no {name}: review model/fast_lfm2.py"
    assert set(kinds) == {True, False}  # the tiny model has both kinds of layer
    attention = kinds[True].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "out_proj", "q_layernorm", "k_layernorm", "head_dim", "scaling"):
        assert hasattr(attention, name), f"Lfm2Attention has no {name}: review model/fast_lfm2.py"
    conv = kinds[False].conv
    assert isinstance(conv.in_proj, torch.nn.Linear) and isinstance(conv.out_proj, torch.nn.Linear)
    assert conv.in_proj.out_features == 3 * config.hidden_size  # B, C, x, in this order (kernels.GatedShortConv)
    assert isinstance(conv.conv, torch.nn.Conv1d) and conv.conv.weight.shape[:2] == (config.hidden_size, 1)


def test_attention_hooks_varlen_attention_plugs_into() -> None:
    """patches.varlen_attention is registered through transformers' attention interfaces, falls back to its SDPA
    function, reads TRL's padding-free boundaries and calls torch's varlen kernel positionally."""
    from torch.nn.attention import varlen
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    assert callable(AttentionInterface.register) and callable(AttentionMaskInterface.register)
    sdpa = params(sdpa_attention_forward)
    assert sdpa[:7] == ["module", "query", "key", "value", "attention_mask", "dropout", "scaling"]
    assert "attention_mask" in params(sdpa_mask)
    kernel = inspect.signature(varlen.varlen_attn).parameters
    assert list(kernel)[:7] == ["query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k"]
    assert "scale" in kernel and ("window_size" in kernel or "is_causal" in kernel)
    collator = padding_free_collator(0, None)
    batch = collator([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["max_length_q"] == 3
    assert batch["seq_idx"].tolist() == [[0, 0, 0, 1, 1]]  # what the boundary-aware conv reads


def test_compile_cache_flag_exists() -> None:
    """patches.enable_compile_cache sets this flag (the probe above shows what it does)."""
    import torch._functorch.config as functorch_config

    assert isinstance(functorch_config.autograd_cache_allow_custom_autograd_functions, bool)


def test_peft_4bit_lora_layer_that_fused_lora_takes_over() -> None:
    """fused_lora.fuse swaps the forward of PEFT's LoRA layer on a bitsandbytes 4-bit linear and reads its state;
    every call it does not cover goes to PEFT's forward, with the same arguments."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    from saudial.config.settings import Settings
    from saudial.model.lora import lora_config

    assert params(LoraLinear4bit.forward) == ["self", "x", "args", "kwargs"]
    base = bnb.nn.Linear4bit(16, 8, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    config = lora_config(Settings())  # the defaults: r 8, alpha 16, dropout 0
    layer = LoraLinear4bit(base, "default", config=config, r=config.r, lora_alpha=config.lora_alpha)
    for name in ("active_adapters", "disable_adapters", "merged", "lora_variant", "base_layer"):
        assert hasattr(layer, name), f"PEFT's LoRA layer has no {name}: review model/fused_lora.py"
    assert layer.active_adapters == ["default"] and not layer.merged and not layer.disable_adapters
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)  # dropout 0: what the fused step needs
    assert layer.scaling["default"] == 2.0 and layer.lora_A["default"].weight.shape == (8, 16)
    assert layer.base_layer.compute_dtype == torch.bfloat16 and layer.base_layer.bias is None
    # inference/dense.py replaces bitsandbytes' layer by an nn.Linear of these sizes.
    assert (base.in_features, base.out_features) == (16, 8)
    # inference/dense.merged_adapter folds PEFT's own delta into the weight.
    assert params(LoraLinear4bit.get_delta_weight) == ["self", "adapter"]


def test_bitsandbytes_dequantize_op_with_cached_scales_is_bitsandbytes_own() -> None:
    """fused_lora calls bitsandbytes' dequantize op with scales it dequantized once; that must be what
    `dequantize_4bit` computes on every call (tests/test_fused_lora.py checks it on a whole model)."""
    import bitsandbytes.functional as bnb_functional

    from saudial.model import fused_lora

    schema = str(torch.ops.bitsandbytes.dequantize_4bit.default._schema)
    assert "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype)" in schema
    torch.manual_seed(0)
    weight = torch.randn(64, 32, dtype=torch.bfloat16)
    packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True, blocksize=64)
    assert state.nested and {"absmax", "state2", "offset", "blocksize", "quant_type", "shape"} <= set(vars(state))
    ours = fused_lora._dequantize(packed, state, fused_lora.block_scales(state), torch.bfloat16)
    assert torch.equal(ours, bnb_functional.dequantize_4bit(packed, state))


def test_trainer_settings_that_training_trainer_renames_or_sets() -> None:
    """training/trainer.py passes gradient_checkpointing and warmup_ratio under transformers 5's names, asks
    accelerate for non-blocking copies, and counts non-padding tokens; model/loading.py passes the bnb_4bit_*
    settings by BitsAndBytesConfig's own names."""
    from transformers import BitsAndBytesConfig, TrainingArguments
    from transformers.trainer_pt_utils import AcceleratorConfig

    from saudial.config.settings import Settings
    from saudial.training.trainer import RENAMED, SFT_FIELDS

    assert set(RENAMED.values()) <= SFT_FIELDS
    args = TrainingArguments(output_dir="/nonexistent", warmup_steps=0.03, use_cpu=True, report_to=[])
    assert args.get_warmup_steps(100) == 3, "warmup_steps below 1 is no longer a ratio: RENAMED['warmup_ratio']"
    assert "non_blocking" in {f.name for f in dataclasses.fields(AcceleratorConfig)}
    assert "non_padding" in inspect.getsource(TrainingArguments)  # include_num_input_tokens_seen's value
    bnb_names = {name for name in Settings.model_fields if name.startswith("bnb_4bit_")}
    assert bnb_names <= set(params(BitsAndBytesConfig.__init__))


def test_trl_prepares_prompt_completion_records_as_examples_does(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """data/examples.prepare tokenizes, labels and cuts the records itself, and training/trainer.py tells TRL to
    skip its own preparation of them: the records must be what TRL's preparation makes of the same rows."""
    from saudial.data.examples import prepare, split, to_prompt_completion
    from saudial.data.workbook import load

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    dataset = load(workbook)
    parts = split(dataset.rows.head(60), 0.1, 0)
    # A prompt that fills max_length (TRL drops the record: no learned token left), and rows it cuts.
    long_row = parts.train.iloc[[0]].assign(english=" ".join(["word"] * 200))
    parts.train = pd.concat([parts.train, long_row], ignore_index=True)
    max_length = 80  # the prompts here run 52-76 tokens, whole records 59-108
    ours, _, summary = prepare(dataset, parts, tokenizer, max_length)
    args = SFTConfig(
        output_dir=str(tmp_path), max_length=max_length, use_cpu=True, report_to=[], completion_only_loss=True
    )
    trl_prepared = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        train_dataset=to_prompt_completion(parts.train),
        processing_class=tokenizer,
    ).train_dataset
    assert trl_prepared is not None
    assert list(ours["input_ids"]) == list(trl_prepared["input_ids"])
    assert list(ours["labels"]) == list(trl_prepared["labels"])
    assert 0 < len(ours) < len(parts.train)  # the long prompt's record (and any like it) dropped by both
    assert summary["train_tokens"]["truncated_at_max_length"] >= 2  # and some are cut by both


@pytest.mark.parametrize("template", ["lfm2", "lfm2.5"])
def test_token_ids_are_the_tokenizers_own_call(template: str, tmp_path: Path) -> None:
    """data/examples.token_ids reads the fast tokenizer's backend as transformers' call sets it up: the ids must be
    the call's, also where an earlier call left truncation and padding set in the backend, and for a tokenizer that
    splits its special tokens' text."""
    from saudial.data.examples import token_ids
    from saudial.devtools import tiny

    tokenizer = AutoTokenizer.from_pretrained(tiny.build(tmp_path / "model", rows=60, template=template))
    eos = tokenizer.eos_token
    texts = [
        "### Instruction:\nTranslate the following English text to Saudi Dialect (Najdi).\n\n### Response:\n",
        f"Where is the market?{eos}",
        f"وين السوق؟ {eos} and after it{eos}",  # the end-of-text token in the middle and at the end
        "",
        "  spaces,\ttabs\nand lines  ",
    ]
    assert token_ids(tokenizer, texts) == tokenizer(texts)["input_ids"]
    tokenizer(texts, truncation=True, max_length=3, padding="max_length")  # leaves both set in the backend
    assert tokenizer.backend_tokenizer.truncation is not None and tokenizer.backend_tokenizer.padding is not None
    tokenizer.backend_tokenizer.encode_special_tokens = True  # the call sets it back from split_special_tokens
    ids = token_ids(tokenizer, texts)
    assert ids == tokenizer(texts)["input_ids"] and max(map(len, ids)) > 3
    splitting = AutoTokenizer.from_pretrained(tmp_path / "model", split_special_tokens=True)
    ids = token_ids(splitting, texts)
    assert ids == splitting(texts)["input_ids"] and ids != tokenizer(texts)["input_ids"]


def test_bitsandbytes_still_compiles_at_import() -> None:
    """config/runtime.defer_bitsandbytes_compile exists because importing bitsandbytes calls torch.compile (fresh
    process), which imports TorchInductor."""
    code = (
        "import sys, torch\n"
        "calls, compile_now = [], torch.compile\n"
        "torch.compile = lambda *a, **k: calls.append(k) or compile_now(*a, **k)\n"
        "import bitsandbytes\n"
        "print(len(calls), 'torch._inductor.compile_fx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[-2]) > 0 and out[-1] == "True", (
        "importing bitsandbytes no longer compiles: drop config/runtime.defer_bitsandbytes_compile"
    )


def test_bitsandbytes_imported_without_torchinductor_compiles_on_first_call() -> None:
    """With saudial's import hook (cli.main installs it first), importing PEFT, which imports bitsandbytes, leaves
    TorchInductor out and torch.compile as it was; a function bitsandbytes wrapped still computes its values,
    compiled by its first call (fresh process)."""
    code = (
        "import sys\n"
        "from saudial.config.runtime import defer_bitsandbytes_compile\n"
        "defer_bitsandbytes_compile()\n"
        "import torch\n"
        "compile_now = torch.compile\n"
        "import peft\n"
        "from bitsandbytes.backends.default import ops\n"
        "print('torch._inductor.compile_fx' in sys.modules, torch.compile is compile_now)\n"
        "torch.manual_seed(0)\n"
        "code, absmax = torch.linspace(-1, 1, 256), torch.rand(4) + 0.5\n"
        "A = torch.randint(0, 256, (4 * 64,), dtype=torch.uint8)\n"
        "out = ops._dequantize_blockwise_compute(A, absmax, code, 64, torch.float32)\n"
        "expected = (code[A.long()].reshape(4, 64) * absmax[:, None]).reshape(-1)\n"
        "print(torch.equal(out, expected), 'torch._inductor.compile_fx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    imported, computed = out.strip().splitlines()[-2:]
    assert imported == "False True"  # no Inductor at import; torch.compile restored
    assert computed == "True True"  # the same values, compiled on first use


def test_a_deferred_compile_that_fails_runs_the_function_as_it_is_without_retrying() -> None:
    """As bitsandbytes' `_try_torch_compile` falls back when torch.compile fails at import (where Dynamo cannot
    run), the deferred compile falls back once at the first call, with the options bitsandbytes gave."""
    from saudial.config.runtime import compile_on_first_call

    tried: list[dict[str, Any]] = []

    def compile_fails(fn: Any, **options: Any) -> Any:
        tried.append(options)
        raise RuntimeError("Dynamo is not supported here")

    deferred = compile_on_first_call(compile_fails)(dynamic=False)(lambda x: x + 1)
    assert (deferred(1), deferred(2)) == (2, 3)
    assert tried == [{"dynamic": False}]


@pytest.mark.parametrize("user_set", [False, True], ids=["unset", "set by the user"])
def test_compiled_kernel_caches_are_in_hf_home(tmp_path: Path, user_set: bool) -> None:
    """config/runtime.configure_caches (cli.main runs it first) puts Triton's and TorchInductor's caches in HF_HOME
    (the image's named volume), and Triton and Inductor read their variables when they compile, after saudial set
    them; a place the user set is kept. A fresh process: huggingface_hub reads HF_HOME when it is imported."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env["HF_HOME"] = str(tmp_path / "hf")
    if user_set:
        env |= {"TRITON_CACHE_DIR": str(tmp_path / "mine-t"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine-i")}
    # In cli.main's order: before torch is imported (importing Inductor sets its variable to /tmp's default).
    code = (
        "import json\n"
        "from saudial.config.runtime import configure_caches\n"
        "configure_caches()\n"
        "import triton.knobs\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "print(json.dumps([triton.knobs.cache.dir, cache_dir()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    triton_dir, inductor_dir = json.loads(out.strip().splitlines()[-1])
    if user_set:
        assert (triton_dir, inductor_dir) == (str(tmp_path / "mine-t"), str(tmp_path / "mine-i"))
    else:
        assert (triton_dir, inductor_dir) == (str(tmp_path / "hf" / "triton"), str(tmp_path / "hf" / "torch-compile"))


def test_safetensors_still_writes_its_files_owner_only(tmp_path: Path) -> None:
    """rundir/modes.py gives a finished run's safetensors files the umask's mode because safetensors ignores it."""
    from safetensors.torch import save_file

    from saudial.rundir import modes

    if modes.umask() & 0o044 == 0o044:  # the umask itself keeps files owner-only: nothing to tell apart
        pytest.skip("a umask that keeps group and others from reading")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text("{}")
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == modes.UPSTREAM_MODE
    assert (tmp_path / "w.json").stat().st_mode & 0o777 != modes.UPSTREAM_MODE


TOKENIZERS_PROBE = """
import multiprocessing, os, sys
os.environ.pop("TOKENIZERS_PARALLELISM", None)
from saudial.config import runtime
runtime.serial_tokenizers()
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = ["Please bring my old golden map to the quiet castle with the brave horse now."] * 4000
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
tokenizer(texts)
serial = threads()
with runtime.parallel_tokenizers():
    tokenizer(texts)
parallel = threads()
def child(queue):
    queue.put(len(tokenizer(texts)["input_ids"]))
context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
process.join(60)
variable = os.environ.get("TOKENIZERS_PARALLELISM", "unset")
print(before, serial, parallel, variable, process.exitcode, queue.get(timeout=5))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not Path("/proc/self/task").is_dir(), reason="needs 2 cores, Linux")
def test_tokenizers_reads_its_parallelism_variable_each_call_and_a_fork_after_the_pool_still_tokenizes(
    tiny_model: Path,
) -> None:
    """config/runtime.parallel_tokenizers: the fast tokenizer's thread pool starts only for the calls inside it
    (`tokenizers` reads the variable on every call), the variable is "false" again after them, and a process forked
    after the pool ran (the training loader's worker) tokenizes, with no message from `tokenizers`."""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    done = subprocess.run(
        [sys.executable, "-c", TOKENIZERS_PROBE, str(tiny_model)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before, serial, parallel, variable, exit_code, count = done.stdout.splitlines()[-1].split()
    assert int(serial) == int(before), "a serial call started threads"
    assert int(parallel) > int(serial), "the parallel call started no thread pool"
    assert (variable, exit_code, count) == ("false", "0", "4000")
    assert "tokenizers" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


def test_parallel_tokenizers_keeps_the_users_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from saudial.config import runtime

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setattr(runtime, "_serial_by_saudial", False)  # set by the user, not by serial_tokenizers
    runtime.serial_tokenizers()
    with runtime.parallel_tokenizers():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    runtime.serial_tokenizers()  # unset: saudial's "false", which the batched calls lift
    with runtime.parallel_tokenizers():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
