"""The Ollama `Modelfile` and the README of an export folder: how to run the files with llama.cpp, Ollama, LM
Studio (and the adapter with vLLM).

A translate adapter was trained on saudial's own prompt (data/prompts.build_prompt), so the Modelfile's
TEMPLATE rebuilds that prompt: the user's message is the English text and the system prompt is the
dialect (`SYSTEM` holds the first dialect the adapter was trained on; `/set system Hijazi` in `ollama run`,
or `"system"` in the API, picks another). A chat adapter gets the model's ChatML-shaped chat template as a
Go template over `.Messages`. Ollama adds the BOS token itself (the GGUF says the tokenizer adds one), as
transformers did in training. The parameters are the ones evaluation generated with: greedy (temperature 0),
the repetition penalty over the whole context, the same new-token limit; generation stops at EOS.
"""

from __future__ import annotations

from typing import Any

from saudial.config.settings import Settings
from saudial.data.prompts import build_prompt

SYSTEM_FIELD, PROMPT_FIELD = "{{ .System }}", "{{ .Prompt }}"
# LFM2's chat template (ChatML-shaped, BOS first) as an Ollama Go template over the conversation.
CHAT_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def translate_template() -> str:
    """build_prompt with the dialect and the English text left as Ollama's fields (no context line)."""
    return build_prompt(SYSTEM_FIELD, PROMPT_FIELD)


def chat_template_matches(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> bool:
    """Whether CHAT_TEMPLATE renders what the tokenizer's own chat template renders (after its BOS)."""
    bos = tokenizer.bos_token or ""
    for messages in conversations:
        ours = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        ours += "<|im_start|>assistant\n"
        theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if theirs != bos + ours:
            return False
    return True


def quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile block cannot hold """')
    return f'"""{text}"""'


def modelfile(
    settings: Settings, gguf_name: str, task: str, stops: list[str], dialect: str, chat_template: bool, lora: str = ""
) -> str:
    lines = [
        "# Ollama Modelfile written by `saudial export`: `ollama create NAME -f Modelfile`, then `ollama run NAME`.",
    ]
    if task == "translate":
        lines += [
            "# The message is the English text; the system prompt is the dialect (Najdi, Hijazi, Eastern, Southern):",
            '# `/set system Hijazi` in `ollama run`, or "system" in the API. TEMPLATE is saudial\'s training prompt.',
        ]
    if lora:
        lines += [
            f"# {gguf_name}: the base model as GGUF ({settings.model_name_or_path}), the adapter's base.",
            f"FROM ./{gguf_name}",
            f"ADAPTER ./{lora}",
        ]
    else:
        lines.append(f"FROM ./{gguf_name}")
    if task == "translate":
        lines += [f"TEMPLATE {quoted(translate_template())}", f"SYSTEM {quoted(dialect)}"]
    elif chat_template:
        lines.append(f"TEMPLATE {quoted(CHAT_TEMPLATE)}")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    if settings.do_sample:
        lines += [f"PARAMETER temperature {settings.temperature}", f"PARAMETER min_p {settings.min_p}"]
    else:
        lines.append("PARAMETER temperature 0")
    lines += [
        f"PARAMETER repeat_penalty {settings.repetition_penalty}",
        "PARAMETER repeat_last_n -1",
        f"PARAMETER num_predict {settings.max_new_tokens}",
        f"PARAMETER num_ctx {settings.max_length + settings.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def readme(
    files: list[str], default: str, task: str, adapter_dir: str, base: str, lora: str = "", checks: str = ""
) -> str:
    """The export folder's README.md: what each file is and how to run it."""
    prompt = build_prompt("Najdi", "Open the old door.")
    example = prompt.replace("\n", "\\n") if task == "translate" else "Where is the market?"
    run = f"-m {default}" + (f" --lora {lora}" if lora else "")
    # A translate adapter reads saudial's own prompt as raw text (no conversation); a chat adapter's replies come
    # through the chat template in the GGUF, which llama-cli applies in conversation mode (-cnv; -st: one turn).
    mode = "-no-cnv" if task == "translate" else "-cnv -st"
    hint = (
        "The prompt must be saudial's own (`saudial translate` builds it; the Modelfile's TEMPLATE shows it)."
        if task == "translate"
        else "llama-cli applies the chat template stored in the GGUF in conversation mode (`-cnv`; `-st` answers one "
        "turn and exits; `-sys TEXT` adds a system prompt); without `-st` it goes on reading turns."
    )
    listing = "\n".join(f"- `{name}`" for name in files)
    return f"""# GGUF export of {adapter_dir}

Base model {base} with the saudial adapter, for llama.cpp, Ollama and LM Studio.

{listing}

Each file was loaded by llama.cpp when it was written and compared with transformers on the same merged
model (token ids, logits, greedy tokens); the results are in `run_manifest.json` (key `export`).
{checks}
## llama.cpp

```bash
llama-cli {run} {mode} --temp 0 --repeat-penalty 1.05 -p "{example}"
```

{hint}

## Ollama

```bash
ollama create saudial -f Modelfile
ollama run saudial "Open the old door."
```

## LM Studio

Load `{default}` (My Models, or `lms import {default}`); for a translate adapter set the prompt template to
the Modelfile's TEMPLATE (the dialect in place of `{{{{ .System }}}}`), temperature 0.

## vLLM (not run here)

vLLM serves the adapter itself on the unquantized base, without GGUF (this command was not run by saudial):

```bash
vllm serve {base} --enable-lora --lora-modules saudial={adapter_dir}
```
"""
