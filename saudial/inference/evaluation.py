"""Is the adapter any better than the base model? chrF++ and BLEU per dialect, base vs adapter.

For every held-out example, the base model (the same PeftModel with its adapter switched off by
`disable_adapter()`, so nothing is loaded twice) and the adapter translate with the training prompt;
sacrebleu scores both against the dialect reference, per dialect and overall. Where the data has an
MSA column, that column is scored against the dialect reference too: what a perfect Modern Standard
Arabic translation would get, the line between "writes dialect" and "writes MSA". For a chat adapter
(SAUDIAL_TASK=chat), both write each held-out conversation's last assistant turn from the turns before
it (the chat template with its generation prompt), scored against that turn, per dialect where the
conversations name one; the eval loss is on the assistant tokens, as in training.

Scores and their table are `scoring.py`.

Results go to metrics.json (merged with what training wrote), eval_results.md and
eval_predictions.jsonl in the output directory, and the table is printed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from saudial.data.chat_examples import CONVERSATION
from saudial.data.messages import tokenize
from saudial.data.prompts import build_prompt
from saudial.data.workbook import iter_rows
from saudial.errors import OOM_INFERENCE, faults
from saudial.inference.dense import dequantize_base_weights, merged_adapter
from saudial.inference.generate import Request, chat_replies, translate
from saudial.inference.scoring import OVERALL, SYSTEMS, markdown_table, normalize, score_by_dialect, signatures
from saudial.process import signals
from saudial.rundir import record

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)


def cap(rows: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    """At most `max_samples` rows, sampled per dialect in proportion (deterministic for a seed)."""
    if max_samples is None or len(rows) <= max_samples:
        return rows.reset_index(drop=True)
    sampled = rows.groupby("dialect", group_keys=False).sample(frac=max_samples / len(rows), random_state=seed)
    sampled = sampled.sample(frac=1.0, random_state=seed).head(max_samples).sort_index()
    if len(sampled) < max_samples:  # rounding: top up
        rest = rows.drop(index=sampled.index).sample(n=max_samples - len(sampled), random_state=seed)
        sampled = pd.concat([sampled, rest]).sort_index()
    return sampled.head(max_samples).reset_index(drop=True)


def loss_examples(
    tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, settings: Settings
) -> Iterator[tuple[list[int], list[int], bool]]:
    """(token ids, labels, cut?) of every held-out example as training builds it, cut to max_length: the
    translation and its EOS learned, or (chat) every assistant turn and its end-of-turn token."""
    if settings.task == "chat":
        for conversation in rows[CONVERSATION]:
            example = tokenize(tokenizer, conversation, settings.max_length)
            ids, mask = example["input_ids"], example["assistant_masks"]
            labels = [token if learned else -100 for token, learned in zip(ids, mask, strict=True)]
            yield ids[: settings.max_length], labels[: settings.max_length], len(ids) > settings.max_length
        return
    for r in iter_rows(rows):
        prompt = build_prompt(r.dialect, r.english, r.context or None)
        prompt_ids = tokenizer(prompt)["input_ids"][: settings.max_length]
        ids = tokenizer(prompt + r.translation)["input_ids"]
        cut = len(ids) + 1 > settings.max_length
        ids = [*ids[: settings.max_length - 1], tokenizer.eos_token_id]
        yield ids, [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :], cut


def eval_loss(model: Any, tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, settings: Settings) -> float:
    """Mean cross-entropy per learned token (the translation and its EOS; chat: the assistant turns), as
    training computes it: each example cut to max_length tokens, as training cuts it."""
    device = model.get_input_embeddings().weight.device
    total, count, cut = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for ids, labels, was_cut in loss_examples(tokenizer, rows, settings):
            signals.check()  # SIGTERM during evaluation: stop here (exit 75)
            cut += was_cut
            if all(label == -100 for label in labels[1:]):
                continue
            with (
                faults(oom_advice=f"computing the loss of one example of {len(ids)} tokens: {OOM_INFERENCE}"),
                torch.inference_mode(),
            ):
                out = model(input_ids=torch.tensor([ids], device=device))
                logits = out.logits[0, :-1].float()
                target = torch.tensor(labels[1:], device=device)
                losses = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
            total += float(losses)
            count += int((target != -100).sum())
    finally:
        model.train(was_training)
    if cut:
        log.info(
            "eval loss: %d of %d examples cut to SAUDIAL_MAX_LENGTH=%d tokens, as in training",
            cut,
            len(rows),
            settings.max_length,
        )
    return total / count if count else math.nan


def evaluate(
    settings: Settings,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    eval_rows: pd.DataFrame,
    output_dir: Path,
    loss: float | None = None,
    command: str = "train",
) -> dict[str, Any]:
    """Evaluate as `settings.eval` says; write metrics.json (the latest at the top, every evaluation in its
    `evaluations`, with `command` and the settings it ran with), eval_results.md and the predictions.

    `model` is a PeftModel (the adapter is switched off for the base model's scores); a 4-bit base is
    dequantized in place for generation, so the model is not for training afterwards. `loss` is the
    eval loss when the caller already has it (the trainer computed it); else it is computed here.
    """
    if settings.eval == "none":
        log.info("evaluation skipped (SAUDIAL_EVAL=none)")
        return {}
    if eval_rows.empty:
        log.warning("no held-out rows: nothing to evaluate")
        return {}
    rows = cap(eval_rows, settings.max_eval_samples, settings.seed)
    results: dict[str, Any] = {}
    clock = time.perf_counter()
    if loss is None:
        loss = eval_loss(model, tokenizer, rows, settings)
    results["eval_loss"] = loss
    if settings.eval == "full":
        results["evaluation"] = generate_and_score(settings, model, tokenizer, rows, output_dir)
        for system in SYSTEMS:
            overall = results["evaluation"]["scores"][system][OVERALL]
            results[f"eval_chrf++_{system}"] = overall["chrf++"]
            results[f"eval_bleu_{system}"] = overall["bleu"]
    results["eval_runtime_s"] = round(time.perf_counter() - clock, 2)

    how = {"command": command} | {k: getattr(settings, k) for k in HOW}
    data = record.absolute(str(settings.data)) if settings.data else None  # as the run record holds it
    record.add_evaluation(output_dir, results, how | {"data": data})
    # Named where they are once the run is complete: a run's staging folder moves into OUTPUT_DIR.
    final = output_dir.parent if output_dir.name == record.STAGING else output_dir
    if "evaluation" in results:
        table = markdown_table(results["evaluation"], loss)
        record.own(output_dir, record.RESULTS_MD)  # in a run's directory: listed as the run's before it exists
        (output_dir / record.RESULTS_MD).write_text(table, encoding="utf-8")
        print(table, flush=True)
        log.info("evaluation written to %s and %s", final / record.METRICS, final / record.RESULTS_MD)
    else:
        log.info(
            "eval loss %.4f (SAUDIAL_EVAL=loss: no translations scored), written to %s", loss, final / record.METRICS
        )
    return results


# The settings an evaluation ran with, kept with its results in metrics.json's `evaluations`.
HOW = ["eval", "eval_size", "seed", "max_eval_samples", "max_length", "max_new_tokens", "do_sample", "temperature"]
HOW += ["min_p", "repetition_penalty"]


def generate_and_score(
    settings: Settings, model: Any, tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, output_dir: Path
) -> dict[str, Any]:
    """Base and adapter write every held-out answer: the translation, or (chat) each conversation's last
    assistant turn from the conversation before it; chrF++/BLEU against the data's, per dialect."""
    dequantize_base_weights(model)  # a 4-bit base decodes ~3x faster dense, same tokens (inference/dense.py)
    if settings.task == "chat":
        conversations = list(rows[CONVERSATION])
        prompts = [c.as_dicts(c.last_assistant) for c in conversations]
        references = [c.messages[c.last_assistant][1] for c in conversations]
        lines = [{"dialect": c.dialect, "messages": p} for c, p in zip(conversations, prompts, strict=True)]

        def write(description: str, stats: dict[str, float]) -> list[str]:
            return chat_replies(model, tokenizer, prompts, settings, description=description, stats=stats)

    else:
        requests = [Request(r.dialect, r.english, r.context or None) for r in iter_rows(rows)]
        references = list(rows["translation"])
        lines = [{"dialect": r.dialect, "english": r.english, "context": r.context} for r in iter_rows(rows)]

        def write(description: str, stats: dict[str, float]) -> list[str]:
            return translate(model, tokenizer, requests, settings, description=description, stats=stats)

    outputs: dict[str, list[str]] = {}
    rates: dict[str, dict[str, float]] = {system: {} for system in SYSTEMS}
    with model.disable_adapter():
        outputs["base"] = write("base model", rates["base"])
    with merged_adapter(model):  # W + s B A: one matmul per adapted linear (inference/dense.py)
        outputs["adapter"] = write("with adapter", rates["adapter"])
    scores: dict[str, Any] = {system: score_by_dialect(rows, outputs[system], references) for system in SYSTEMS}
    msa_rows = rows[rows["msa"].astype(str).str.strip() != ""] if "msa" in rows else rows.iloc[0:0]
    if len(msa_rows):
        scores["msa_reference"] = score_by_dialect(msa_rows, list(msa_rows["msa"]))
    record.own(output_dir, record.PREDICTIONS)
    with (output_dir / record.PREDICTIONS).open("w", encoding="utf-8") as handle:
        for i, line in enumerate(lines):
            line |= {"reference": references[i]} | {system: outputs[system][i] for system in SYSTEMS}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {
        "task": settings.task,
        "samples": len(rows),
        "generation": {
            k: getattr(settings, k)
            for k in ("max_new_tokens", "do_sample", "temperature", "min_p", "repetition_penalty")
        },
        "generation_speed": rates,
        "empty_outputs": {system: sum(not normalize(text) for text in outputs[system]) for system in SYSTEMS},
        "normalization": "NFC; wrapping quotes and surrounding whitespace removed; whitespace runs collapsed",
        "signatures": signatures(),
        "scores": scores,
    }
