"""A property-based pass over the data readers (issue 12): a valid .xlsx, .csv or .jsonl, mutated byte by
byte, either loads or is refused with one DataError line; nothing else escapes, and no case takes long.

The mutations are deterministic (hypothesis' derandomize, no example database) and bounded in number, so
CI sees the same cases every run. Most run the loader in this process through the real data functions
(`workbook.load`, and translate's `read_inputs`); a handful go through the entry point as a subprocess.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from saudial.data import workbook  # noqa: E402
from saudial.devtools import synthetic  # noqa: E402
from saudial.errors import DataError  # noqa: E402
from saudial.jobs.translate import read_inputs  # noqa: E402
from tests.conftest import ENTRYPOINT, REPO, base_env  # noqa: E402
from tests.hostile_files import rezip, shared_strings  # noqa: E402

SECONDS_PER_CASE = 10.0  # a 20-row file loads in ~50 ms; anything near this bound is a hang or a blow-up
PARTS = ["xl/worksheets/sheet1.xml", "xl/sharedStrings.xml", "xl/workbook.xml", "[Content_Types].xml", "xl/styles.xml"]


def _seeds() -> dict[str, bytes]:
    frame = synthetic.make_rows(20, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        files = {s: synthetic.write(frame, Path(tmp) / f"seed{s}").read_bytes() for s in (".xlsx", ".csv", ".jsonl")}
    files[".xlsx"] = shared_strings(files[".xlsx"])
    return files


SEEDS = _seeds()

# Bytes that mean something to a CSV, JSON or XML parser, half the time; any byte otherwise.
SYNTAX = list(b',"\n\r\t{}[]:\\<>/=&;#_ 0x9')
edit = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=1 << 30),  # position, taken modulo the length
    st.one_of(st.sampled_from(SYNTAX), st.integers(min_value=0, max_value=255)),
)


def apply(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for op, position, byte in edits:
        if not buffer:
            break
        i = position % len(buffer)
        if op == "flip":
            buffer[i] ^= 1 << (byte % 8)
        elif op == "set":
            buffer[i] = byte
        elif op == "insert":
            buffer[i:i] = bytes([byte])
        elif op == "delete":
            del buffer[i : i + 1 + byte % 16]
        else:
            del buffer[i:]
    return bytes(buffer)


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes): the zip itself mutated, one part's XML mutated inside a valid zip, or a text file."""
    kind = draw(st.sampled_from(["xlsx-zip", "xlsx-part", ".csv", ".jsonl"]))
    edits = draw(st.lists(edit, min_size=1, max_size=6))
    if kind == "xlsx-zip":
        return ".xlsx", apply(SEEDS[".xlsx"], edits)
    if kind == "xlsx-part":
        part = draw(st.sampled_from(PARTS))
        return ".xlsx", rezip(SEEDS[".xlsx"], lambda name, data: apply(data, edits) if name == part else data)
    return kind, apply(SEEDS[kind], edits)


def check_outcome(load: Callable[[Path], object], path: Path) -> None:
    start = time.perf_counter()
    try:
        load(path)
        event(f"{path.suffix} loaded")
    except DataError as exc:
        message = str(exc)
        assert message and "\n" not in message and message.isprintable(), repr(message)
        assert "b'" not in message  # no bytes repr
        kind = re.sub(r"\d+", "N", message.split(str(path))[-1].strip())[:40]
        event(f"{path.suffix} refused: {kind}")  # pytest --hypothesis-show-statistics
    assert time.perf_counter() - start < SECONDS_PER_CASE


@pytest.mark.slow
@settings(
    max_examples=600,
    derandomize=True,
    database=None,
    deadline=None,  # the wall-clock bound is asserted per case instead, with room for a loaded CI machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=mutated_files())
def test_mutated_file_loads_or_is_refused(case: tuple[str, bytes]) -> None:
    suffix, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mutated{suffix}"
        path.write_bytes(data)
        check_outcome(workbook.load, path)
        check_outcome(lambda p: read_inputs(p, 200), path)


def test_the_mutations_reach_the_parsers() -> None:
    """Not only the zip checksum: part mutations hit openpyxl's XML, text mutations the CSV/JSON readers."""
    broken_xml = rezip(SEEDS[".xlsx"], lambda name, data: data[:-30] if name == PARTS[0] else data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.xlsx"
        path.write_bytes(broken_xml)
        with pytest.raises(DataError, match=r"broken XML"):
            workbook.load(path)
    with zipfile.ZipFile(io.BytesIO(SEEDS[".xlsx"])) as archive:
        assert set(PARTS) <= set(archive.namelist())


@pytest.fixture(scope="module")
def entry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-entry")


@pytest.mark.slow
@settings(max_examples=6, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=mutated_files())
def test_mutated_file_through_the_entry_point(case: tuple[str, bytes], tiny_model: Path, entry_dir: Path) -> None:
    suffix, data = case
    with tempfile.TemporaryDirectory(dir=entry_dir) as tmp:
        path = Path(tmp) / f"mutated{suffix}"
        path.write_bytes(data)
        env = base_env(tiny_model, path, Path(tmp) / "out")
        result = subprocess.run(
            [sys.executable, str(ENTRYPOINT), "--dry-run"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode in (0, 2), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == (result.returncode == 2)
