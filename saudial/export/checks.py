"""Each exported GGUF checked by llama.cpp itself against transformers, on the same merged model.

- Tokenization: llama.cpp's token ids equal the Hugging Face tokenizer's, for every check text (the task's
  rendered prompts, and Arabic, Saudi-dialect text).
- Logits: at every position of every prompt, llama.cpp's logits against transformers': the largest difference
  at the last position, relative to the largest logit there, and how often the top-1 token agrees. A float type
  is compared with transformers running the same weights (f16 / bf16: every matrix rounded to that type, as the
  GGUF holds it; norms and the conv kernel stay float32 in both), so what is measured is the conversion, not
  the rounding; a quantized type with the float32 model, so what is measured is the quantization.
- Greedy: a few prompts continued for `GREEDY_TOKENS` tokens by argmax in both. Two continuations may part only
  where transformers' top two logits are closer than twice the largest logit difference measured (a tie that
  rounding decides, common in a random-weight model): the tokens must be identical up to there
  (`greedy_decided`: how many were compared).

A float type (f32, f16, bf16) must reproduce the model (tokens equal, `FLOAT_TOLERANCE`, greedy identical), or the
export stops with the file left out. A quantized type is measured and recorded; how close it must be is the
tests' floor, taken from measurement (tests/test_export.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saudial.data.prompts import build_prompt
from saudial.export.llama import Runner

FLOAT_TYPES = ("f32", "f16", "bf16", "lora")  # lora: the float32 base GGUF with the float32 LoRA GGUF
# Largest |llama.cpp - transformers| at the last position, over the largest |logit| there (measured: see
# docs/export.md). f32 is float32 against float32; f16 and bf16 round every weight first.
FLOAT_TOLERANCE = {"f32": 1e-3, "f16": 5e-3, "bf16": 3e-2, "lora": 1e-3}
GREEDY_TOKENS = 32
GREEDY_PROMPTS = 3

ENGLISH = [
    "Open the old door.",
    "Where is the market?",
    "We need more arrows before the boss fight.",
    "Don't forget to save your game!",
    "The merchant will not sell you the sword until you bring him three coins.",
    "Run, the bridge is collapsing!",
]
CONTEXTS = [None, "A guard speaks to the player at the city gate."]
DIALECTS = ["Najdi", "Hijazi", "Eastern", "Southern"]
ARABIC = [
    "السوق هناك جنب المسجد",
    "افتح الباب القديم، يا خوي!",
    "وش تبي؟ ترى الوقت متأخر مرّة",
    "لا تنسى تحفظ اللعبة قبل لا تطلع",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Where is the market?"}],
    [
        {"role": "system", "content": "Answer in Najdi Arabic."},
        {"role": "user", "content": "السوق وين؟"},
    ],
]


def translate_prompts() -> list[str]:
    """24 prompts exactly as `saudial translate` builds them: every dialect, with and without a context line."""
    prompts = []
    for i, english in enumerate(ENGLISH):
        for j, dialect in enumerate(DIALECTS):
            prompts.append(build_prompt(dialect, english, CONTEXTS[(i + j) % 2]))
    return prompts


def chat_prompts(tokenizer: Any) -> list[str]:
    """Conversations through the model's chat template with the generation prompt, as `saudial chat` sends them."""
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    english = [[{"role": "user", "content": text}] for text in ENGLISH + ARABIC]
    prompts += [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in english]
    return prompts + translate_prompts()[: 20 - len(prompts) if len(prompts) < 20 else 0]


def check_texts(task: str, tokenizer: Any) -> list[str]:
    """What the checks feed both sides: the task's prompts (at least 20)."""
    return chat_prompts(tokenizer) if task == "chat" else translate_prompts()


@dataclass
class Result:
    kind: str
    tokens_equal: bool
    first_token_mismatch: int | None
    prompts: int
    positions: int
    last_max_abs_diff: float
    last_max_rel_diff: float
    top1_agreement: float
    greedy_identical: int
    greedy_prompts: int
    greedy_agreement: float
    greedy_decided: int
    passed: bool
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Reference:
    """transformers' side, computed once for every file: ids, logits per prompt, greedy continuations."""

    ids: list[list[int]]
    logits: list[np.ndarray]
    greedy: list[list[int]]
    margins: list[list[float]]  # transformers' top-1 minus top-2 logit at each greedy step
    weights: str = "float32"


