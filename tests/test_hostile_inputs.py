"""Hostile and broken inputs through the real entry point (issue 12): every one ends in a documented exit
code and one `error:` line that names the file or setting and the fix, never a traceback, never the
file's bytes, and nothing outside the run's own files changes.

Each case builds its file itself and runs the entry point's `main` in this process (tests/entry.py:
milliseconds, where a subprocess takes a second or more on 2 busy cores); each table keeps one case as a real
`entrypoint.py` subprocess. Data cases use `--dry-run` and a base model that does not exist: a bad file must
fail before any model is needed. `translate --input` cases use an adapter directory with nothing but an
adapter_config.json for the same reason. The few valid-but-odd inputs that must pass (control characters,
formula-leading text) load the tiny LFM2 in a subprocess.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saudial.config.settings import Settings, env_name
from saudial.devtools import synthetic
from tests.entry import (
    Built,
    Outcome,
    assert_one_line_error,
    data_env,
    dry_runs,
    run,
    run_in_process,
)
from tests.hostile_files import SHARED_STRINGS, SHEET_XML, flip_compressed_byte, rezip, tree_state, workbook_bytes

# --------------------------------------------------------------------------------------------------
# Data files, every format: each builder writes its file into `d` and returns (path, extra env, expected).

FRAME = synthetic.make_rows(40, seed=3)


def _xlsx(d: Path, frame: pd.DataFrame = FRAME) -> bytes:
    data = workbook_bytes(frame, d / ".build")
    _remove_tree(d / ".build")
    return data


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _write(d: Path, name: str, data: bytes) -> Path:
    path = d / name
    path.write_bytes(data)
    return path


def _frame_with(column: str, row: int, value: Any) -> pd.DataFrame:
    frame = FRAME.copy()
    frame[column] = frame[column].astype(object)
    frame.at[row, column] = value
    return frame


def _parquet(d: Path, name: str, table: pa.Table) -> Path:
    pq.write_table(table, d / name)
    return d / name


def _frame_table(frame: pd.DataFrame, **columns: pa.Array) -> pa.Table:
    """The frame as an Arrow table with some columns replaced (no pandas metadata, which would cast them back)."""
    data: dict[str, Any] = {name: pa.array([None if pd.isna(v) else v for v in frame[name]]) for name in frame.columns}
    return pa.table(data | columns)


def _sheet_change(part: str, change: Callable[[bytes], bytes]) -> Callable[[str, bytes], bytes]:
    return lambda name, data: change(data) if name == part else data


BAD_DATA: dict[str, Callable[[Path], Built]] = {
    # .xlsx / .xlsm
    "xlsx-html-page": lambda d: (_write(d, "page.xlsx", b"<!DOCTYPE html><html>Sign in</html>"), {}, "an HTML page"),
    "xlsx-old-xls": lambda d: (_write(d, "old.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)), {}, "97-2003"),
    "xlsx-empty": lambda d: (_write(d, "empty.xlsx", b""), {}, "this one is empty"),
    "xlsx-truncated": lambda d: (_write(d, "cut.xlsx", _xlsx(d)[:3000]), {}, "cut short or damaged"),
    "xlsx-zip-without-workbook": lambda d: (
        _write(d, "other.xlsx", rezip(_xlsx(d), lambda n, b: None if n == "xl/workbook.xml" else b)),
        {},
        "corrupt Excel workbook (a part it needs is missing)",
    ),
    "xlsx-broken-sheet-xml": lambda d: (
        _write(d, "xml.xlsx", rezip(_xlsx(d), _sheet_change(SHEET_XML, lambda b: b[: len(b) // 2]))),
        {},
        "corrupt Excel workbook (broken XML",
    ),
    "xlsx-broken-shared-strings": lambda d: (
        _write(
            d, "sst.xlsx", rezip(_xlsx(d), _sheet_change(SHARED_STRINGS, lambda b: b.replace(b"<si>", b"<si><", 1)))
        ),
        {},
        "corrupt Excel workbook (broken XML",
    ),
    "xlsx-flipped-compressed-byte": lambda d: (
        _write(d, "flip.xlsx", flip_compressed_byte(_xlsx(d), SHEET_XML)),
        {},
        "corrupt Excel workbook (a damaged compressed part)",
    ),
    "xlsx-shared-strings-bomb": lambda d: (
        _write(
            d,
            "bomb.xlsx",
            rezip(_xlsx(d), _sheet_change(SHARED_STRINGS, lambda b: b + b" " * (201 << 20))),  # 200 kB on disk
        ),
        {},
        "unpacks to 201 MB, over SAUDIAL_MAX_DATA_FILE_MB=200",
    ),
    "xlsx-compression-ratio": lambda d: (
        _write(d, "ratio.xlsx", rezip(_xlsx(d), _sheet_change(SHARED_STRINGS, lambda b: b + b" " * (5 << 20)))),
        {},
        "x (over 200x): it is not a normal workbook",
    ),
    "xlsx-cell-at-XFD1048576": lambda d: (
        _write(
            d,
            "far.xlsx",
            rezip(
                _xlsx(d),
                _sheet_change(
                    SHEET_XML,
                    lambda b: b.replace(
                        b"</sheetData>", b'<row r="1048576"><c r="XFD1048576"><v>1</v></c></row></sheetData>'
                    ),
                ),
            ),
        ),
        {},
        "has a sheet spanning 1,048,576 rows x 16,384 columns",
    ),
    "xlsx-billion-laughs": lambda d: (
        _write(
            d,
            "laughs.xlsx",
            rezip(
                _xlsx(d),
                _sheet_change(
                    SHARED_STRINGS,
                    lambda b: b.replace(
                        b"?>\n",
                        b'?>\n<!DOCTYPE s [<!ENTITY a "aaaaaaaaaa">'
                        + b"".join(
                            b'<!ENTITY a%d "%s">' % (i, b"&a%s;" % (b"%d" % (i - 1) if i > 1 else b"") * 10)
                            for i in range(1, 9)
                        )
                        + b"]>",
                        1,
                    ).replace(b'preserve">', b'preserve">&a8;', 1),
                ),
            ),
        ),
        {},
        "corrupt Excel workbook (broken XML",
    ),
    "xlsx-number-as-dialect": lambda d: (
        _write(d, "num.xlsx", _xlsx(d, frame=_frame_with("Dialect", 5, 7))),
        {},
        "row 7: the Dialect cell is a number, not text",
    ),
    "xlsx-date-as-english": lambda d: (
        _write(d, "date.xlsx", _xlsx(d, frame=_frame_with("English Text", 0, dt.datetime(2024, 1, 2)))),
        {},
        "row 2: the English Text cell is a date or time",
    ),
    "xlsx-bool-as-translation": lambda d: (
        _write(d, "bool.xlsx", _xlsx(d, frame=_frame_with("Dialect Translation", 9, True))),
        {},
        "row 11: the Dialect Translation cell is a true/false value",
    ),
    "xlsx-unknown-sheet": lambda d: (_write(d, "s.xlsx", _xlsx(d)), {"SAUDIAL_SHEET_NAME": "Nope"}, "sheets: SADGLD"),
    "xlsm-broken-sheet-xml": lambda d: (
        _write(d, "macro.xlsm", rezip(_xlsx(d), _sheet_change(SHEET_XML, lambda b: b.replace(b"<row", b"<row <", 1)))),
        {},
        "corrupt Excel workbook (broken XML",
    ),
    "xlsm-number-as-english": lambda d: (
        _write(d, "macro.xlsm", _xlsx(d, frame=_frame_with("English Text", 3, 42))),
        {},
        "row 5: the English Text cell is a number",
    ),
    "xlsx-garbage-headers-not-echoed": lambda d: (
        _write(d, "hdr.xlsx", _xlsx(d, frame=FRAME.rename(columns={"Dialect": "\x9b31m\u202e" + "H" * 300}))),
        {},
        "lacks column(s) ['Dialect']",
    ),
    # .csv
    "csv-latin1": lambda d: (
        _write(d, "latin.csv", "Dialect,English Text,Dialect Translation\nNajdi,café,x\n".encode("latin-1")),
        {},
        "is not UTF-8 text (first bad byte on line 2)",
    ),
    "csv-unterminated-quote": lambda d: (
        _write(d, "quote.csv", b'Dialect,English Text,Dialect Translation\nNajdi,"open,x\nHijazi,a,b\n'),
        {},
        "bad quoting at line",
    ),
    "csv-more-fields-than-header": lambda d: (
        _write(d, "wide.csv", b"Dialect,English Text,Dialect Translation\nNajdi,a,b\nHijazi,a,b,c,d\n"),
        {},
        "line 3 has 5 fields, the header 3",
    ),
    "csv-empty": lambda d: (_write(d, "empty.csv", b""), {}, "is empty"),
    "csv-two-dialect-columns": lambda d: (
        _write(d, "two.csv", b"Dialect,English Text,Dialect Translation, DIALECT\nNajdi,a,b,Hijazi\n"),
        {},
        "has more than one 'Dialect' column",
    ),
    "csv-numeric-dialect": lambda d: (
        synthetic.write(_frame_with("Dialect", 4, "7"), d / "seven.csv"),
        {},
        "row 6: the Dialect value is not a dialect name (it has no letters",
    ),
    "csv-dialect-with-digits": lambda d: (
        synthetic.write(_frame_with("Dialect", 0, "Najdi 2"), d / "digits.csv"),
        {},
        "row 2: the Dialect value is not a dialect name (it contains a digit",
    ),
    "csv-binary-garbage": lambda d: (_write(d, "bin.csv", bytes(range(256)) * 8), {}, "is not UTF-8 text"),
    # .jsonl
    "jsonl-bad-line": lambda d: (
        _write(d, "bad.jsonl", synthetic.write(FRAME, d / "ok.jsonl").read_bytes() + b'{"Dialect": oops}\n'),
        {},
        "line 41 is not valid JSON (column 13)",
    ),
    "jsonl-array-line": lambda d: (
        _write(d, "arr.jsonl", b'{"Dialect": "Najdi"}\n[1, 2]\n'),
        {},
        "line 2 is not a JSON object",
    ),
    "jsonl-deep-nesting": lambda d: (
        _write(d, "deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        {},
        "line 1 is not valid JSON",
    ),
    "jsonl-number-as-english": lambda d: (
        synthetic.write(_frame_with("English Text", 7, 12345), d / "num.jsonl"),
        {},
        "line 8: the English Text cell is a number",
    ),
    "jsonl-list-as-dialect": lambda d: (
        synthetic.write(_frame_with("Dialect", 2, ["Najdi"]), d / "list.jsonl"),
        {},
        "line 3: the Dialect cell is a list",
    ),
    "jsonl-object-as-context": lambda d: (
        synthetic.write(_frame_with("In-Game Context", 1, {"a": 1}), d / "obj.jsonl"),
        {},
        "line 2: the In-Game Context cell is a mapping",
    ),
    "jsonl-no-lines": lambda d: (_write(d, "blank.jsonl", b"\n  \n"), {}, "has no JSON lines"),
    # .parquet
    "parquet-garbage": lambda d: (
        _write(d, "junk.parquet", b"PAR1" + bytes(range(256)) + b"PAR1"),
        {},
        "is not a readable Parquet file",
    ),
    "parquet-truncated": lambda d: (
        _write(d, "cut.parquet", synthetic.write(FRAME, d / "ok.parquet").read_bytes()[:-200]),
        {},
        "is not a readable Parquet file",
    ),
    "parquet-bytes-column": lambda d: (
        _parquet(d, "bytes.parquet", _frame_table(FRAME, **{"English Text": pa.array([b"x"] * len(FRAME))})),
        {},
        "row 1: the English Text cell is bytes",
    ),
    "parquet-list-column": lambda d: (
        _parquet(d, "list.parquet", _frame_table(FRAME, **{"Dialect Translation": pa.array([["a"]] * len(FRAME))})),
        {},
        "row 1: the Dialect Translation cell is a list",
    ),
    "parquet-int-dialect": lambda d: (
        _parquet(d, "int.parquet", _frame_table(FRAME, Dialect=pa.array(range(len(FRAME))))),
        {},
        "row 1: the Dialect cell is a number",
    ),
    "parquet-timestamp-context": lambda d: (
        _parquet(
            d,
            "ts.parquet",
            _frame_table(FRAME, **{"In-Game Context": pa.array([dt.datetime(2024, 1, 1)] * len(FRAME))}),
        ),
        {},
        "row 1: the In-Game Context cell is a date or time",
    ),
    "parquet-duplicate-columns": lambda d: (
        _parquet(
            d,
            "dup.parquet",
            pa.Table.from_arrays(
                [pa.array(["Najdi"]), pa.array(["a"]), pa.array(["b"])], names=["Dialect", "English Text", "Dialect"]
            ),
        ),
        {},
        "has more than one 'Dialect' column",
    ),
    "parquet-unpacks-over-cap": lambda d: (
        _parquet(d, "big.parquet", pa.table({"English Text": [f"{i:05}" + "x" * 995 for i in range(3000)]})),
        {"SAUDIAL_MAX_DATA_FILE_MB": "1"},
        "unpacks to 3 MB, over SAUDIAL_MAX_DATA_FILE_MB=1",
    ),
    # Not data files at all
    "symlink-to-dev-zero": lambda d: (
        _link(d / "zero.csv", "/dev/zero"),
        {},
        "zero.csv is a character device",
    ),
    "dev-zero-itself": lambda d: (Path("/dev/zero"), {}, "/dev/zero is a character device"),
    "fifo": lambda d: (_fifo(d / "pipe.csv"), {}, "is a named pipe (FIFO)"),
    "socket": lambda d: (_socket(d / "sock.csv"), {}, "is a socket"),
    "directory": lambda d: (_mkdir(d / "folder.xlsx"), {}, "is a directory, not a data file"),
    "dangling-symlink": lambda d: (_link(d / "gone.csv", str(d / "missing.csv")), {}, "points to nothing"),
    "symlink-named-with-controls": lambda d: (
        _link(d / "x\x1b[2J\u202e.csv", str(d / "missing.csv")),
        {},
        str(d) + "/x\\x1b[2J\\u202e.csv is a symlink that points to nothing",
    ),
    "sparse-file-over-cap": lambda d: (
        _sparse(d / "huge.csv", 201 << 20),
        {},
        "is 201 MB, over SAUDIAL_MAX_DATA_FILE_MB=200",
    ),
    "file-over-lowered-cap": lambda d: (
        synthetic.write(synthetic.make_rows(2500, seed=1), d / "big.csv"),
        {"SAUDIAL_MAX_DATA_FILE_MB": "1"},
        "MB, over SAUDIAL_MAX_DATA_FILE_MB=1",
    ),
    "missing-file": lambda d: (d / "nope.xlsx", {}, "data file not found"),
    "unsupported-suffix": lambda d: (_write(d, "data.txt", b"hello"), {}, "unsupported data file type '.txt'"),
    "empty-data-setting": lambda d: ("", {}, "SAUDIAL_DATA='' is invalid: it is empty"),
}


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # the file stays after the close; nothing listens
    server.close()
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    (path / "inside.txt").write_text("a directory named like a workbook")
    return path


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


@pytest.fixture(scope="module")
def data_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every BAD_DATA case through the entry point's `main`, in this process."""
    return dry_runs(tmp_path_factory.mktemp("data-cases"), BAD_DATA)


