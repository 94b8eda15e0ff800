"""Rows -> what the trainer sees: TRL prompt/completion records, and what they look like in tokens.

`to_prompt_completion` formats every row with the seed's prompt (`prompts.py`); TRL computes the loss on
the completion (the translation) and the EOS it appends. `summarize` counts rows per dialect and split
(and the control characters the loader removed) and tokens per example as trained, including how many
examples `max_length` will truncate.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import datasets
import pandas as pd
from transformers import PreTrainedTokenizerBase

from saudial.data.prompts import build_example
from saudial.data.split import Split
from saudial.data.workbook import Dataset, iter_rows

log = logging.getLogger(__name__)


def to_prompt_completion(rows: pd.DataFrame) -> datasets.Dataset:
    records = [build_example(r.dialect, r.english, r.translation, r.context or None) for r in iter_rows(rows)]
    return datasets.Dataset.from_list(
        records,
        features=datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string")}),
    )


def token_lengths(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens per example as trained: prompt + completion + EOS."""
    texts = [p + c for p, c in zip(ds["prompt"], ds["completion"], strict=True)]
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [len(ids) + 1 for ids in encoded]


def summarize(
    dataset: Dataset,
    split: Split,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    train_ds: datasets.Dataset,
) -> dict[str, Any]:
    lengths = token_lengths(train_ds, tokenizer)
    ordered = sorted(lengths)
    return {
        "file": str(dataset.path),
        "sha256": dataset.sha256,
        "rows_read": dataset.rows_read,
        "dropped_empty": dataset.dropped_empty,
        "duplicates_removed": dataset.duplicates_removed,
        "control_chars_removed": dataset.control_chars_removed,
        "rows_used": len(dataset.rows),
        "train_rows": len(split.train),
        "eval_rows": len(split.eval),
        "per_dialect": split.counts,
        "train_tokens": {
            "mean": round(statistics.fmean(lengths), 1),
            "median": statistics.median(lengths),
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1],
            "total": sum(lengths),
            "truncated_at_max_length": sum(1 for n in lengths if n > max_length),
            "max_length": max_length,
        },
    }


def log_summary(summary: dict[str, Any]) -> None:
    lines = [
        f"data: {summary['file']} (sha256 {summary['sha256'][:12]})",
        f"  rows read {summary['rows_read']}, dropped empty {summary['dropped_empty']}, "
        f"exact duplicates removed {summary['duplicates_removed']}, used {summary['rows_used']}; "
        f"invisible control characters removed {summary['control_chars_removed']}",
        f"  {'dialect':<12}{'train':>7}{'eval':>7}",
    ]
    for dialect, counts in summary["per_dialect"].items():
        lines.append(f"  {dialect:<12}{counts['train']:>7}{counts['eval']:>7}")
    lines.append(f"  {'total':<12}{summary['train_rows']:>7}{summary['eval_rows']:>7}")
    t = summary["train_tokens"]
    lines.append(
        f"  train tokens/example: mean {t['mean']}, median {t['median']}, p90 {t['p90']}, max {t['max']}; "
        f"{t['truncated_at_max_length']} example(s) longer than max_length={t['max_length']} will be truncated"
    )
    log.info("\n".join(lines))
