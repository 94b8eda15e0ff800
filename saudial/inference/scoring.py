"""Scores: chrF++ and BLEU (sacrebleu), per dialect and overall, on normalised text, and their table.

Text is compared after `normalize`: Unicode NFC, surrounding whitespace and one pair of wrapping
quotes removed (`clean_text`, as the loader does to the references), runs of whitespace collapsed
to one space. Nothing else: diacritics (tashkeel), tatweel, alef/hamza/ya/ta-marbuta spellings and
punctuation are kept, because they are part of how a dialect is written.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import pandas as pd
from sacrebleu.metrics import BLEU, CHRF

from saudial.data.text import clean_text

OVERALL = "overall"
# BLEU's "intl" tokenizer splits on every Unicode punctuation mark, Arabic ones (، ؟ ؛) included;
# the default "13a" knows only ASCII punctuation and would glue "،" to the word before it.
BLEU_TOKENIZE = "intl"
SYSTEMS = ("base", "adapter")


def normalize(text: object) -> str:
    """What is compared: NFC, wrapping quotes and surrounding space removed, whitespace runs collapsed."""
    cleaned = clean_text(unicodedata.normalize("NFC", clean_text(text)))
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


def score_by_dialect(
    rows: pd.DataFrame, hypotheses: list[str], references: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Overall and per dialect (rows without one count in the overall score only); the references are the
    rows' translations unless given."""
    references = list(rows["translation"]) if references is None else references
    result = {OVERALL: score(hypotheses, references)}
    for dialect in sorted(d for d in set(rows["dialect"]) if d):
        mask = list(rows["dialect"] == dialect)
        result[dialect] = score(
            [h for h, keep in zip(hypotheses, mask, strict=True) if keep],
            [r for r, keep in zip(references, mask, strict=True) if keep],
        )
    return result


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
        f"{evaluation['samples']} held-out examples; generation: {generation_text(evaluation['generation'])}.",
        "Base = the base model with the adapter switched off, same conversation; the reference is each held-out "
        "conversation's last assistant turn, written from the turns before it."
        if evaluation.get("task") == "chat"
        else "Base = the base model with the adapter switched off, same prompt. MSA ref = the data's MSA column "
        "scored against the dialect reference (what a perfect MSA translation would get).",
        f"Compared after normalisation ({evaluation['normalization']}). "
        f"sacrebleu {evaluation['signatures']['chrf++']} | {evaluation['signatures']['bleu']}",
    ]
    if loss is not None and not math.isnan(loss):
        notes.insert(1, f"Eval loss (adapter): {loss:.4f}.")
    empty = evaluation.get("empty_outputs") or {}
    if any(empty.values()):
        counts = ", ".join(f"{system} {n} of {evaluation['samples']}" for system, n in empty.items())
        notes.insert(
            1,
            f"Empty outputs: {counts} (nothing but whitespace before the end token or max_new_tokens). An empty "
            "output scores 0, so a model that writes only that (an untrained or barely trained adapter, or make "
            "demo's tiny random model) scores 0 everywhere, whatever the count of tokens generated.",
        )
    return "\n".join(lines + notes) + "\n"


SAMPLING_ONLY = ("temperature", "min_p", "top_p", "top_k")  # no effect on greedy decoding


def generation_text(generation: dict[str, Any]) -> str:
    """The generation settings that took effect: greedy decoding says so instead of listing sampling knobs."""
    greedy = not generation.get("do_sample")
    shown = {k: v for k, v in generation.items() if not (greedy and (k in SAMPLING_ONLY or k == "do_sample"))}
    return ", ".join(["greedy" if greedy else "sampled", *(f"{k}={v}" for k, v in shown.items())])
