"""Clean SauDial rows -> what the trainer sees: the split, TRL prompt/completion records, their token counts.

`split` holds out a deterministic, dialect-stratified share with every English sentence on one side only.
`prepare` formats both sides with the original recipe's prompt (`prompts.py`: the loss is on the completion, the
translation, and the EOS appended to it), tokenizes them as TRL's SFTTrainer would (`trainer_records`: the token
ids and labels, cut to `max_length`, so the trainer skips its own preparation) and measures them: rows per dialect
and split, the control characters the loader removed, tokens per example as trained and how many `max_length`
will truncate. (Conversations have the same two steps in `chat_examples.py`.)
"""

from __future__ import annotations

import logging
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd
import pyarrow as pa
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable
from transformers import PreTrainedTokenizerBase
from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy
from trl.data_utils import common_prefix_length

from saudial.config.runtime import parallel_tokenizers
from saudial.data.prompts import build_example
from saudial.data.text import SYNTHETIC

if TYPE_CHECKING:
    from saudial.data.chat_examples import ChatSplit
    from saudial.data.conversations import ChatData
    from saudial.data.workbook import Dataset

log = logging.getLogger(__name__)


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
    dialects_at: dict[Any, list[str]] = defaultdict(list)  # row label -> its dialect(s): rows.loc, without pandas
    for index, english, dialect in zip(rows.index, rows["english"], rows["dialect"], strict=True):
        groups[english.casefold()].append(index)
        dialects_at[index].append(dialect)
    order = sorted(groups)
    random.Random(seed).shuffle(order)

    totals = Counter(rows["dialect"])
    target = {d: max(1, round(n * eval_size)) if n >= 2 else 0 for d, n in totals.items()}
    taken: Counter[str] = Counter()
    eval_index: list[int] = []
    for key in order:
        members = groups[key]
        need = Counter(dialect for index in members for dialect in dialects_at[index])
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