def test_a_bad_data_file_through_the_entry_point_process(tmp_path: Path) -> None:
    """The contract end to end, once: a real `entrypoint.py --dry-run` process on a workbook whose header is
    terminal escapes and 300 characters: exit 2, one line, nothing of the header on a real stderr."""
    case = "xlsx-garbage-headers-not-echoed"
    result, expected, unchanged = dry_runs(tmp_path, {case: BAD_DATA[case]}, runner=run)[case]
    line = assert_one_line_error(result, expected)
    assert unchanged
    assert "\x9b" not in result.stderr and "\u202e" not in result.stderr and "HHHH" not in line


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_file_exits_2_with_one_line(case: str, data_results: dict[str, Any]) -> None:
    result, expected, unchanged = data_results[case]
    line = assert_one_line_error(result, expected)
    assert unchanged  # nothing in the data directory or the output directory changed
    if case == "xlsx-garbage-headers-not-echoed":  # the garbage header is neither printed nor escaped-and-printed
        assert "\x9b" not in result.stderr and "\u202e" not in result.stderr
        assert "HHHH" not in line and "and 1 more not shown" in line


def _passwd_lines() -> list[str]:
    return [line for line in Path("/etc/passwd").read_text().splitlines() if len(line) > 8]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl", ".parquet"])
