"""The loader on the published workbook's quirks, other formats, and the split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from saudial.data import examples as data_split
from saudial.data import workbook as data
from saudial.data.prompts import build_prompt
from saudial.devtools import synthetic
from saudial.errors import DataError


def test_workbook_fixture_has_the_published_quirks(workbook: Path) -> None:
    with pd.ExcelFile(workbook) as book:
        assert book.sheet_names == ["SADGLD"]
    raw = pd.read_excel(workbook, sheet_name="SADGLD")
    assert list(raw.columns) == synthetic.COLUMNS
    assert raw["English Text"].str.match(r'^".*"$').all()
    assert raw["Dialect Translation"].str.match(r'^".*"$').all()
    assert raw["In-Game Context"].isna().sum() == 1
    assert raw.duplicated().sum() == 3
    assert (raw["English Text"].value_counts() > 1).sum() == 5
    assert raw["Dialect Translation"].str.contains("\u0651").any()  # shadda
    assert raw["Localization Difficulty"].between(1, 5).all()


def test_full_size_shape_matches_the_published_counts() -> None:
    frame = synthetic.make_rows(1000)
    assert frame["Dialect"].value_counts().to_dict() == {"Najdi": 271, "Hijazi": 265, "Eastern": 241, "Southern": 223}


def test_load_cleans_quotes_nan_and_duplicates(workbook: Path) -> None:
    loaded = data.load(workbook)
    rows = loaded.rows
    assert loaded.rows_read == 200 and loaded.duplicates_removed == 3 and loaded.dropped_empty == 0
    assert len(rows) == 197
    assert not rows["english"].str.startswith('"').any() and not rows["translation"].str.endswith('"').any()
    assert (rows["context"] == "").sum() == 1
    assert "nan" not in set(rows["context"])
    # The alternative translation of one (Dialect, English) pair is kept, not de-duplicated.
    assert rows.duplicated(["dialect", "english"]).sum() == 1
    assert len(loaded.sha256) == 64


def test_prompt_leaves_out_missing_context_and_never_prints_nan(workbook: Path) -> None:
    rows = data.load(workbook).rows
    no_context = rows[rows["context"] == ""].iloc[0]
    prompt = build_prompt(no_context.dialect, no_context.english, no_context.context or None)
    assert "Context:" not in prompt and "nan" not in prompt and '"' not in prompt
    with_context = rows[rows["context"] != ""].iloc[0]
    assert f"Context: {with_context.context}\n" in build_prompt(
        with_context.dialect, with_context.english, with_context.context
    )


def test_prompt_is_the_seed_prompt_character_for_character() -> None:
    assert build_prompt("Najdi", "Open the door.", "Main menu") == (
        "### Instruction:\n"
        "Translate the following English text to Saudi Dialect (Najdi).\n"
        "Context: Main menu\n"
        "\n"
        "### Input:\n"
        "Open the door.\n"
        "\n"
        "### Response:\n"
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_other_formats_load_the_same_rows(
    tmp_path: Path, saudial_frame: pd.DataFrame, workbook: Path, suffix: str
) -> None:
    other = synthetic.write(saudial_frame, tmp_path / f"saudial{suffix}")
    a, b = data.load(workbook).rows, data.load(other).rows
    pd.testing.assert_frame_equal(a.astype(str), b.astype(str))


def test_columns_match_forgiving_case_and_spaces(tmp_path: Path, saudial_frame: pd.DataFrame) -> None:
    renamed = saudial_frame.rename(columns={"English Text": "  english text ", "Dialect": "DIALECT"})
    path = synthetic.write(renamed, tmp_path / "renamed.csv")
    assert len(data.load(path).rows) == 197


def test_sheet_default_and_choice(tmp_path: Path, saudial_frame: pd.DataFrame) -> None:
    path = tmp_path / "two.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"note": ["cover sheet"]}).to_excel(writer, sheet_name="About", index=False)
        saudial_frame.to_excel(writer, sheet_name="Data", index=False)
    with pytest.raises(DataError, match="lacks column"):
        data.load(path)  # no SADGLD: the first sheet, which is not the data
    assert len(data.load(path, sheet_name="Data").rows) == 197
    with pytest.raises(DataError, match=r"SAUDIAL_SHEET_NAME='Nope'.*sheets: About, Data"):
        data.load(path, sheet_name="Nope")


def test_empty_rows_are_dropped_and_counted(tmp_path: Path, saudial_frame: pd.DataFrame) -> None:
    frame = saudial_frame.copy()
    frame.loc[10, "English Text"] = None
    frame.loc[11, "Dialect Translation"] = '""'
    loaded = data.load(synthetic.write(frame, tmp_path / "holes.xlsx"))
    assert loaded.dropped_empty == 2


def test_dialect_filter(workbook: Path) -> None:
    rows = data.load(workbook, dialects=["najdi", "Hijazi"]).rows
    assert set(rows["dialect"]) == {"Najdi", "Hijazi"}
    with pytest.raises(DataError, match=r"\['Bedouin'\].*Eastern, Hijazi, Najdi, Southern"):
        data.load(workbook, dialects=["Bedouin"])


def test_split_is_deterministic_stratified_and_sentence_disjoint(workbook: Path) -> None:
    rows = data.load(workbook).rows
    first, again = data_split.split(rows, 0.1, seed=42), data_split.split(rows, 0.1, seed=42)
    pd.testing.assert_frame_equal(first.eval, again.eval)
    other = data_split.split(rows, 0.1, seed=7)
    assert set(first.eval["english"]) != set(other.eval["english"])
    assert len(first.train) + len(first.eval) == len(rows)
    assert not set(first.train["english"]) & set(first.eval["english"])
    for dialect, counts in first.counts.items():
        total = counts["train"] + counts["eval"]
        assert abs(counts["eval"] - round(0.1 * total)) <= 1, dialect
    # Every English text that occurs more than once stays on one side, for any seed.
    for seed in range(5):
        s = data_split.split(rows, 0.1, seed)
        assert not set(s.train["english"]) & set(s.eval["english"])


def test_split_zero_keeps_everything_for_training(workbook: Path) -> None:
    rows = data.load(workbook).rows
    s = data_split.split(rows, 0.0, seed=1)
    assert len(s.train) == len(rows) and s.eval.empty


def _odd_cells_workbook(path: Path) -> Path:
    """Sheets with the cells whose reading pandas decides: numbers whole and not, booleans, dates, an error, empty
    strings, blank rows in the middle and before the header, duplicate and missing headers, styled empty cells past
    the data, a sheet of a header only and an empty sheet."""
    import datetime

    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    odd = book.active
    odd.title = "odd"
    odd.append(["English Text", "Dialect", "English Text", None, "Localization Difficulty"])
    odd.append(["Find the sword.", "Najdi", 3.0, True, 2])
    odd.append([])
    odd.append(["Open the door.", "#REF!", 2.5, False, datetime.datetime(2024, 5, 1, 12, 30)])
    odd.append(["", "Hijazi", None, "", 7])
    odd.append(["Last one.", None, 10**12, "x", -1.25])
    odd.cell(row=9, column=8).font = Font(bold=True)  # a styled empty cell: no data, no row
    late = book.create_sheet("late header")
    late.append([])
    late.append(["English Text", "Dialect"])
    late.append(["Go.", "Eastern"])
    book.create_sheet("header only").append(["English Text", "Dialect", "Dialect Translation"])
    book.create_sheet("empty")
    book.save(path)
    return path


@pytest.mark.parametrize("sheet", ["odd", "late header", "header only", "empty"])
def test_the_workbook_reader_reads_pandas_own_frame(tmp_path: Path, sheet: str) -> None:
    """formats.read_excel reads the sheet once, checks and cells together, and builds the frame as
    `pd.read_excel(engine="openpyxl")` does: pandas itself is the reference, on every kind of cell."""
    from saudial.data import formats

    path = _odd_cells_workbook(tmp_path / "odd.xlsx")
    ours = formats.read_excel(path.read_bytes(), "odd.xlsx", sheet, 64 << 20)
    theirs = pd.read_excel(path, sheet_name=sheet, engine="openpyxl")
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
    if sheet == "odd":  # the rows keep their sheet numbers, the blank row 3 among them
        assert list(ours.index) == [2, 3, 4, 5, 6] and ours.loc[4, "Dialect"] != ours.loc[4, "Dialect"]  # NaN


@pytest.mark.parametrize("which", ["fixture", "sample"])
def test_the_workbook_reader_reads_the_published_shape_as_pandas_does(workbook: Path, which: str) -> None:
    from saudial.data import formats

    path = (
        workbook
        if which == "fixture"
        else Path(__file__).resolve().parents[1] / "samples" / "saudial_synthetic_sample.xlsx"
    )
    ours = formats.read_excel(path.read_bytes(), path.name, None, 64 << 20)
    theirs = pd.read_excel(path, sheet_name=formats.DEFAULT_SHEET, engine="openpyxl")
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
    assert list(ours.index) == list(range(2, len(ours) + 2))


@pytest.mark.parametrize("kind", ["records", "prompts", "chat"])
@pytest.mark.parametrize("rows", [3, 0])
def test_arrow_dataset_is_the_data_set_from_dict_makes(kind: str, rows: int) -> None:
    """data/examples.arrow_dataset builds the Arrow arrays itself: the data set must be `from_dict`'s, value for
    value and type for type, an empty one (an empty held-out side) too."""
    import datasets

    from saudial.data.chat_examples import FEATURES as CHAT_FEATURES

    values = {
        "prompt": ["### Instruction:\nوين", "", "a\tb"],
        "completion": ["السوق<|im_end|>", "x", ""],
        "input_ids": [[1, 2, 3], [], [2**31 - 1, 0]],
        "labels": [[-100, 2, 3], [], [-100, 7]],
        "assistant_masks": [[0, 1, 1], [], [1, 0]],
    }
    features = {
        "records": data_split.RECORD_FEATURES,
        "prompts": data_split.PROMPT_FEATURES,
        "chat": CHAT_FEATURES,
    }[kind]
    columns = {name: values[name][:rows] for name in features}
    ours = data_split.arrow_dataset(columns, features)
    theirs = datasets.Dataset.from_dict(columns, features=features)
    assert ours.features == theirs.features
    assert ours.data.table.equals(theirs.data.table, check_metadata=True)
    assert ours[:] == theirs[:] == columns and len(ours) == rows


def test_a_record_whose_prompt_fills_max_length_is_dropped_and_one_token_short_keeps_one_label() -> None:
    prompts = data_split.arrow_dataset(
        {"prompt": ["p1", "p2", "p3"], "completion": ["c1", "c2", "c3"]}, data_split.PROMPT_FEATURES
    )
    ids = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10], [5, 6, 7]]
    records = data_split.trainer_records(prompts, ids, [4, 3, 1], max_length=4)
    assert records["prompt"] == ["p2", "p3"]  # p1's prompt takes all 4 kept tokens: nothing left to learn
    assert records["input_ids"] == [[5, 6, 7, 8], [5, 6, 7]]
    assert records["labels"] == [[-100, -100, -100, 8], [-100, 6, 7]]
