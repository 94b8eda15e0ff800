"""Is the adapter any better than the base model? chrF++ and BLEU per dialect, base vs adapter.

For every held-out example, the base model (the same PeftModel with its adapter switched off by
`disable_adapter()`, so nothing is loaded twice) and the adapter translate with the training prompt;
sacrebleu scores both against the dialect reference, per dialect and overall. Where the data has an
MSA column, that column is scored against the dialect reference too: what a perfect Modern Standard
Arabic translation would get, the line between "writes dialect" and "writes MSA".

Text is compared after `normalize`: Unicode NFC, surrounding whitespace and one pair of wrapping
quotes removed (`data.clean_text`, as the loader does to the references), runs of whitespace collapsed
to one space. Nothing else: diacritics (tashkeel), tatweel, alef/hamza/ya/ta-marbuta spellings and
punctuation are kept, because they are part of how a dialect is written.

Results go to metrics.json (merged with what training wrote), eval_results.md and
eval_predictions.jsonl in the output directory, and the table is printed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sacrebleu.metrics import BLEU, CHRF
from transformers import PreTrainedTokenizerBase

from saudial import data as data_mod
from saudial.config import Settings
from saudial.errors import ConfigError
from saudial.generate import Request, translate
from saudial.manifest import METRICS, read_json, write_json
from saudial.prompts import build_prompt

log = logging.getLogger(__name__)

RESULTS_MD = "eval_results.md"
PREDICTIONS = "eval_predictions.jsonl"
OVERALL = "overall"
# BLEU's "intl" tokenizer splits on every Unicode punctuation mark, Arabic ones (، ؟ ؛) included;
# the default "13a" knows only ASCII punctuation and would glue "،" to the word before it.
BLEU_TOKENIZE = "intl"
SYSTEMS = ("base", "adapter")


def normalize(text: object) -> str:
    """What is compared: NFC, wrapping quotes and surrounding space removed, whitespace runs collapsed."""
    cleaned = data_mod.clean_text(unicodedata.normalize("NFC", data_mod.clean_text(text)))
    return re.sub(r"\s+", " ", cleaned)


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus chrF++ (character 6-grams + word 2-grams) and BLEU of normalised texts."""
    hyps = [normalize(h) for h in hypotheses]
    refs = [[normalize(r) for r in references]]
    return {
        "chrf++": round(CHRF(word_order=2).corpus_score(hyps, refs).score, 2),
        "bleu": round(BLEU(tokenize=BLEU_TOKENIZE).corpus_score(hyps, refs).score, 2),
        "n": len(hyps),
    }


def signatures() -> dict[str, str]:
    """sacrebleu's reproducibility signatures (it knows the reference count only after a scoring)."""
    result = {}
    for name, metric in (("chrf++", CHRF(word_order=2)), ("bleu", BLEU(tokenize=BLEU_TOKENIZE))):
        metric.corpus_score(["x"], [["x"]])
        result[name] = str(metric.get_signature())
    return result


def score_by_dialect(rows: pd.DataFrame, hypotheses: list[str]) -> dict[str, dict[str, float]]:
    result = {OVERALL: score(hypotheses, list(rows["translation"]))}
    for dialect in sorted(set(rows["dialect"])):
        mask = list(rows["dialect"] == dialect)
        result[dialect] = score(
            [h for h, keep in zip(hypotheses, mask, strict=True) if keep],
            [r for r, keep in zip(rows["translation"], mask, strict=True) if keep],
        )
    return result


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


def eval_loss(model: Any, tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, settings: Settings) -> float:
    """Mean cross-entropy per translation token (the response and its EOS), as training computes it."""
    device = model.get_input_embeddings().weight.device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for r in data_mod.iter_rows(rows):
            prompt = build_prompt(r.dialect, r.english, r.context or None)
            prompt_ids = tokenizer(prompt)["input_ids"]
            ids = tokenizer(prompt + r.translation)["input_ids"][: settings.max_length - 1]
            ids = [*ids, tokenizer.eos_token_id]
            labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]
            if all(label == -100 for label in labels[1:]):
                continue
            with torch.inference_mode():
                out = model(input_ids=torch.tensor([ids], device=device))
            logits = out.logits[0, :-1].float()
            target = torch.tensor(labels[1:], device=device)
            losses = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
            total += float(losses)
            count += int((target != -100).sum())
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def evaluate(
    settings: Settings,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    eval_rows: pd.DataFrame,
    output_dir: Path,
    loss: float | None = None,
) -> dict[str, Any]:
    """Evaluate as `settings.eval` says; write metrics.json, eval_results.md and the predictions.

    `model` is a PeftModel (the adapter is switched off for the base model's scores). `loss` is the
    eval loss when the caller already has it (the trainer computed it); else it is computed here.
    """
    if settings.eval == "none":
        log.info("evaluation skipped (SAUDIAL_EVAL=none)")
        return {}
    if eval_rows.empty:
        log.warning("no eval split (SAUDIAL_EVAL_SIZE=0): nothing to evaluate")
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

    metrics = read_json(output_dir / METRICS) or {}
    metrics.update(results)
    write_json(output_dir / METRICS, metrics)
    if "evaluation" in results:
        table = markdown_table(results["evaluation"], loss)
        (output_dir / RESULTS_MD).write_text(table, encoding="utf-8")
        print(table, flush=True)
        log.info("evaluation written to %s and %s", output_dir / METRICS, output_dir / RESULTS_MD)
    else:
        log.info(
            "eval loss %.4f (SAUDIAL_EVAL=loss: no translations scored), written to %s", loss, output_dir / METRICS
        )
    return results