def test_symlink_to_a_system_file_is_named_but_never_echoed(suffix: str, tmp_path: Path) -> None:
    """The message names the path the user gave; neither the file's contents nor where the link points."""
    d, out = tmp_path / "data", tmp_path / "out"
    d.mkdir()
    link = _link(d / f"data{suffix}", "/etc/passwd")
    before = tree_state(d, out)
    result = run_in_process(data_env(link, out), "--dry-run")
    assert_one_line_error(result, str(link))
    assert "/etc/passwd" not in result.stderr
    shown = result.stdout + result.stderr
    leaked = [line for line in _passwd_lines() if line in shown or line.split(":")[0] + ":x:" in shown]
    assert not leaked and "/bin/" not in shown.split("error: ")[-1]
    assert tree_state(d, out) == before


def test_symlink_to_proc_environ_never_leaks_the_token(tmp_path: Path) -> None:
    """/proc/self/environ reports size 0 and holds HF_TOKEN: the read is capped and nothing of it is shown.
    A subprocess: the file holds the environment a process started with, which only a new process sets."""
    d, out = tmp_path / "data", tmp_path / "out"
    d.mkdir()
    link = _link(d / "environ.csv", "/proc/self/environ")
    result = run(data_env(link, out), "--dry-run")
    assert_one_line_error(result, "lacks column(s)")  # SECRET is checked there too
    assert "more not shown (not plain names)" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_unreadable_file(tmp_path: Path) -> None:
    path = synthetic.write(FRAME, tmp_path / "locked.csv")
    path.chmod(0)
    result = run_in_process(data_env(path, tmp_path / "out"), "--dry-run")
    assert_one_line_error(result, "permission denied")


