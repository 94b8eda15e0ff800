"""A local base model's content hash (the run record's `model.content_sha256`), computed in the background.

A run from a local model directory records one sha256 over the names and contents of its files
(model/loading.resolve_revision), so a resume, or anyone reading the record later, knows which weights the
adapter was trained on. For LFM2-1.2B that is ~2.3 GB to read and hash: ~2 s on the bench's H100 machine
(bench/startup.py --gpu: "train(): output dir"), spent before the model loads. hashlib and file reads release
the GIL on large blocks, so `start` hashes in a thread from the moment the settings are known, while the model
libraries import, and `sha256` waits for that result (or hashes in the caller's thread where none was started).
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future
from pathlib import Path

_started: dict[Path, Future[str]] = {}
_lock = threading.Lock()


def tree_sha256(folder: Path) -> str:
    """One sha256 over the relative names and the contents of the files under `folder` (hidden ones left out)."""
    digest = hashlib.sha256()
    files = [
        p for p in folder.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts)
    ]
    for path in sorted(files):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def start(folder: Path) -> None:
    """Hash `folder` in a daemon thread (once per folder and process); `sha256` collects the result."""
    key = folder.resolve()
    with _lock:
        if key in _started:
            return
        future: Future[str] = Future()
        _started[key] = future

    def work() -> None:
        try:
            future.set_result(tree_sha256(key))
        except BaseException as exc:  # an unreadable file: raised where the hash is asked for, as before
            future.set_exception(exc)

    threading.Thread(target=work, name="model-content-hash", daemon=True).start()


def sha256(folder: Path) -> str:
    """`tree_sha256(folder)`: the background result where `start` began it, else computed now."""
    with _lock:
        future = _started.get(folder.resolve())
    return future.result() if future is not None else tree_sha256(folder)
