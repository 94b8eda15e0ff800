"""A finished run's files readable as the user's umask says, the safetensors files too.

Upstream: safetensors (0.8) creates every `*.safetensors` file with mode 0600 whatever the umask, where the run's
other files, written by Python, get 0666 less the umask (0644 under the usual 022). In a folder shared with a
group (a team's storage, a scheduled job's volume) the others could read an adapter's config but not its weights,
nor a merged model's. `promote` (rundir/staging.py) gives the run's safetensors files the mode of its other files
before they move into place; only files of the run's own staging folder are touched. tests/test_upstream.py
checks that safetensors still writes them so.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

UPSTREAM_MODE = 0o600


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask would set it for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask(directory: Path) -> int:
    """Give each `*.safetensors` file under `directory` that safetensors left 0600 the mode the umask gives a new
    file; returns how many changed."""
    mode = 0o666 & ~umask()
    changed = 0
    for path in directory.rglob("*.safetensors"):
        if path.is_symlink() or not path.is_file() or stat.S_IMODE(path.stat().st_mode) != UPSTREAM_MODE:
            continue
        if mode != UPSTREAM_MODE:
            path.chmod(mode)
            changed += 1
    return changed
