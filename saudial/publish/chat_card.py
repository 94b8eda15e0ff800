"""The parts of the model card (`card.py`) that differ for a chat adapter (SAUDIAL_TASK=chat): what it is,
what it was trained on (conversations, turns, per dialect), and how to prompt it with the tokenizer's own
chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TAGS = ["saudial", "lora", "qlora", "peft", "trl", "sft", "chat", "conversational", "arabic", "saudi-dialect", "lfm2"]
TASK_NAME = "Saudi-dialect chat (the last assistant turn of held-out conversations)"


def intro(method: str, base_link: str, data: dict[str, Any]) -> str:
    dialects = ", ".join(data.get("per_dialect") or {})
    return (
        f"A {method} chat adapter for {base_link}, trained with TRL's `SFTTrainer` by saudial on conversations"
        + (f" in Saudi dialects ({dialects})" if dialects else "")
        + ", formatted with the base model's own chat template; the loss is on the assistant turns only."
    )


def data_section(data: dict[str, Any]) -> str:
    if not data:
        return "See run_manifest.json."
    turns = data.get("turns") or {}
    roles = ", ".join(f"{role} {n}" for role, n in (turns.get("roles") or {}).items())
    lines = [
        f"File `{Path(str(data.get('file', ''))).name}` (sha256 `{str(data.get('sha256', ''))[:16]}…`): "
        f"{data.get('rows_read')} conversations read, {data.get('duplicates_removed')} exact duplicates removed, "
        f"{data.get('rows_used')} used ({data.get('train_rows')} train, {data.get('eval_rows')} held out); "
        f"{turns.get('total')} turns ({roles}). Conversations that open with the same user message are on one "
        "side of the split only.",
    ]
    if data.get("per_dialect"):
        lines += ["", "| Dialect | train | eval |", "|---|---:|---:|"]
        for dialect, counts in data["per_dialect"].items():
            lines.append(f"| {dialect} | {counts.get('train')} | {counts.get('eval')} |")
    return "\n".join(lines)


def usage_snippet(source: str, base_model: str, dtype: str = "bfloat16") -> str:
    return f'''```python
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{source}")
model = AutoModelForCausalLM.from_pretrained("{base_model}", dtype=torch.{dtype}, device_map="auto")
model = PeftModel.from_pretrained(model, "{source}").eval()

# The conversation so far, through the tokenizer's chat template, with the assistant's turn opened.
messages = [
    {{"role": "system", "content": "You answer in Najdi Arabic."}},  # as in the training data, or leave it out
    {{"role": "user", "content": "وش أفضل وقت لزيارة الرياض؟"}},
]
inputs = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
).to(model.device)
output = model.generate(**inputs, max_new_tokens=256, do_sample=False, eos_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```'''


def usage_note(shown: str) -> str:
    return (
        f'`saudial chat --adapter {shown} "..."` (with `--system "..."`, or `--input conversations.jsonl`) does '
        "this for you, and `saudial merge` writes a merged bf16 model for vLLM or llama.cpp."
    )