# --------------------------------------------------------------------------------------------------
# Text that is odd but valid: stripped and counted, the run goes on.


@pytest.mark.slow
def test_control_characters_are_stripped_and_counted(tiny_model: Path, tmp_path: Path) -> None:
    frame = FRAME.copy()
    # RLO before the quote would defeat the quote stripping; NEL and CSI are C1 controls (C0 cannot be in XML).
    frame.at[0, "English Text"] = '\u202e"Open\x85 the door.\x9b"\u200b'
    frame.at[0, "Dialect Translation"] = "\ufeff\u2066" + str(frame.at[0, "Dialect Translation"]) + "\u2069"
    frame.at[1, "Dialect"] = "Najdi\u200f"
    path = tmp_path / "data" / "controls.xlsx"
    path.parent.mkdir()
    path.write_bytes(_xlsx(path.parent, frame=frame))
    before = tree_state(path.parent, tmp_path / "out")
    result = run(data_env(path, tmp_path / "out", model=tiny_model), "--dry-run", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "invisible control characters removed 8" in result.stderr
    assert not re.search("[\x80-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]", result.stderr)
    assert tree_state(path.parent, tmp_path / "out") == before


# --------------------------------------------------------------------------------------------------
# Settings: every numeric setting with 0, a negative number, NaN, inf and a huge value.

NUMERIC = [
    name for name, info in Settings.model_fields.items() if info.annotation in (int, float, int | None, float | None)
]
ZERO_IS_VALID = {"eval_size", "warmup_ratio", "weight_decay", "lora_dropout", "seed", "dataloader_num_workers", "min_p"}
VALUES = {"zero": "0", "negative": "-3", "nan": "nan", "inf": "inf", "huge": "1e30"}
HUGE_INT = str(10**30)
SETTING_CASES = [(name, label) for name in NUMERIC for label in VALUES]


def _value(name: str, label: str) -> str:
    info = Settings.model_fields[name]
    if label == "huge" and info.annotation in (int, int | None):
        return HUGE_INT
    return VALUES[label]


def _accepted(name: str, label: str) -> bool:
    return label == "zero" and name in ZERO_IS_VALID


def _run_setting(
    case: tuple[str, str], root: Path, runner: Callable[..., Outcome] = run_in_process
) -> tuple[Outcome, bool]:
    name, label = case
    d, out = root / f"{name}-{label}", root / f"{name}-{label}" / "out"
    d.mkdir()
    before = tree_state(d)
    env = data_env(d / "missing.xlsx", out, **{env_name(name): _value(name, label)})
    result = runner(env, "--dry-run")
    return result, tree_state(d) == before


@pytest.fixture(scope="module")
def setting_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    root = tmp_path_factory.mktemp("settings")
    return {case: _run_setting(case, root) for case in SETTING_CASES}


def test_every_numeric_setting_is_covered() -> None:
    assert len(NUMERIC) >= 25 and "num_train_epochs" in NUMERIC and "max_data_file_mb" in NUMERIC
    for name in NUMERIC:  # every number has an upper bound
        metadata = Settings.model_fields[name].metadata
        assert any(hasattr(m, "le") or hasattr(m, "lt") for m in metadata), name


@pytest.mark.parametrize("case", SETTING_CASES, ids=[f"{n}={label}" for n, label in SETTING_CASES])
def test_numeric_setting_out_of_range_exits_2(case: tuple[str, str], setting_results: dict[Any, Any]) -> None:
    name, label = case
    result, unchanged = setting_results[case]
    assert unchanged
    if _accepted(name, label):  # accepted: the run goes on to the data check
        assert_one_line_error(result, "data file not found")
    else:
        assert_one_line_error(result, f"{env_name(name)}='{_value(name, label)}' is invalid")


def test_a_bad_setting_through_the_entry_point_process(tmp_path: Path) -> None:
    """The settings contract end to end, once: a real process given SAUDIAL_NUM_TRAIN_EPOCHS=nan."""
    result, unchanged = _run_setting(("num_train_epochs", "nan"), tmp_path, runner=run)
    assert unchanged
    assert_one_line_error(result, "SAUDIAL_NUM_TRAIN_EPOCHS='nan' is invalid")


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_output_dir_is_a_settings_error(value: str, tmp_path: Path) -> None:
    env = data_env(tmp_path / "missing.xlsx", tmp_path / "out")
    env["SAUDIAL_OUTPUT_DIR"] = value
    before = tree_state(tmp_path)
    assert_one_line_error(run_in_process(env, "--dry-run"), f"SAUDIAL_OUTPUT_DIR='{value}' is invalid: it is empty")
    assert tree_state(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# translate --input: the same reader and rules, before the adapter or any model is looked at.


def _dangling_output(d: Path) -> Path:
    """--output names a symlink to a file that does not exist: writing would create a file elsewhere."""
    _link(d / "out.csv", str(d / "elsewhere.csv"))
    return _write(d, "lines.csv", b"English Text\nHello\n")


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], list[str], dict[str, str], str]] = {
    "passwd-symlink": (lambda d: _link(d / "lines.csv", "/etc/passwd"), [], {}, "lines.csv"),
    "dev-zero": (lambda d: _link(d / "lines.xlsx", "/dev/zero"), [], {}, "is a character device"),
    "fifo": (lambda d: _fifo(d / "lines.jsonl"), [], {}, "is a named pipe (FIFO)"),
    "directory": (lambda d: _mkdir(d / "lines.csv"), [], {}, "is a directory"),
    "broken-xml": (
        lambda d: _write(d, "lines.xlsx", rezip(_xlsx(d), _sheet_change(SHEET_XML, lambda b: b[:-40]))),
        [],
        {},
        "corrupt Excel workbook (broken XML",
    ),
    "latin1-csv": (lambda d: _write(d, "lines.csv", "English Text\ncafé\n".encode("latin-1")), [], {}, "not UTF-8"),
    "bad-jsonl-line": (
        lambda d: _write(d, "lines.jsonl", b'{"English Text": "Hi"}\n{"English Text": \n'),
        [],
        {},
        "line 2 is not valid JSON",
    ),
    "parquet-garbage": (lambda d: _write(d, "lines.parquet", b"PAR1garbagePAR1"), [], {}, "not a readable Parquet"),
    "number-as-english": (
        lambda d: _write(d, "lines.xlsx", _xlsx(d, frame=_frame_with("English Text", 2, 3.5))),
        [],
        {},
        "row 4: the English Text cell is a number",
    ),
    "number-under-an-odd-header": (
        lambda d: _write(d, "lines.jsonl", '{"\u202eEnglish Text\u200b": 5}\n'.encode()),
        [],
        {},
        "line 1: the English Text cell is a number",
    ),
    "numeric-dialect": (
        lambda d: _write(d, "lines.csv", b"English Text,Dialect\nHello,Najdi\nBye,7\n"),
        [],
        {},
        "row 3: the Dialect value is not a dialect name",
    ),
    "no-english-column": (
        lambda d: _write(d, "lines.csv", b"Text,Dialect\nHello,Najdi\n"),
        [],
        {},
        "has no 'English Text' column (found ['Text', 'Dialect'])",
    ),
    "over-the-cap": (
        lambda d: synthetic.write(synthetic.make_rows(2500, seed=1), d / "lines.csv"),
        [],
        {"SAUDIAL_MAX_DATA_FILE_MB": "1"},
        "over SAUDIAL_MAX_DATA_FILE_MB=1",
    ),
    "output-not-a-table": (
        lambda d: _write(d, "lines.csv", b"English Text\nHello\n"),
        ["--output", "out.txt"],
        {},
        "has an unsupported type",
    ),
    "output-is-a-dangling-link": (_dangling_output, ["--output", "out.csv"], {}, "out.csv already exists"),
}


