"""A tiny LFM2 and tokenizer, built locally: for tests, `make demo` and the container smoke test.

The model is a real `Lfm2ForCausalLM` (both block kinds: short-conv and attention layers, SwiGLU
MLP, tied embeddings) with small dimensions and random weights; the tokenizer is a byte-level BPE
trained on the synthetic SauDial text (Arabic included) with LFM2's special tokens. Both are saved
with `save_pretrained`, so whatever loads them goes through the normal `from_pretrained` path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Lfm2Config, Lfm2ForCausalLM, PreTrainedTokenizerFast

from saudial.devtools import synthetic

# LFM2's special tokens, at LFM2's ids for pad and bos (0, 1).
SPECIAL_TOKENS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A chat template of the shape LFM2 publishes (ChatML-like), written here from that format: BOS, the system
# prompt first, each turn as <|im_start|>role\n...<|im_end|>\n, and the assistant header as the generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A chat template of the shape LiquidAI publishes for LFM2.5 (its LEAP training templates), written here from that
# format: the same ChatML-like turns; tools listed in the system prompt between <|tool_list_start|> and
# <|tool_list_end|>; an assistant's tool calls as a Python list between <|tool_call_start|> and <|tool_call_end|>;
# a tool's answer as a `tool` turn between <|tool_response_start|> and <|tool_response_end|>; the `<think>` block
# kept only in the last assistant turn (earlier ones keep what follows `</think>`); and every assistant turn,
# its end-of-turn token included, inside {% generation %} markers, which TRL's assistant-only loss reads.
LFM25_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    '{%- set ns = namespace(system="", last=-1) -%}'
    '{%- if messages and messages[0]["role"] == "system" -%}'
    '{%- set ns.system = messages[0]["content"] -%}{%- set messages = messages[1:] -%}'
    "{%- endif -%}"
    "{%- if tools -%}"
    '{%- set ns.system = ns.system + ("\n" if ns.system else "") + "List of tools: <|tool_list_start|>" '
    '+ (tools | tojson) + "<|tool_list_end|>" -%}'
    "{%- endif -%}"
    '{%- if ns.system -%}{{- "<|im_start|>system\n" + ns.system + "<|im_end|>\n" -}}{%- endif -%}'
    '{%- for message in messages -%}{%- if message["role"] == "assistant" -%}{%- set ns.last = loop.index0 -%}'
    "{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}"
    '{{- "<|im_start|>" + message["role"] + "\n" -}}'
    '{%- set content = message["content"] or "" -%}'
    '{%- if message["role"] == "assistant" -%}'
    '{%- if loop.index0 != ns.last and "</think>" in content -%}'
    '{%- set content = (content.split("</think>") | last) | trim -%}'
    "{%- endif -%}"
    "{%- generation -%}"
    '{%- if message["tool_calls"] is defined and message["tool_calls"] -%}'
    '{{- "<|tool_call_start|>[" -}}'
    '{%- for call in message["tool_calls"] -%}'
    '{%- set f = call["function"] if call["function"] is defined else call -%}'
    '{{- ("" if loop.first else ", ") + f["name"] + "(" -}}'
    '{%- for key, value in f["arguments"].items() -%}'
    '{{- ("" if loop.first else ", ") + key + "=" + (value | tojson) -}}'
    "{%- endfor -%}"
    '{{- ")" -}}'
    "{%- endfor -%}"
    '{{- "]<|tool_call_end|>" -}}'
    "{%- endif -%}"
    '{{- content + "<|im_end|>" -}}'
    "{%- endgeneration -%}"
    '{{- "\n" -}}'
    '{%- elif message["role"] == "tool" -%}'
    '{{- "<|tool_response_start|>" + content + "<|tool_response_end|><|im_end|>\n" -}}'
    "{%- else -%}"
    '{{- content + "<|im_end|>\n" -}}'
    "{%- endif -%}"
    "{%- endfor -%}"
    '{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\n" -}}{%- endif -%}'
)
TEMPLATES = {"lfm2": CHAT_TEMPLATE, "lfm2.5": LFM25_CHAT_TEMPLATE}


def build_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    # Like LFM2's tokenizer: a BOS before every sequence.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(vocab_size: int, hidden_size: int = 64, layers: int = 4) -> Lfm2Config:
    # Attention at layer 2 of 4, short conv elsewhere: both block kinds, as in LFM2-1.2B's 6 of 16.
    layer_types = ["full_attention" if i % 4 == 2 else "conv" for i in range(layers)]
    return Lfm2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        block_auto_adjust_ff_dim=False,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=layer_types,
        conv_L_cache=3,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=4,
        tie_word_embeddings=True,
    )


def build(
    output: Path, rows: int = 400, seed: int = 0, hidden_size: int = 64, layers: int = 4, template: str = "lfm2"
) -> Path:
    """Write a tiny LFM2 + tokenizer into `output` (chat template: TEMPLATES[template]); returns it."""
    frame = synthetic.make_rows(rows, seed)
    texts = [str(v) for column in frame.columns[5:9] for v in frame[column].dropna()]
    texts += ["### Instruction:", "Translate the following English text to Saudi Dialect", "### Response:"]
    tokenizer = build_tokenizer(texts)
    tokenizer.chat_template = TEMPLATES[template]
    config = tiny_config(len(tokenizer), hidden_size, layers)
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = Lfm2ForCausalLM(config)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random LFM2 model and tokenizer.")
    parser.add_argument("output", type=Path)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--chat-template", choices=sorted(TEMPLATES), default="lfm2")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one shard of a few hundred kB: its progress bar is noise
    build(args.output, hidden_size=args.hidden_size, layers=args.layers, template=args.chat_template)
    print(f"wrote a tiny LFM2 to {args.output}")


if __name__ == "__main__":
    main()
