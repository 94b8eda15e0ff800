"""LFM2 to GGUF, written with llama.cpp's own `gguf` package: its LFM2 tensor-name table, its metadata keys
and its tokenizer reader (`gguf.SpecialVocab`: merges, special tokens, BOS/EOS flags, the chat template).

No PyPI package ships llama.cpp's converter (`convert_hf_to_gguf.py` is left out of llama-cpp-python's
wheel and pins transformers 4.57), so this module writes what that converter's LFM2 class writes, read
from its source (conversion/lfm2.py and base.py of llama.cpp as vendored by llama-cpp-python 0.3.36):

- the hyper-parameters llama.cpp's `llama_model_lfm2` reads: block count, context, embedding and feed-forward
  length (the real MLP width, taken from the `w1` weight, which is what LFM2's auto-adjusted `block_ff_dim`
  becomes), heads, KV heads per layer (0 for a short-conv layer: that is how llama.cpp tells the two kinds
  apart), RoPE base, RMS norm epsilon, vocabulary size and the short conv's `L_cache`;
- every tensor under its GGUF name, in float32 (`general.file_type` ALL_F32): the depthwise conv kernel
  squeezed to 2-D as llama.cpp's `ssm_conv` wants it, the tied output head left out (llama.cpp reuses
  `token_embd`). Every other type (f16, bf16, q8_0, q4_k_m, ...) is then made from this file by llama.cpp's
  own quantize (export/llama.py), which also decides which tensors stay in float32;
- the byte-level BPE tokenizer: tokens by id with their types, merges, special ids, whether BOS is added, the
  chat template, and the pre-tokenizer llama.cpp must use (`pre_tokenizer`).

A LoRA adapter (PEFT) becomes a GGUF adapter the same way as llama.cpp's `convert_lora_to_gguf.py` writes it:
`general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, and `<tensor>.lora_a` / `.lora_b` pairs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from saudial.errors import ConfigError

ARCH = gguf.MODEL_ARCH.LFM2
logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # it logs each file it opens at INFO
# llama.cpp identifies a BPE pre-tokenizer by the token ids of this text (convert_hf_to_gguf.py,
# get_vocab_base_pre): the text, and the hashes of the LFM2 tokenizers it lists, are llama.cpp's.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️"
    " (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 33333"
    "33 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ -----"
    "-======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, '"
    "D you like some tea? We'Ve a'lL"
)
KNOWN_HASHES = {
    "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51": "lfm2",  # LiquidAI/LFM2.5-350M
    "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7": "lfm2",  # LiquidAI/LFM2.5-8B-A1B
}
# The split pattern of Llama 3's pre-tokenizer, which LFM2's tokenizer uses (llama.cpp: "lfm2" = LLAMA3).
LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def pre_tokenizer(tokenizer: Any, tokenizer_json: dict[str, Any]) -> str:
    """The name llama.cpp gives this tokenizer's pre-tokenizer (`tokenizer.ggml.pre`).

    First llama.cpp's own identification (the hash of the ids of CHECK_TEXT); else the tokenizer.json's
    pre-tokenizer read directly: GPT-2's byte-level regex, or Llama 3's split pattern. Anything else is
    refused: a guess here is the "gibberish after export" users of other trainers meet.
    """
    ids = tokenizer.encode(CHECK_TEXT)
    if name := KNOWN_HASHES.get(sha256(str(ids).encode()).hexdigest()):
        return name
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    split = kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True)
    if split and (parts[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT:
        return "lfm2"
    raise ConfigError(
        f"the tokenizer's pre-tokenizer ({', '.join(str(k) for k in kinds) or 'none'}) is not one saudial can "
        "name for llama.cpp (GPT-2 byte-level, or LFM2's Llama-3 split): export an adapter of an LFM2 base model"
    )


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types (as llama.cpp's converter types them): special added tokens are
    CONTROL, other added tokens USER_DEFINED, ids the tokenizer does not use UNUSED placeholders."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].special or (by_id[i].startswith("<|") and by_id[i].endswith("|>"))
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def hyper_parameters(writer: gguf.GGUFWriter, config: Any, n_ff: int) -> None:
    """The keys llama.cpp's LFM2 loader reads (src/models/lfm2.cpp and the shared loader)."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv([config.num_key_value_heads if t != "conv" else 0 for t in config.layer_types])
    if rope_theta is not None:
        writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_shortconv_l_cache(config.conv_L_cache)


def tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    tokenizer_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise ConfigError("the tokenizer is not a byte-level BPE (LFM2's kind): saudial cannot write it to GGUF")
    tokens, types = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer, tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)


def write(path: Path, writer: gguf.GGUFWriter) -> None:
    """Header, metadata and tensors to `path`, flushed to the disk (a full disk fails here, not later)."""
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    assert writer.fout is not None
    for out in writer.fout:
        out.flush()
        os.fsync(out.fileno())
    writer.close()


def model_tensors(state: dict[str, torch.Tensor], n_layers: int, tied: bool) -> Iterable[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of an `Lfm2ForCausalLM` state dict."""
    names = gguf.get_tensor_name_map(ARCH, n_layers)
    for name, tensor in state.items():
        if name == "lm_head.weight" and tied:
            continue  # tied to the embeddings: llama.cpp falls back to token_embd
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ConfigError(f"the merged model has a tensor llama.cpp's LFM2 has no place for: {name}")
        data = tensor.detach().to(torch.float32)
        if ".conv.conv." in name:
            data = data.squeeze(1)  # (channels, 1, L_cache) -> (channels, L_cache): llama.cpp's ssm_conv kernel
        yield new, data.contiguous().numpy()


def write_model(path: Path, model: Any, tokenizer: Any, tokenizer_dir: Path, name: str) -> None:
    """The merged `Lfm2ForCausalLM` (any float dtype) as a float32 GGUF at `path`."""
    config = model.config
    state = model.state_dict()
    n_ff = int(state["model.layers.0.feed_forward.w1.weight"].shape[0])
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[ARCH])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    hyper_parameters(writer, config, n_ff)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer_metadata(writer, tokenizer, tokenizer_dir, config.vocab_size)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for new, data in model_tensors(state, config.num_hidden_layers, tied):
        writer.add_tensor(new, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    write(path, writer)


def lora_scale_alpha(adapter_config: dict[str, Any]) -> float:
    """The alpha to write so that llama.cpp's scale (alpha / rank) is PEFT's (alpha / r, or alpha / sqrt(r)
    with rsLoRA)."""
    r, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def lora_tensors(
    weights: dict[str, torch.Tensor], n_layers: int, refuse: Callable[[str], ConfigError]
) -> Iterable[tuple[str, np.ndarray]]:
    """PEFT's `...<module>.lora_A.weight` / `.lora_B.weight` as llama.cpp's `<gguf name>.lora_a` / `.lora_b`."""
    names = gguf.get_tensor_name_map(ARCH, n_layers)
    for key in sorted(weights):
        for marker, suffix in ((".lora_A.weight", ".lora_a"), (".lora_B.weight", ".lora_b")):
            if key.endswith(marker):
                base = key.removeprefix("base_model.model.").removesuffix(marker) + ".weight"
                new = names.get_name(base, try_suffixes=(".weight",))
                if new is None:
                    raise refuse(f"it adapts {base.removesuffix('.weight')}, which llama.cpp's LFM2 has no LoRA for")
                yield new + suffix, weights[key].detach().to(torch.float32).contiguous().numpy()
                break
        else:
            raise refuse(f"it holds {key}, which is not a LoRA A/B matrix (DoRA, or modules_to_save)")


def write_lora(path: Path, adapter_dir: Path, config: Any, name: str) -> None:
    """The PEFT adapter in `adapter_dir` as a GGUF LoRA at `path`, for llama.cpp's `--lora`."""
    from safetensors.torch import load_file

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"--adapter {str(adapter_dir)!r} cannot be written as a GGUF LoRA: {why}")

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if adapter_config.get("use_dora"):
        raise refuse("it is a DoRA adapter, which llama.cpp cannot apply; export the merged model instead")
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[ARCH])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_name(name)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora_scale_alpha(adapter_config))
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    for new, data in lora_tensors(weights, config.num_hidden_layers, refuse):
        writer.add_tensor(new, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    write(path, writer)
