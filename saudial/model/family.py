"""The LFM2 family as saudial knows it: each published text model, its size, LiquidAI's status for it, and its
shape as published in its config.json.

Status (current or deprecated, and the replacement LiquidAI names) was read on STATUS_READ from LiquidAI's
documentation: Liquid4All/docs `lfm/help/deprecations.mdx` (commit 3b12c7e) and `lfm/models/complete-library.mdx`
(commit 1200120). Check it again before relying on it: LiquidAI moves models to the deprecation list as
newer checkpoints replace them.

Shapes are the published config.json values (never estimated); a model whose config.json could not be found
has no shape (`shape=None`) and saudial reports only its name and status. Where each figure comes from is
written next to it. `Shape.ff_dim` is the MLP width the model really has: with `block_auto_adjust_ff_dim`
transformers' Lfm2MLP takes int(2 * block_ff_dim / 3), times `block_ffn_dim_multiplier` (1.0), rounded up to
a multiple of `block_multiple_of` (256). tests/test_family.py builds each shape on the meta device and checks
its parameter count against the count LiquidAI publishes where there is one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

STATUS_READ = "2026-12-06"
ARCHITECTURE = "Lfm2ForCausalLM"  # the one architecture saudial trains (transformers' own LFM2 code)


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    layers: int
    attention_layers: tuple[int, ...]  # indices of the full_attention layers; the others are short-conv blocks
    heads: int
    kv_heads: int
    block_ff_dim: int  # config.json's value
    auto_adjust_ff_dim: bool  # config.json's block_auto_adjust_ff_dim
    vocab_size: int = 65536
    tie_embeddings: bool = True  # no published LFM2 config.json sets it; Lfm2Config's default (tie_embedding=True)

    @property
    def ff_dim(self) -> int:
        """The MLP width of the built model (transformers' Lfm2MLP)."""
        if not self.auto_adjust_ff_dim:
            return self.block_ff_dim
        width = int(2 * self.block_ff_dim / 3)
        return 256 * ((width + 255) // 256)

    def config_kwargs(self) -> dict[str, Any]:
        """Lfm2Config arguments of this shape (random-weight models of the real size: bench/family.py, tests)."""
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.block_ff_dim,
            block_auto_adjust_ff_dim=self.auto_adjust_ff_dim,
            block_multiple_of=256,
            block_ffn_dim_multiplier=1.0,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            layer_types=["full_attention" if i in self.attention_layers else "conv" for i in range(self.layers)],
            conv_L_cache=3,
            conv_bias=False,
            norm_eps=1e-5,
            rope_theta=1e6,
            tie_word_embeddings=self.tie_embeddings,
            max_position_embeddings=128000,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=7,
        )

    def describe(self) -> str:
        conv = self.layers - len(self.attention_layers)
        tied = "tied" if self.tie_embeddings else "untied"
        return (
            f"hidden {self.hidden_size}, {self.layers} layers ({conv} short-conv + {len(self.attention_layers)} "
            f"attention at {','.join(map(str, self.attention_layers))}), {self.heads} heads / {self.kv_heads} kv, "
            f"MLP {self.ff_dim}, vocabulary {self.vocab_size:,}, {tied} embeddings"
        )


SIXTEEN = (2, 5, 8, 10, 12, 14)  # the 16-layer sizes' attention layers (every published 16-layer config.json)

# LFM2-350M. config.json as published (transformers 4.54.0.dev0, copied unchanged in
# huggingface.co/Thorge-AI/lfm2-web-runtime-weights Models/350M/config.json): hidden_size 1024, num_hidden_layers 16,
# layer_types with full_attention at 2,5,8,10,12,14, num_attention_heads 16, num_key_value_heads 8, block_ff_dim
# 6656 with block_auto_adjust_ff_dim true, vocab_size 65536. The effective MLP width 4608 is also in
# huggingface.co/florianvoss/LFM2-350M_reducecache devkit/vlm_config.json (models--LiquidAI--LFM2-350M).
# Parameters 354,483,968: the LFM2 model card's "Model details" table (LiquidAI/LFM2-* README, all four sizes).
LFM2_350M = Shape(1024, 16, SIXTEEN, 16, 8, 6656, True)
# LFM2-700M. huggingface.co/LiquidAI/LFM2-700M/blob/refs/pr/8/config.json (LiquidAI's repository): hidden_size
# 1536, 16 layers, full_attn_idxs 2,5,8,10,12,14, 24 heads, 8 kv heads, block_ff_dim 10240 auto-adjusted (6912:
# the feed_forward_length of the GGUF conversion, ollama.com/jewelzufo/lfm2-700-gguf), vocab_size 65536.
# Parameters 742,489,344: the LFM2 model card's table.
LFM2_700M = Shape(1536, 16, SIXTEEN, 24, 8, 10240, True)
# LFM2-1.2B. ../shared/notes/field-notes.md ("LFM2-1.2B") and
# huggingface.co/FastFlowLM/LFM2-1.2B-NPU2 config.json: hidden_size 2048, 16 layers, full_attn_idxs
# 2,5,8,10,12,14, 32 heads, 8 kv heads, block_ff_dim 12288 auto-adjusted (8192), vocab_size 65536.
# Parameters 1,170,340,608: the LFM2 model card's table and the field notes.
LFM2_1_2B = Shape(2048, 16, SIXTEEN, 32, 8, 12288, True)
# LFM2-2.6B. huggingface.co/LiquidAI/LFM2-2.6B-Transcript-ONNX config.json (LiquidAI's fine-tune of LFM2-2.6B, same
# shape): hidden_size 2048, num_hidden_layers 30, layer_types with full_attention at 2,5,9,13,17,21,24,27, 32
# heads, 8 kv heads, block_ff_dim 10752 with block_auto_adjust_ff_dim false, vocab_size 65536. The base model's
# own figures agree: ollama.com/sam860/LFM2:2.6b-Q8_0 (GGUF of LFM2-2.6B: block_count 30, embedding_length 2048,
# feed_forward_length 10752, head_count 32, head_count_kv 8, vocab_size 65536) and
# huggingface.co/florianvoss/LFM2-2.6B_logits devkit/vlm_config.json (model_name LFM2-2.6B: the same, and the same
# layer_types as far as the stored copy shows them, to layer 23). The LFM2 model card's table: 2,569,272,320
# parameters, 30 layers (22 conv + 8 attn), vocabulary 65,536.
LFM2_2_6B = Shape(2048, 30, (2, 5, 9, 13, 17, 21, 24, 27), 32, 8, 10752, False)
# LFM2.5-1.2B. huggingface.co/Open4bits/LFM2.5-1.2B-Instruct-Quantized nf4/config.json (a 4-bit copy of
# LiquidAI/LFM2.5-1.2B-Instruct): hidden_size 2048, 16 layers, full_attention at 2,5,8,10,12,14, 32 heads, 8 kv
# heads, block_ff_dim 12288 auto-adjusted, vocab_size 65536; the GGUF conversion
# (ollama.com/huihui_ai/lfm2.5-abliterated:1.2b-instruct-q8_0) has ffn tensors of [8192, 2048]. LiquidAI's card:
# 1.17B parameters, 16 layers (10 conv + 6 GQA), vocabulary 65,536. The same shape as LFM2-1.2B. Base, Thinking
# and JP are the other checkpoints of LiquidAI's LFM2.5-1.2B collection (Instruct and Thinking are post-trained
# from Base); their own config.json was not found, and they are given this size's shape.
LFM2_5_1_2B = LFM2_1_2B


@dataclass(frozen=True)
class Base:
    name: str  # the Hub id
    family: str  # LFM2 or LFM2.5
    size: str
    status: str  # "current" or "deprecated" (STATUS_READ)
    shape: Shape | None
    replacement: str = ""  # what LiquidAI recommends instead of a deprecated model
    architecture: str = ARCHITECTURE
    use: str = ""  # what it is for, in a few words (README's choice of base)

    @property
    def short(self) -> str:
        return self.name.split("/", 1)[1]

    def status_line(self) -> str:
        line = f"{self.status} (LiquidAI's documentation, read {STATUS_READ})"
        if self.replacement:
            line += f"; LiquidAI recommends {self.replacement} instead"
        return line


MOE = "Lfm2MoeForCausalLM"
FAMILY: dict[str, Base] = {
    b.name.lower(): b
    for b in (
        Base("LiquidAI/LFM2-350M", "LFM2", "350M", "deprecated", LFM2_350M, "LiquidAI/LFM2.5-350M", use="phones"),
        Base("LiquidAI/LFM2-700M", "LFM2", "700M", "current", LFM2_700M, use="phones, a step up from 350M"),
        Base(
            "LiquidAI/LFM2-1.2B",
            "LFM2",
            "1.2B",
            "deprecated",
            LFM2_1_2B,
            "LiquidAI/LFM2.5-1.2B-Instruct",
            use="saudial's default: reproducing the seed's run",
        ),
        Base("LiquidAI/LFM2-2.6B", "LFM2", "2.6B", "deprecated", LFM2_2_6B, "LiquidAI/LFM2.5-2.6B", use="more quality"),
        Base("LiquidAI/LFM2.5-1.2B-Instruct", "LFM2.5", "1.2B", "current", LFM2_5_1_2B, use="new translate/chat runs"),
        Base("LiquidAI/LFM2.5-1.2B-Base", "LFM2.5", "1.2B", "current", LFM2_5_1_2B, use="a plain pretrained start"),
        Base("LiquidAI/LFM2.5-1.2B-Thinking", "LFM2.5", "1.2B", "current", LFM2_5_1_2B, use="reasoning (<think>)"),
        Base("LiquidAI/LFM2.5-1.2B-JP", "LFM2.5", "1.2B", "current", LFM2_5_1_2B, use="Japanese"),
        # No config.json of these was found: no shape (`saudial check` reads it from the model itself).
        Base("LiquidAI/LFM2.5-230M", "LFM2.5", "230M", "current", None, use="extraction on the smallest devices"),
        Base("LiquidAI/LFM2.5-350M", "LFM2.5", "350M", "current", None, use="phones"),
        Base("LiquidAI/LFM2.5-2.6B", "LFM2.5", "2.6B", "current", None, use="more quality"),
        # Mixture-of-experts models: another architecture, which saudial does not train.
        Base("LiquidAI/LFM2-8B-A1B", "LFM2", "8B-A1B", "deprecated", None, "LiquidAI/LFM2.5-8B-A1B", MOE),
        Base("LiquidAI/LFM2.5-8B-A1B", "LFM2.5", "8B-A1B", "current", None, architecture=MOE),
        Base("LiquidAI/LFM2-24B-A2B", "LFM2", "24B-A2B", "current", None, architecture=MOE),
    )
}


def lookup(name: str) -> Base | None:
    """The table's entry for a Hub id (case-insensitive), or for a local folder named like one (the folder
    `snapshot_download(..., local_dir="LFM2.5-1.2B-Instruct")` writes)."""
    key = name.strip().rstrip("/").lower()
    if key in FAMILY:
        return FAMILY[key]
    folder = key.rsplit("/", 1)[-1]
    return next((b for b in FAMILY.values() if b.short.lower() == folder), None)


def closest(name: str, count: int = 3) -> list[str]:
    """The table's names nearest to `name` (difflib), for a name that is not in it."""
    names = {b.short.lower(): b.name for b in FAMILY.values()}
    found = difflib.get_close_matches(name.rsplit("/", 1)[-1].lower(), list(names), n=count, cutoff=0.6)
    return [names[n] for n in found]


def by_shape(config: dict[str, object]) -> list[Base]:
    """The table's models whose published shape is that of `config` (a config.json's values)."""
    shape = shape_of(config)
    return [b for b in FAMILY.values() if b.shape is not None and b.shape == shape]


def shape_of(config: dict[str, object]) -> Shape | None:
    """The Shape of an LFM2 config.json (as transformers reads it), or None where a field is missing."""
    try:
        layers = int(config["num_hidden_layers"])  # type: ignore[call-overload]
        types = config.get("layer_types")
        if isinstance(types, list):
            attention = tuple(i for i, t in enumerate(types) if t == "full_attention")
        else:
            attention = tuple(int(i) for i in config.get("full_attn_idxs") or ())  # type: ignore[attr-defined]
        tie = config.get("tie_word_embeddings", config.get("tie_embedding", True))
        return Shape(
            hidden_size=int(config["hidden_size"]),  # type: ignore[call-overload]
            layers=layers,
            attention_layers=attention,
            heads=int(config["num_attention_heads"]),  # type: ignore[call-overload]
            kv_heads=int(config["num_key_value_heads"]),  # type: ignore[call-overload]
            block_ff_dim=int(config.get("block_ff_dim") or config["intermediate_size"]),  # type: ignore[call-overload]
            auto_adjust_ff_dim=bool(config.get("block_auto_adjust_ff_dim", True)),
            vocab_size=int(config["vocab_size"]),  # type: ignore[call-overload]
            tie_embeddings=bool(tie),
        )
    except (KeyError, TypeError, ValueError):
        return None
