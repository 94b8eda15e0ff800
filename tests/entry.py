"""The entry point as the tests run it (not a test module): a real subprocess, or `cli.main.main` in this
process, and what its stderr must look like when it refuses something.

`run` starts `python entrypoint.py ARGS` as a user would. `run_in_process` calls the same `main(ARGS)` in
the test process with `env` as the whole environment, the working directory the subprocess gets, stdout
and stderr (log lines and Python warnings included) captured as text: the same settings loading, the same
readers and the same exit-code mapping, without a second of interpreter start and imports per case. The
bad-setting and bad-file tables run in process; each module keeps one subprocess per command it covers, so
the entry point itself (its imports, `sys.exit`, stderr of a real process) stays checked end to end.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ENTRYPOINT, REPO, base_env

# An exception or a Python warning printed by anyone (`ValueError: ...`, `file.py:84: UserWarning: ...`).
EXCEPTION_LINE = re.compile(r"\w(Error|Exception|Warning): ")
SECRET = "hf_HostileInputsNeverLeakThis0123456789"


@dataclass
class Result:
    """What `run_in_process` saw: the fields of subprocess.CompletedProcess that the tests read."""

    returncode: int
    stdout: str
    stderr: str


Outcome = subprocess.CompletedProcess[str] | Result


def run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python entrypoint.py ARGS` as a real subprocess with the environment `env`."""
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# The filters of a Python started without -W: what a subprocess of the entry point would print.
_PYTHON_DEFAULT_FILTERS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_in_process(env: dict[str, str], *args: str) -> Result:
    """`main(ARGS)` here, as `python entrypoint.py ARGS` would run it; the process's state put back after.

    For commands that fail before a model is loaded (settings, data files, inputs): main's logging setup,
    warnings filters, tqdm line mode and gc.freeze are process-wide, and each is undone here.
    """
    from saudial.cli import logs
    from saudial.cli.main import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    patched_tqdm = bool(logs._UPSTREAM)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        root.handlers = []  # so that logs.setup's basicConfig logs to the captured stderr, as in a process
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.resetwarnings()
            for category in _PYTHON_DEFAULT_FILTERS:
                warnings.simplefilter("ignore", category)
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        root.handlers, root.level = saved_handlers, saved_level
        gc.unfreeze()  # main freezes what exists once the model libraries are imported (process/collector.py)
        if not patched_tqdm and logs._UPSTREAM:
            from tqdm import std

            for name, method in logs._UPSTREAM.items():
                setattr(std.tqdm, name, method)
            logs._UPSTREAM.clear()
    printed = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, None) for w in caught)
    return Result(code, out.getvalue(), printed + err.getvalue())


def assert_one_line_error(result: Outcome, expected: str, code: int = 2) -> str:
    """Exit `code`; stderr ends in exactly one `error:` line holding `expected`; no traceback, no warning, no
    control characters, never the token."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert not [line for line in lines[:-1] if EXCEPTION_LINE.search(line)], result.stderr[-2000:]
    assert expected in errors[0], errors[0]
    assert errors[0].isprintable(), repr(errors[0])
    assert SECRET not in result.stdout + result.stderr
    return errors[0]


def error_line(stderr: str) -> str:
    """The one `error:` line (the last line of stderr); no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def data_env(data: Path | str, out: Path, model: Path | None = None, **extra: str) -> dict[str, str]:
    """A dry run of `train` on `data`; no model exists unless one is given; HF_TOKEN set to SECRET."""
    env = base_env(model or out.parent / "no-model-here", Path(data), out, HF_TOKEN=SECRET, **extra)
    env["SAUDIAL_DATA"] = str(data)  # as given: "" stays empty
    return env


def run_all(cases: list[Any], one: Callable[[Any], Any]) -> dict[Any, Any]:
    """`one(case)` for every case, two at a time: each runs one short subprocess, and there are 2 cores."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(one, cases), strict=True))


def tree(root: Path, skip: str | None = None) -> dict[str, str]:
    """Every file and folder under `root` (but `skip`) -> its sha256 ('dir' for a folder)."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if skip and (name == skip or name.startswith(f"{skip}/")):
            continue
        found[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


Built = tuple[Path | str, dict[str, str], str]  # the data setting's value, extra settings, expected message


def dry_runs(
    root: Path, cases: dict[str, Callable[[Path], Built]], runner: Callable[..., Outcome] = run_in_process
) -> dict[str, tuple[Outcome, str, bool]]:
    """Each case's files built in ROOT/case/data, then `--dry-run` of `train` on each (one at a time): the
    result, the expected message, and whether the data and output directories are unchanged."""
    from tests.hostile_files import tree_state

    results = {}
    for case, build in cases.items():
        d, out = root / case / "data", root / case / "out"
        d.mkdir(parents=True)
        path, extra, expected = build(d)
        before = tree_state(d, out)
        result = runner(data_env(path, out, **extra), "--dry-run")
        results[case] = (result, expected, tree_state(d, out) == before)
    return results