# One case as a real process (the contract end to end); the rest through `main` in this process.
TRANSLATE_RUNNERS = [
    pytest.param(case, run if case == "passwd-symlink" else run_in_process, id=case) for case in BAD_INPUTS
]


@pytest.mark.parametrize(("case", "runner"), TRANSLATE_RUNNERS)
def test_translate_rejects_a_bad_input_before_any_model(
    case: str, runner: Callable[..., Outcome], tmp_path: Path, no_model_adapter: Path
) -> None:
    d = tmp_path / "inputs"
    d.mkdir()
    build, args, extra, expected = BAD_INPUTS[case]
    path = build(d)
    args = [a if not a.startswith("out.") else str(d / a) for a in args]
    env = data_env(tmp_path / "unused.xlsx", tmp_path / "out", **extra)
    before = tree_state(d, no_model_adapter, tmp_path / "out")
    result = runner(
        env, "translate", "--adapter", str(no_model_adapter), "--dialect", "Najdi", "--input", str(path), *args
    )
    assert_one_line_error(result, expected)
    assert tree_state(d, no_model_adapter, tmp_path / "out") == before
    if case == "passwd-symlink":  # named as given: neither the link's target nor its contents
        assert not [line for line in _passwd_lines() if line in result.stderr] and "/etc/passwd" not in result.stderr


