"""Train/eval split: deterministic for a seed, stratified by dialect, each English sentence on one side."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Split:
    train: pd.DataFrame
    eval: pd.DataFrame
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # dialect -> {"train": n, "eval": n}


def split(rows: pd.DataFrame, eval_size: float, seed: int) -> Split:
    """Deterministic, dialect-stratified split that keeps each English text on one side.

    Rows sharing an English text (the same sentence in several dialects, or alternative
    translations) form one group; groups are visited in a seeded order and go to eval while no
    dialect would exceed its share. So eval never scores a sentence the model trained on.
    """
    if eval_size <= 0:
        return Split(train=rows.reset_index(drop=True), eval=rows.iloc[0:0], counts=_counts(rows, rows.iloc[0:0]))
    groups: dict[str, list[int]] = defaultdict(list)
    for index, english in zip(rows.index, rows["english"], strict=True):
        groups[english.casefold()].append(index)
    order = sorted(groups)
    random.Random(seed).shuffle(order)

    totals = Counter(rows["dialect"])
    target = {d: max(1, round(n * eval_size)) if n >= 2 else 0 for d, n in totals.items()}
    taken: Counter[str] = Counter()
    eval_index: list[int] = []
    for key in order:
        members = groups[key]
        need = Counter(rows.loc[members, "dialect"])
        if all(taken[d] + n <= target[d] for d, n in need.items()):
            eval_index += members
            taken.update(need)
    eval_rows = rows.loc[sorted(eval_index)].reset_index(drop=True)
    train_rows = rows.drop(index=eval_index).reset_index(drop=True)
    return Split(train=train_rows, eval=eval_rows, counts=_counts(train_rows, eval_rows))


def _counts(train: pd.DataFrame, eval_rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    dialects = sorted(set(train["dialect"]) | set(eval_rows["dialect"]))
    train_counts, eval_counts = Counter(train["dialect"]), Counter(eval_rows["dialect"])
    return {d: {"train": train_counts[d], "eval": eval_counts[d]} for d in dialects}