def hf_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(tokenizer(text, add_special_tokens=True)["input_ids"]) for text in texts]


ROUNDED = {"f16": torch.float16, "bf16": torch.bfloat16}


@contextmanager
def rounded(model: Any, kind: str) -> Iterator[None]:
    """The model's matrices rounded to `kind` (f16, bf16) as the GGUF of that type holds them, then restored."""
    dtype = ROUNDED.get(kind)
    saved: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters() if dtype else ():
            if param.ndim == 2:
                saved[name] = param.detach().clone()
                param.copy_(param.to(dtype).to(param.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in saved.items():
                params[name].copy_(value)


@torch.inference_mode()
def reference(model: Any, tokenizer: Any, texts: Sequence[str], kind: str = "f32") -> Reference:
    """transformers' logits and greedy tokens on `texts`, with the weights a GGUF of `kind` holds (float types)."""
    ids = hf_ids(tokenizer, texts)
    with rounded(model, kind):
        logits = [model(torch.tensor([row])).logits[0].float().numpy() for row in ids]
        greedy, margins = [], []
        for row in ids[:GREEDY_PROMPTS]:
            out = model.generate(
                torch.tensor([row]),
                attention_mask=torch.ones(1, len(row), dtype=torch.long),
                max_new_tokens=GREEDY_TOKENS,
                min_new_tokens=GREEDY_TOKENS,  # every position is compared, also after an EOS
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
            greedy.append(out.sequences[0, len(row) :].tolist())
            tops = [torch.topk(step[0].float(), 2).values for step in out.logits]
            margins.append([float(t[0] - t[1]) for t in tops])
    weights = {"f16": "float16", "bf16": "bfloat16"}.get(kind, "float32")
    return Reference(ids, logits, greedy, margins, weights)


def compare(kind: str, runner: Runner, ref: Reference, texts: Sequence[str]) -> Result:
    """llama.cpp (`runner`) against transformers (`ref`) on `texts`."""
    mismatch = next((i for i, text in enumerate(texts) if runner.tokenize(text) != ref.ids[i]), None)
    abs_diff = rel_diff = 0.0
    agree = positions = 0
    for row, expected in zip(ref.ids, ref.logits, strict=True):
        got = runner.logits(row)
        diff = float(np.max(np.abs(got[-1] - expected[-1])))
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / max(float(np.max(np.abs(expected[-1]))), 1e-6))
        agree += int(np.sum(np.argmax(got, axis=-1) == np.argmax(expected, axis=-1)))
        positions += len(row)
    identical = same = decided = 0
    tie = 2 * abs_diff  # closer than twice the largest logit difference measured: rounding may decide either way
    for row, expected_tokens, margins in zip(ref.ids, ref.greedy, ref.margins, strict=False):
        tokens = runner.greedy(row, GREEDY_TOKENS)
        # compared up to the first step whose top two logits are a tie within the tolerance (then both are right)
        upto = next((i for i, m in enumerate(margins) if m <= tie), len(margins))
        identical += int(tokens[:upto] == expected_tokens[:upto])
        decided += upto
        same += sum(a == b for a, b in zip(tokens, expected_tokens, strict=True))
    n_greedy = len(ref.greedy)
    result = Result(
        kind=kind,
        tokens_equal=mismatch is None,
        first_token_mismatch=mismatch,
        prompts=len(texts),
        positions=positions,
        last_max_abs_diff=abs_diff,
        last_max_rel_diff=rel_diff,
        top1_agreement=agree / max(positions, 1),
        greedy_identical=identical,
        greedy_prompts=n_greedy,
        greedy_agreement=same / max(n_greedy * GREEDY_TOKENS, 1),
        greedy_decided=decided,
        passed=True,
    )
    if kind in FLOAT_TYPES:
        result.passed = mismatch is None and rel_diff <= FLOAT_TOLERANCE[kind] and identical == n_greedy
    else:
        result.passed = mismatch is None
    return result


def check_file(kind: str, path: Path, ref: Reference, texts: Sequence[str], lora: Path | None = None) -> Result:
    import time

    start = time.perf_counter()
    runner = Runner(path, lora=lora, n_ctx=max(512, max(len(r) for r in ref.ids) + GREEDY_TOKENS + 8))
    try:
        result = compare(kind, runner, ref, texts)
    finally:
        runner.close()
    result.seconds = round(time.perf_counter() - start, 2)
    return result
