"""Safe loading: safetensors only, never a model's own code, the base model pinned to a commit; and
inference bounded by max_length whatever the input (a 100k-character row)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from saudial.config.settings import Settings
from saudial.data.prompts import RESPONSE_MARKER
from saudial.errors import ConfigError
from saudial.inference.generate import check_adapter_weights, encode
from saudial.model import content_hash
from saudial.model.loading import load_model, load_tokenizer, resolve_revision
from tests.adapter_run import copy_run, trained_adapter
from tests.conftest import ENTRYPOINT, REPO, base_env


def settings(model: Path | str, **extra: object) -> Settings:
    return Settings.model_validate({"model_name_or_path": str(model), "quantization": "none", **extra})


def test_a_pickle_only_base_model_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    pickled = shutil.copytree(tiny_model, tmp_path / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"only pickle \(\.bin\) weights, which saudial does not load"):
        load_model(settings(pickled))


@pytest.mark.slow
def test_a_pickle_only_adapter_is_refused(
    tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    adapter = copy_run(trained_adapter(tiny_model, workbook, tmp_path_factory), tmp_path_factory.mktemp("a") / "run")
    check_adapter_weights(adapter)  # as trained: fine
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ConfigError, match=r"only adapter_model\.bin, a pickle, which saudial never loads"):
        check_adapter_weights(adapter)


def test_a_model_that_needs_its_own_code_is_refused_without_running_it(tmp_path: Path) -> None:
    model = tmp_path / "custom"
    model.mkdir()
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}
    (model / "config.json").write_text(json.dumps({"model_type": "x_model", "auto_map": auto_map}))
    ran = tmp_path / "ran"
    for name in ("configuration_x.py", "modeling_x.py"):
        (model / name).write_text(f"open({str(ran)!r}, 'w').write('code ran')\n")
    with pytest.raises(ConfigError, match="needs code from its own repository \\(trust_remote_code\\)"):
        load_model(settings(model))
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        load_tokenizer(settings(model))
    assert not ran.exists()


def test_a_local_models_hash_runs_in_the_background_and_reaches_the_record(
    tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    direct = content_hash.tree_sha256(tiny_model)
    folder = tmp_path_factory.mktemp("copy") / "model"
    shutil.copytree(tiny_model, folder)
    content_hash.start(folder)
    content_hash.start(folder)  # once per folder: the second start is the first's
    assert content_hash.sha256(folder) == direct  # the thread's result: names and contents, not the path
    # The entry point starts it for its local model; the run record holds that hash.
    record = json.loads((trained_adapter(tiny_model, workbook, tmp_path_factory) / "run_manifest.json").read_text())
    assert record["model"]["content_sha256"] == direct


def test_the_base_model_is_pinned_to_a_commit(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = resolve_revision(settings(tiny_model))
    assert local["source"] == "local" and local["revision_sha"] is None
    assert local == resolve_revision(settings(tiny_model))  # the same files: the same content hash
    changed = shutil.copytree(tiny_model, tmp_path / "changed")
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    assert resolve_revision(settings(changed))["content_sha256"] != local["content_sha256"]

    # A Hub id, offline: the commit of the cached snapshot that "main" points at (huggingface_hub's cache).
    sha = hashlib.sha1(b"a commit").hexdigest()
    repo = tmp_path / "hub" / "models--LiquidAI--LFM2-1.2B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = resolve_revision(settings("LiquidAI/LFM2-1.2B"))
    assert hub == {"name_or_path": "LiquidAI/LFM2-1.2B", "source": "hub", "revision": "main", "revision_sha": sha}
    assert resolve_revision(settings("LiquidAI/LFM2-1.2B", model_revision="v2"))["revision_sha"] is None  # not cached
    pinned = "0123456789abcdef0123456789abcdef01234567"
    assert resolve_revision(settings("x/y", model_revision=pinned))["revision_sha"] == pinned


@pytest.mark.slow  # the shared training run (tests/adapter_run.py)
def test_a_finished_run_records_its_base_model(
    tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = trained_adapter(tiny_model, workbook, tmp_path_factory)
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["model"] == resolve_revision(settings(tiny_model))
    assert "training_args.bin" not in {p.name for p in run.iterdir()}  # the Trainer's pickle stays in checkpoints
    assert (run / "checkpoint-4" / "training_args.bin").is_file()
    assert (
        "training_args.bin" not in json.loads((run / "checkpoint-4" / "saudial_checkpoint.json").read_text())["files"]
    )


def test_prompts_are_cut_to_max_length_token_ids(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(settings(tiny_model))
    long_prompt = "### Instruction:\nTranslate.\n\n### Input:\n" + "open the door " * 8000 + "\n\n" + RESPONSE_MARKER
    ids, cut = encode(tokenizer, [long_prompt, "### Input:\nhi\n\n" + RESPONSE_MARKER], max_length=64)
    assert cut == 1 and len(ids[0]) == 64 and len(ids[1]) < 64
    assert ids[0][0] == tokenizer.bos_token_id  # the start is kept, like training's truncation
    assert tokenizer.decode(ids[0]).endswith("\n\n" + RESPONSE_MARKER)  # and so is the response marker


@pytest.mark.slow
def test_a_100k_character_row_is_translated_within_max_length(
    tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The row that took 20 GB of host memory: now cut to max_length tokens, and said so."""
    run = trained_adapter(tiny_model, workbook, tmp_path_factory)
    source = tmp_path / "lines.csv"
    pd.DataFrame({"English Text": ["Open the door. " * 6700, "Find the sword."], "Dialect": ["Najdi"] * 2}).to_csv(
        source, index=False
    )
    env = base_env(tiny_model, workbook, tmp_path / "unused", SAUDIAL_MAX_NEW_TOKENS="4")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_QUANTIZATION"):
        env.pop(key)
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "translate", "--adapter", str(run), "--input", str(source)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 2 prompts were longer than SAUDIAL_MAX_LENGTH=512 tokens and were cut" in result.stderr
    assert len(pd.read_csv(tmp_path / "lines.translated.csv")) == 2
