"""Python's cyclic garbage collector around the model libraries' imports and the data's preparation.

Importing torch, transformers, PEFT, TRL and datasets creates ~500,000 objects (modules, classes,
functions) that live as long as the process. With the collector on, each of the ~7 full collections the
imports trigger scans all of those made so far, and the interpreter's teardown at exit scans them again:
~1.1 s of the imports and ~1.2 s of the exit on 2 CPU cores (bench/startup.py, docs/benchmarks.md).
`long_lived_imports` pauses the collector during the imports, then freezes what exists (gc.freeze: a
permanent generation that collections skip) and turns it back on. Nothing is freed by reference counting
any later or earlier; only the collector's scans of objects that stay anyway are skipped. Cyclic garbage
that exists at the freeze (little, at start-up) is kept for the life of the process.

`paused` does the same for the data's preparation, without the freeze: the records and their token ids are
millions of lists, and each collection their making triggers scans those made so far. Preparing 100,000 rows
took 12.8-13.7 s with it paused against 14.2-14.4 s (2 CPU cores, bench/startup.py's child on the bench's
100,000-row workbook). The same pause around reading the workbook gained nothing, so it has none. The cyclic
garbage made meanwhile is collected once at its end (~0.1 s for 100,000 rows).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived_imports() -> Iterator[None]:
    """Collector paused inside, everything made so far frozen after; it ends on as it was before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextmanager
def paused() -> Iterator[None]:
    """Collector paused inside, the garbage made inside collected once after; it ends on as it was before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect()
