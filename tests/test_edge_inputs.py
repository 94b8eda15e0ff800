"""Inputs at the edges, through the same functions the commands call (in-process, fast): recipe files that
are not files, output directories that cannot be one, damaged adapters and run records, names that carry
control characters, and server messages that carry a token. Each ends in one line naming what the user
gave and an exit code of the README's table, never a bug (exit 1)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from saudial.config.sources import RECIPE_MAX_BYTES, load_settings
from saudial.errors import ConfigError


def _load_within(seconds: float, recipe: Path) -> BaseException | None:
    """load_settings with `recipe`, in a thread: what it raised, failing the test if it takes longer."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            load_settings({}, environ={}, config_file=recipe)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    tick = time.perf_counter()
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if recipe.is_fifo():  # let the stuck reader go: a writer that closes at once
            os.close(os.open(recipe, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading --config {recipe.name} took over {seconds} s")
    assert time.perf_counter() - tick < seconds
    return outcome[0]


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "30-mb", "directory"])
def test_a_recipe_that_is_not_a_small_regular_file_is_refused_at_once(case: str, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    if case == "fifo":
        os.mkfifo(recipe)
    elif case == "dev-zero":
        recipe.symlink_to("/dev/zero")
    elif case == "directory":
        recipe.mkdir()
    else:
        recipe.write_text("# a comment\n" * (30 * (1 << 20) // 12) + "learning_rate: 1.0e-4\n")
    error = _load_within(2.0, recipe)
    assert isinstance(error, ConfigError), repr(error)
    line = str(error)
    assert line.startswith(f"--config {recipe}: ") and "\n" not in line, line
    expected = {
        "fifo": "is a named pipe (FIFO), not a recipe",
        "dev-zero": "is a character device, not a recipe",
        "directory": "is a directory, not a recipe",
        "30-mb": f"over the {RECIPE_MAX_BYTES // 1024} KB a recipe may have",
    }[case]
    assert expected in line, line
    assert "/dev/zero" not in line  # the path the user gave, not where it points


def test_a_recipe_under_the_cap_is_read(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# note\n" * 2000 + "learning_rate: 1.0e-4\n")
    assert recipe.stat().st_size < RECIPE_MAX_BYTES
    assert load_settings({}, environ={}, config_file=recipe).learning_rate == 1.0e-4