# --------------------------------------------------------------------------------------------------
# translate's outputs: formula-leading text escaped in spreadsheets, kept as is in JSONL/Parquet.


@pytest.fixture(scope="module")
def untrained_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny LFM2, saved without training: enough for translate to load and run."""
    from peft import get_peft_model

    from saudial.model.loading import load_model, load_tokenizer
    from saudial.model.lora import lora_config

    settings = Settings.model_validate({"model_name_or_path": str(tiny_model), "quantization": "none"})
    adapter = tmp_path_factory.mktemp("untrained") / "adapter"
    get_peft_model(load_model(settings), lora_config(settings)).save_pretrained(adapter)
    load_tokenizer(settings).save_pretrained(adapter)
    return adapter


FORMULAS = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "plain text"]


@pytest.mark.slow
def test_translate_escapes_formulas_in_spreadsheets(untrained_adapter: Path, tmp_path: Path) -> None:
    from openpyxl import load_workbook

    source = tmp_path / "lines.jsonl"
    pd.DataFrame({"English Text": FORMULAS, "Note": ["=1+2"] * len(FORMULAS)}).to_json(
        source, orient="records", lines=True
    )
    env = data_env(tmp_path / "unused.xlsx", tmp_path / "out", SAUDIAL_MAX_NEW_TOKENS="4")
    for key in ("SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_OUTPUT_DIR"):
        env.pop(key)
    target = tmp_path / "out.xlsx"  # .csv, .jsonl, .parquet: test_write_table_escapes_every_text_cell_of_a_spreadsheet
    result = run(
        env, "translate", "--adapter", str(untrained_adapter), "--dialect", "Najdi", "--input", str(source),
        "--output", str(target), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sheet = load_workbook(target).active
    assert sheet is not None
    cells = list(sheet.iter_rows(min_row=2, values_only=False))
    assert all(c.data_type == "s" for row in cells for c in row if c.value is not None)  # strings, never formulas
    assert [row[0].value for row in cells] == ["'" + f if f != "plain text" else f for f in FORMULAS]
    assert {row[1].value for row in cells} == {"'=1+2"} and len(cells[0]) == 3  # + Model Translation


def test_write_table_escapes_every_text_cell_of_a_spreadsheet(tmp_path: Path) -> None:
    from openpyxl import load_workbook

    from saudial.jobs.result_files import write_table

    frame = pd.DataFrame(
        {"=cmd": ["=1", "ok", None], "n": [-5, 2.5, float("nan")], "Model Translation": ["@x", "\rb", "c"]}
    )
    write_table(frame, tmp_path / "t.xlsx")
    sheet = load_workbook(tmp_path / "t.xlsx").active
    assert sheet is not None
    rows = [[(c.value, c.data_type) for c in row] for row in sheet.iter_rows()]
    assert rows[0] == [("'=cmd", "s"), ("n", "s"), ("Model Translation", "s")]
    assert rows[1] == [("'=1", "s"), (-5, "n"), ("'@x", "s")]  # a negative number stays a number
    assert rows[2][2] == ("'\nb", "s")  # CR is a line break in a cell; the escape stays
    write_table(frame, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[:2] == ["'=cmd,n,Model Translation", "'=1,-5.0,'@x"]
    write_table(frame, tmp_path / "t.parquet")  # JSONL and Parquet keep the text as it is
    assert pd.read_parquet(tmp_path / "t.parquet")["=cmd"].iloc[0] == "=1"
    write_table(frame, tmp_path / "t.jsonl")
    assert pd.read_json(tmp_path / "t.jsonl", lines=True)["Model Translation"].tolist() == ["@x", "\rb", "c"]
    with pytest.raises(FileExistsError):
        write_table(frame, tmp_path / "t.csv")  # never over an existing file


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".xlsx"])
def test_control_characters_are_counted_in_every_format(suffix: str, tiny_model: Path, tmp_path: Path) -> None:
    """In-process: the count reaches the data summary (and so the manifest); NUL only where XML allows it."""
    from saudial.data import workbook
    from saudial.data.examples import split, summarize, to_prompt_completion
    from saudial.model.loading import load_tokenizer

    frame = FRAME.copy()
    nul = "" if suffix == ".xlsx" else "\x00"
    frame.at[0, "English Text"] = f'\u202e"Open{nul} the door."\u2069'
    dataset = workbook.load(synthetic.write(frame, tmp_path / f"controls{suffix}"))
    assert dataset.control_chars_removed == (2 if suffix == ".xlsx" else 3)
    row = dataset.rows.iloc[0]
    assert row.english == "Open the door."  # the quotes are stripped once the controls are gone
    parts = split(dataset.rows, 0.1, seed=1)
    tokenizer = load_tokenizer(Settings.model_validate({"model_name_or_path": str(tiny_model)}))
    summary = summarize(dataset, parts, tokenizer, 64, to_prompt_completion(parts.train))
    assert summary["control_chars_removed"] == dataset.control_chars_removed