def generate_and_score(
    settings: Settings, model: Any, tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, output_dir: Path
) -> dict[str, Any]:
    requests = [Request(r.dialect, r.english, r.context or None) for r in data_mod.iter_rows(rows)]
    outputs: dict[str, list[str]] = {}
    with model.disable_adapter():
        outputs["base"] = translate(model, tokenizer, requests, settings, description="base model")
    outputs["adapter"] = translate(model, tokenizer, requests, settings, description="with adapter")
    scores: dict[str, Any] = {system: score_by_dialect(rows, outputs[system]) for system in SYSTEMS}
    msa_rows = rows[rows["msa"].astype(str).str.strip() != ""]
    if len(msa_rows):
        scores["msa_reference"] = score_by_dialect(msa_rows, list(msa_rows["msa"]))
    with (output_dir / PREDICTIONS).open("w", encoding="utf-8") as handle:
        for i, r in enumerate(data_mod.iter_rows(rows)):
            record = {"dialect": r.dialect, "english": r.english, "context": r.context, "reference": r.translation}
            record |= {system: outputs[system][i] for system in SYSTEMS}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {
        "samples": len(rows),
        "generation": {
            k: getattr(settings, k)
            for k in ("max_new_tokens", "do_sample", "temperature", "min_p", "repetition_penalty")
        },
        "normalization": "NFC; wrapping quotes and surrounding whitespace removed; whitespace runs collapsed",
        "signatures": signatures(),
        "scores": scores,
    }


def markdown_table(evaluation: dict[str, Any], loss: float | None = None) -> str:
    """Per dialect and overall: chrF++ and BLEU of base, adapter, and the MSA column as a reference."""
    scores = evaluation["scores"]
    msa = scores.get("msa_reference", {})
    header = "| Dialect | n | chrF++ base | chrF++ adapter | Δ chrF++ | BLEU base | BLEU adapter | Δ BLEU |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if msa:
        header += " chrF++ MSA ref | BLEU MSA ref |"
        rule += "---:|---:|"
    lines = [header, rule]
    dialects = [d for d in scores["adapter"] if d != OVERALL] + [OVERALL]
    for dialect in dialects:
        base, adapter = scores["base"][dialect], scores["adapter"][dialect]
        name = f"**{dialect}**" if dialect == OVERALL else dialect
        cells = [
            name,
            str(adapter["n"]),
            f"{base['chrf++']:.1f}",
            f"{adapter['chrf++']:.1f}",
            f"{adapter['chrf++'] - base['chrf++']:+.1f}",
            f"{base['bleu']:.1f}",
            f"{adapter['bleu']:.1f}",
            f"{adapter['bleu'] - base['bleu']:+.1f}",
        ]
        if msa:
            ref = msa.get(dialect)
            cells += [f"{ref['chrf++']:.1f}", f"{ref['bleu']:.1f}"] if ref else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"{evaluation['samples']} held-out examples; generation: "
        + ", ".join(f"{k}={v}" for k, v in evaluation["generation"].items())
        + ".",
        "Base = the base model with the adapter switched off, same prompt. MSA ref = the data's MSA column "
        "scored against the dialect reference (what a perfect MSA translation would get).",
        f"Compared after normalisation ({evaluation['normalization']}). "
        f"sacrebleu {evaluation['signatures']['chrf++']} | {evaluation['signatures']['bleu']}",
    ]
    if loss is not None and not math.isnan(loss):
        notes.insert(1, f"Eval loss (adapter): {loss:.4f}.")
    return "\n".join(lines + notes) + "\n"


def eval_split(settings: Settings) -> pd.DataFrame:
    """The held-out rows of the adapter's run: same data file, dialect filter, eval_size and seed."""
    if settings.data is None:
        raise ConfigError("no data file to evaluate on: set SAUDIAL_DATA (or --data), or keep the run_manifest.json")
    dataset = data_mod.load(settings.data, settings.sheet_name, settings.dialects)
    rows = data_mod.split(dataset.rows, settings.eval_size, settings.seed).eval
    if rows.empty:
        raise ConfigError(
            f"the eval split of {settings.data} is empty (SAUDIAL_EVAL_SIZE={settings.eval_size}): raise it to evaluate"
        )
    return rows


def run_evaluate(settings: Settings, adapter_dir: Path) -> dict[str, Any]:
    """`python -m saudial evaluate --adapter DIR`: evaluate a trained adapter on its run's eval split."""
    from saudial.generate import load_for_inference, settings_for_adapter

    explicit_output = "output_dir" in settings.model_fields_set
    settings = settings_for_adapter(settings, adapter_dir)
    if settings.eval == "none":
        log.info("SAUDIAL_EVAL=none: nothing to do")
        return {}
    output_dir = settings.output_dir if explicit_output else adapter_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = eval_split(settings)
    model, tokenizer = load_for_inference(settings, adapter_dir)
    return evaluate(settings, model, tokenizer, rows, output_dir)