def prepare(
    dataset: Dataset, split: Split, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """Both sides as the trainer's records (`trainer_records`), and the summary (logged) of what it will see."""
    train_pc, eval_pc = to_prompt_completion(split.train), to_prompt_completion(split.eval)
    train_ids, train_starts = tokenize(train_pc, tokenizer)
    eval_ids, eval_starts = tokenize(eval_pc, tokenizer)
    summary = summarize(dataset, split, tokenizer, max_length, train_pc, [len(ids) for ids in train_ids])
    log_summary(summary)
    train_ds = trainer_records(train_pc, train_ids, train_starts, max_length)
    return train_ds, trainer_records(eval_pc, eval_ids, eval_starts, max_length), summary


def to_prompt_completion(rows: pd.DataFrame) -> datasets.Dataset:
    columns = (rows[c].astype(str) for c in ("dialect", "english", "translation", "context"))
    records = [build_example(d, e, t, c or None) for d, e, t, c in zip(*columns, strict=True)]
    # Columns, not a list of records: the held-out side is empty where SAUDIAL_EVAL_SIZE is 0 or the data too small
    # to hold a sentence out, and an empty data set still has its columns.
    return arrow_dataset({key: [record[key] for record in records] for key in PROMPT_FEATURES}, PROMPT_FEATURES)


def tokenize(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> tuple[list[list[int]], list[int]]:
    """Each record's token ids as trained (prompt + completion + EOS), and where its completion starts.

    What TRL's SFTTrainer does to prompt/completion records (trl 1.16, `SFTTrainer._prepare_dataset`): the EOS
    token's text appended to a completion that does not end with it, the prompt and the prompt + completion
    tokenized, and the completion starting where the two diverge (TRL's own `common_prefix_length`). Here in one batched
    call of the fast tokenizer instead of two calls per row through `datasets.map`;
    tests/test_upstream.py checks the result against TRL's own preparation.
    """
    eos = tokenizer.eos_token
    prompts: list[str] = ds["prompt"][:]  # a slice of a column is a list: iterating the column formats each row
    if not prompts:  # an empty held-out side; the tokenizer refuses an empty batch
        return [], []
    completions = [c if c.endswith(eos) else c + eos for c in ds["completion"][:]]
    with parallel_tokenizers():  # every core: this runs before the training loader's worker is forked
        encoded = token_ids(tokenizer, [*prompts, *(p + c for p, c in zip(prompts, completions, strict=True))])
    prompt_ids, whole_ids = encoded[: len(prompts)], encoded[len(prompts) :]
    return whole_ids, [common_prefix_length(p, w) for p, w in zip(prompt_ids, whole_ids, strict=True)]


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """`tokenizer(texts)["input_ids"]`: for a fast tokenizer, its Rust backend's ids, set up as that call sets it up.

    Upstream (transformers 5.23, `TokenizersBackend._encode_plus`): a call without padding or truncation turns
    both off in the backend, sets its `encode_special_tokens` to the tokenizer's `split_special_tokens`, runs the
    backend's `encode_batch` and converts every encoding to a dict of lists (ids, attention mask, ...): the
    conversion took ~3 s of the ~14 s that 180,000 texts took on 2 cores, and only the ids are used here.
    tests/test_upstream.py checks that the ids are the call's."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is None:
        return list(tokenizer(texts)["input_ids"])
    tokenizer.set_truncation_and_padding(
        padding_strategy=PaddingStrategy.DO_NOT_PAD,
        truncation_strategy=TruncationStrategy.DO_NOT_TRUNCATE,
        max_length=None,
        stride=0,
        pad_to_multiple_of=None,
        padding_side=None,
    )
    backend.encode_special_tokens = bool(tokenizer.split_special_tokens)
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=True)]


def arrow_dataset(columns: dict[str, list[Any]], features: datasets.Features) -> datasets.Dataset:
    """`datasets.Dataset.from_dict(columns, features=features)`, without its two passes over the values.

    Upstream (datasets 5.2): `from_dict` encodes every value of Python lists through the features, and the new
    data set's fingerprint is a hash of its whole table, pickled: ~4 s and ~1.7 s of 90,000 records' token ids on
    2 cores. Here each column is one Arrow array of its feature's type, the same arrays (tests/test_data.py), and
    the fingerprint is one of datasets' random ones, as it gives a data set it cannot hash. These data sets live
    in memory, where datasets caches nothing by fingerprint."""
    schema = features.arrow_schema
    table = InMemoryTable.from_pydict(
        {name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()}
    )
    info = datasets.DatasetInfo(features=features)
    return datasets.Dataset(table, info=info, fingerprint=generate_random_fingerprint())


def trainer_records(ds: datasets.Dataset, ids: list[list[int]], starts: list[int], max_length: int) -> datasets.Dataset:
    """`ds` with the columns TRL's preparation would add: `input_ids` and `labels` (-100 on the prompt), both cut
    to their first `max_length` tokens (TRL's `truncation_mode="keep_start"`); a record left without a learned token (a
    prompt that fills `max_length`) is dropped, as TRL drops it. `training/trainer.py` tells TRL to skip its own
    preparation of records that have `labels`."""
    columns: dict[str, list[Any]] = {"prompt": [], "completion": [], "input_ids": [], "labels": []}
    for prompt, completion, whole, start in zip(ds["prompt"][:], ds["completion"][:], ids, starts, strict=True):
        kept = whole[:max_length]
        if start >= len(kept):  # every label -100: the prompt fills what is kept (token ids are never -100)
            continue
        columns["prompt"].append(prompt)
        columns["completion"].append(completion)
        columns["input_ids"].append(kept)
        columns["labels"].append([-100] * start + kept[start:])
    return arrow_dataset(columns, RECORD_FEATURES)


PROMPT_FEATURES = datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string")})
RECORD_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "completion": datasets.Value("string"),
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int64")),
    }
)


def summarize(
    dataset: Dataset | ChatData,
    split: Split | ChatSplit,
    tokenizer: PreTrainedTokenizerBase | None,
    max_length: int,
    train_ds: datasets.Dataset | None,
    lengths: list[int] | None = None,
) -> dict[str, Any]:
    """What the trainer will see; without a tokenizer (a dry run without the Hub) no token counts.

    `lengths`: tokens per training example as trained, where `tokenize` has counted them already."""
    summary = {
        "file": str(dataset.path),
        "sha256": dataset.sha256,
        "rows_read": dataset.rows_read,
        "dropped_empty": getattr(dataset, "dropped_empty", 0),  # conversations: a line without text is an error
        "duplicates_removed": dataset.duplicates_removed,
        "control_chars_removed": dataset.control_chars_removed,
        "rows_used": len(split.train) + len(split.eval),
        "train_rows": len(split.train),
        "eval_rows": len(split.eval),
        "per_dialect": split.counts,
    }
    if getattr(dataset, "synthetic", False):
        summary["synthetic"] = True  # the data summary and the model card say "synthetic sample (not SauDial)"
    if tokenizer is None or train_ds is None:
        return summary
    if lengths is None:
        lengths = [len(ids) for ids in tokenize(train_ds, tokenizer)[0]]
    ordered = sorted(lengths)
    summary["train_tokens"] = {
        "mean": round(statistics.fmean(lengths), 1),
        "median": statistics.median(lengths),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
        "total": sum(lengths),
        "truncated_at_max_length": sum(1 for n in lengths if n > max_length),
        "max_length": max_length,
    }
    return summary


def split_table(summary: dict[str, Any]) -> list[str]:
    """Rows per dialect on each side of the split, and the totals: the summary's table, as log lines."""
    lines = [f"  {'dialect':<12}{'train':>7}{'eval':>7}"]
    lines += [f"  {d:<12}{n['train']:>7}{n['eval']:>7}" for d, n in summary["per_dialect"].items()]
    return [*lines, f"  {'total':<12}{summary['train_rows']:>7}{summary['eval_rows']:>7}"]


def log_summary(summary: dict[str, Any]) -> None:
    synthetic = f", {SYNTHETIC}: a word code in Arabic script, not translations" if summary.get("synthetic") else ""
    lines = [
        f"data: {summary['file']} (sha256 {summary['sha256'][:12]}){synthetic}",
        f"  rows read {summary['rows_read']}, dropped empty {summary['dropped_empty']}, "
        f"exact duplicates removed {summary['duplicates_removed']}, used {summary['rows_used']}; "
        f"invisible control characters removed {summary['control_chars_removed']}",
        *split_table(summary),
    ]
    if "train_tokens" not in summary:
        log.info("\n".join(lines))
        return
    t = summary["train_tokens"]
    lines.append(
        f"  train tokens/example: mean {t['mean']}, median {t['median']}, p90 {t['p90']}, max {t['max']}; "
        f"{t['truncated_at_max_length']} example(s) longer than max_length={t['max_length']} will be truncated"
    )
    log.info("\n".join(lines))
