"""No Hub, said at once: a model that cannot be reached is one line naming it and the fix, within seconds.

Each case runs in a fresh process, because huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE
when it is imported. Nothing is downloaded: the endpoints are a refused local port and a host name that
cannot resolve; a cached model is laid out in a temporary HF_HOME as huggingface_hub lays it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, RunEntry, base_env

MODEL = "LiquidAI/LFM2-1.2B"
REFUSED = "http://127.0.0.1:9"  # the discard port: connection refused
UNRESOLVABLE = "http://saudial-no-such-host.invalid"  # .invalid never resolves (RFC 2606)

PROBE = """
import sys, time
from saudial.config.huggingface import check_model_access
from saudial.errors import ConfigError
start = time.perf_counter()
try:
    check_model_access(sys.argv[1], "main")
    print("OK")
except ConfigError as exc:
    print(f"ERROR {exc}")
print(f"SECONDS {time.perf_counter() - start:.3f}")
"""


def probe(tmp_path: Path, name: str = MODEL, **env: str) -> tuple[str, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SAUDIAL_", "HF_"))}
    environ.update(HF_HOME=str(tmp_path / "hf"), **env)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, name], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return lines[0], float(lines[-1].split()[1])


def cache_model(hf_home: Path, repo_id: str = MODEL) -> None:
    """config.json of `repo_id` at main in the cache, where huggingface_hub looks for it."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


@pytest.mark.parametrize("endpoint", [REFUSED, UNRESOLVABLE], ids=["refused", "unresolvable"])
def test_unreachable_hub_is_one_line_within_seconds(endpoint: str, tmp_path: Path) -> None:
    line, seconds = probe(tmp_path, HF_ENDPOINT=endpoint)
    print(f"{endpoint}: detected in {seconds:.3f} s")
    assert seconds < 5.0
    assert line.startswith(f"ERROR cannot reach {endpoint} to load the model '{MODEL}'")
    assert "HF_HUB_OFFLINE=1" in line and "SAUDIAL_MODEL_NAME_OR_PATH=/local/dir" in line


def test_offline_mode_uses_the_cache_or_says_it_is_not_there(tmp_path: Path) -> None:
    line, seconds = probe(tmp_path, HF_HUB_OFFLINE="1")
    assert seconds < 5.0
    assert line.startswith(f"ERROR the model '{MODEL}' is not in the Hugging Face cache")
    assert "SAUDIAL_MODEL_NAME_OR_PATH=/local/dir" in line
    cache_model(tmp_path / "hf")
    assert probe(tmp_path, HF_HUB_OFFLINE="1")[0] == "OK"
    # Cached, but the Hub is unreachable and offline mode is off: the fix is offline mode.
    line, _ = probe(tmp_path, HF_ENDPOINT=REFUSED)
    assert "it is in the cache: set HF_HUB_OFFLINE=1" in line


def test_a_missing_local_directory_is_named(tmp_path: Path) -> None:
    line, _ = probe(tmp_path, name=str(tmp_path / "no-such-model"), HF_ENDPOINT=REFUSED)
    assert line == f"ERROR SAUDIAL_MODEL_NAME_OR_PATH={str(tmp_path / 'no-such-model')!r} is not a directory: " + (
        "give the base model's local directory or a Hub id"
    )
    assert probe(tmp_path, name=str(tmp_path), HF_ENDPOINT=REFUSED)[0] == "OK"  # a local directory needs no Hub


@pytest.mark.slow
def test_train_without_the_hub_fails_once_without_retries(workbook: Path, tmp_path: Path, run_entry: RunEntry) -> None:
    env = base_env(tmp_path, workbook, tmp_path / "out", SAUDIAL_MODEL_NAME_OR_PATH=MODEL, HF_ENDPOINT=REFUSED)
    env.pop("HF_HUB_OFFLINE")
    env["HF_HOME"] = str(tmp_path / "hf")
    result = run_entry(env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: cannot reach {REFUSED} to load the model '{MODEL}' (ConnectError: ")
    assert errors[0].endswith(
        "set HF_HUB_OFFLINE=1 with the model in the cache (HF_HOME), or SAUDIAL_MODEL_NAME_OR_PATH=/local/dir"
    )
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), "a line printed twice"


@pytest.mark.slow  # one start of the entry point: ~15 s on 2 busy cores
def test_dry_run_without_the_hub_checks_settings_and_data(tmp_path: Path, run_entry: RunEntry) -> None:
    """The default base model, no Hub, nothing cached: the settings and the data are checked (exit 0), and the
    token statistics are said to be skipped, with the command that caches the tokenizer."""
    env = base_env(tmp_path, REPO / "samples" / "saudial_synthetic_sample.xlsx", tmp_path / "out")
    env.pop("SAUDIAL_MODEL_NAME_OR_PATH")
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = run_entry(env, "train", "--config", str(REPO / "recipes" / "default.yaml"), "--dry-run", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rows read 200" in result.stderr and "  total           178     19" in result.stderr
    skipped = [line for line in result.stderr.splitlines() if "token statistics skipped" in line]
    assert len(skipped) == 1 and "HF_HUB_OFFLINE=1" in skipped[0], result.stderr[-2000:]
    assert skipped[0].endswith(f"hf download {MODEL} --include '*.json' --include '*.jinja'")
    assert not (tmp_path / "out").exists() and "Traceback" not in result.stderr
