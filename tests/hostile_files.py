"""Broken and hostile data files, built byte by byte, and a fingerprint of a directory tree (not a test module).

Shared by tests/test_hostile_inputs.py (each case through the real entry point) and
tests/test_hostile_fuzz.py (byte-wise mutations of valid files).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from saudial.devtools import synthetic

SHEET_XML = "xl/worksheets/sheet1.xml"
SHARED_STRINGS = "xl/sharedStrings.xml"
INLINE = re.compile(rb'<c ([^>]*?)t="inlineStr"([^>]*)><is><t(?: xml:space="preserve")?>(.*?)</t></is></c>', re.S)


def rezip(xlsx: bytes, change: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None) -> bytes:
    """The workbook with each part passed through `change` (None drops it), plus `extra` parts; valid zip."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = change(info.filename, source.read(info))
            if data is not None:
                target.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            target.writestr(name, data)
    return out.getvalue()


def shared_strings(xlsx: bytes) -> bytes:
    """openpyxl writes inline strings; Excel (and the published workbook) a shared-strings table: convert."""
    table: list[bytes] = []

    def shared(match: re.Match[bytes]) -> bytes:
        table.append(match.group(3))
        return b'<c %st="s"%s><v>%d</v></c>' % (match.group(1), match.group(2), len(table) - 1)

    with zipfile.ZipFile(io.BytesIO(xlsx)) as archive:
        sheet = INLINE.sub(shared, archive.read(SHEET_XML))
    sst = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="%d" uniqueCount="%d">'
        % (len(table), len(table))
        + b"".join(b'<si><t xml:space="preserve">%s</t></si>' % text for text in table)
        + b"</sst>"
    )
    content_type = b"application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
    relation = b"http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"

    def change(name: str, data: bytes) -> bytes:
        if name == SHEET_XML:
            return sheet
        if name == "[Content_Types].xml":
            override = b'<Override PartName="/xl/sharedStrings.xml" ContentType="%s"/>' % content_type
            return data.replace(b"</Types>", override + b"</Types>")
        if name == "xl/_rels/workbook.xml.rels":
            rel = b'<Relationship Type="%s" Target="sharedStrings.xml" Id="rIdShared"/>' % relation
            return data.replace(b"</Relationships>", rel + b"</Relationships>")
        return data

    return rezip(xlsx, change, {SHARED_STRINGS: sst})


def workbook_bytes(frame: pd.DataFrame, tmp: Path) -> bytes:
    """`frame` as an .xlsx with a shared-strings table, like the published file."""
    return shared_strings(synthetic.write(frame, tmp / "source.xlsx").read_bytes())


def flip_compressed_byte(xlsx: bytes, part: str, offset: int = 40) -> bytes:
    """One byte of `part`'s compressed data inverted, the zip directory left as it was."""
    with zipfile.ZipFile(io.BytesIO(xlsx)) as archive:
        info = archive.getinfo(part)
    header = info.header_offset
    name_len, extra_len = (
        int.from_bytes(xlsx[header + 26 : header + 28], "little"),
        int.from_bytes(xlsx[header + 28 : header + 30], "little"),
    )
    position = header + 30 + name_len + extra_len + min(offset, info.compress_size - 1)
    data = bytearray(xlsx)
    data[position] ^= 0xFF
    return bytes(data)


def tree_state(*roots: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under `roots` (not following links, never opening a FIFO or device): kind, size, content hash."""
    state: dict[str, tuple[object, ...]] = {}

    def entry(path: Path) -> tuple[object, ...]:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return ("link", os.readlink(path))
        if stat.S_ISREG(info.st_mode):
            if info.st_blocks * 512 < info.st_size:  # sparse: hash what is there without reading 200 MB of holes
                return ("sparse", info.st_size, info.st_mtime_ns)
            return ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        return (stat.S_IFMT(info.st_mode), info.st_mtime_ns)

    for root in roots:
        if not os.path.lexists(root):
            state[str(root)] = ("absent",)
            continue
        state[str(root)] = entry(root)
        if root.is_dir() and not root.is_symlink():
            for folder, dirs, files in os.walk(root):
                for name in dirs + files:
                    state[os.path.join(folder, name)] = entry(Path(folder, name))
    return state
