"""Start-up and data preparation: the garbage collector around the model libraries' imports and the records' making

Each case runs in its own interpreter: freezing is process-wide and would keep this test process's garbage.
The time it saves is a benchmark's (bench/startup.py, docs/benchmarks.md), not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECK = """
import gc, sys
from saudial.process.collector import long_lived_imports
{before}
enabled = gc.isenabled()
with long_lived_imports():
    inside = gc.isenabled()
    import json  # anything made inside is frozen with the rest
    made = [object() for _ in range(1000)]
print(enabled, inside, gc.isenabled(), gc.get_freeze_count() > 1000)
"""


def collector_states(before: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(before=before)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_imports_run_with_the_collector_paused_then_frozen() -> None:
    # on before, off inside, on after, and what existed (the imports' objects) frozen
    assert collector_states("") == "True False True True"


def test_a_collector_turned_off_stays_off() -> None:
    assert collector_states("gc.disable()") == "False False False True"


def test_the_data_is_prepared_with_the_collector_paused_and_its_garbage_collected_after() -> None:
    import gc
    import weakref

    from saudial.process.collector import paused

    class Node:
        pass

    assert gc.isenabled()
    with paused():
        inside = gc.isenabled()
        cycle = Node()
        cycle.me = cycle  # type: ignore[attr-defined]
        ref = weakref.ref(cycle)
        del cycle
        still = ref() is not None  # no automatic collection frees it inside
    assert (inside, still, gc.isenabled(), ref()) == (False, True, True, None)  # on again, the cycle freed
    gc.disable()
    try:
        with paused():
            pass
        assert not gc.isenabled()  # a collector turned off stays off
    finally:
        gc.enable()
