"""bench/device-run.sh: the table's rows it asks bench.py for are rows bench.py runs.

A renamed configuration would otherwise drop out of the table silently (bench.py's --only runs nothing for a
name prefix that matches no row), and the GPU call that should have measured it is spent.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench import bench

REPO = Path(__file__).resolve().parent.parent


def test_the_tables_rows_are_rows_bench_runs() -> None:
    script = (REPO / "bench" / "device-run.sh").read_text()
    rows = re.search(r'^TABLE_ROWS="([^"]+)"', script, re.MULTILINE)
    assert rows, "device-run.sh names the table's rows in TABLE_ROWS"
    source = (REPO / "bench" / "bench.py").read_text()
    # configs' rows, and the scaling section's, picked by name there
    names = [name for name, _, _ in bench.configurations(smoke=False)] + re.findall(r'picked\("([^"]+)"\)', source)
    missing = [prefix for prefix in rows.group(1).split(";") if not any(n.startswith(prefix) for n in names)]
    assert not missing, f"device-run.sh's TABLE_ROWS names rows bench.py does not run: {missing}"
