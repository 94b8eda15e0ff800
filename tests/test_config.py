"""Settings: precedence, validation messages, unknown variables, secret redaction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from saudial.cli.main import main
from saudial.config.settings import LFM2_LINEAR_MODULES, Settings
from saudial.config.sources import load_settings
from saudial.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SAUDIAL_") or key == "HF_TOKEN":
            monkeypatch.delenv(key)


def test_defaults_are_the_corrected_seed_recipe() -> None:
    s = Settings()
    assert s.model_name_or_path == "LiquidAI/LFM2-1.2B"
    assert (s.quantization, s.bnb_4bit_quant_type, s.bnb_4bit_use_double_quant) == ("4bit", "nf4", True)
    assert s.torch_dtype == "auto"
    # LoRA dropout 0 (the seed's 0.05 learned no better, bench/learning.py) so the fused 4-bit LoRA step runs.
    assert (s.lora_r, s.lora_alpha, s.lora_dropout, s.fused_lora) == (8, 16, 0.0, True)
    assert s.target_modules == LFM2_LINEAR_MODULES
    assert s.max_length == 512
    # Batching retuned for speed (docs/benchmarks.md): 64 examples per padding-free micro-batch.
    assert (s.per_device_train_batch_size, s.gradient_accumulation_steps, s.padding_free) == (64, 1, True)
    assert (s.learning_rate, s.num_train_epochs, s.seed, s.eval_size) == (1e-3, 3.0, 42, 0.1)


def test_precedence_default_env_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({}).learning_rate == 1e-3
    monkeypatch.setenv("SAUDIAL_LEARNING_RATE", "3e-4")
    assert load_settings({}).learning_rate == 3e-4
    assert load_settings({"learning_rate": "5e-5"}).learning_rate == 5e-5


def test_comma_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAUDIAL_TARGET_MODULES", "q_proj, v_proj")
    monkeypatch.setenv("SAUDIAL_DIALECTS", "Najdi,Hijazi")
    s = load_settings({})
    assert s.target_modules == ["q_proj", "v_proj"]
    assert s.dialects == ["Najdi", "Hijazi"]


def test_unknown_variable_names_the_closest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAUDIAL_LEARNIGN_RATE", "1e-4")
    with pytest.raises(ConfigError, match=r"SAUDIAL_LEARNIGN_RATE.*did you mean SAUDIAL_LEARNING_RATE"):
        load_settings({})


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("SAUDIAL_LEARNING_RATE", "fast", "valid number"),
        ("SAUDIAL_LORA_R", "0", "greater than or equal to 1"),
        ("SAUDIAL_EVAL_SIZE", "1.5", "less than 1"),
        ("SAUDIAL_QUANTIZATION", "3bit", "'4bit', '8bit' or 'none'"),
        ("SAUDIAL_OVERWRITE_OUTPUT_DIR", "maybe", "valid boolean"),
        ("SAUDIAL_HUB_MODEL_ID", "no-slash", "owner/name"),
    ],
)
def test_bad_values_name_variable_value_and_fix(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings({})
    message = str(info.value)
    assert env in message and repr(value) in message and expected in message
    assert "default" in message and "\n" not in message


def test_contradictory_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAUDIAL_PUSH_TO_HUB", "true")
    with pytest.raises(ConfigError, match="SAUDIAL_HUB_MODEL_ID"):
        load_settings({})
    monkeypatch.delenv("SAUDIAL_PUSH_TO_HUB")
    with pytest.raises(ConfigError, match="float32"):
        load_settings({"quantization": "4bit", "torch_dtype": "float32"})
    with pytest.raises(ConfigError, match="SAUDIAL_TORCH_COMPILE / SAUDIAL_GRADIENT_CHECKPOINTING"):
        load_settings({"torch_compile": "true", "gradient_checkpointing": "true"})
    assert Settings().torch_compile is False  # the eager step: faster in the bench (config/settings.py)
    # `auto` (compile long runs) is gone: it turned on the slower path for long runs. Saying it is exit 2.
    with pytest.raises(ConfigError, match="torch-compile='auto' is invalid"):
        load_settings({"torch_compile": "auto"})


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--lora-r='x'"):
        load_settings({"lora_r": "x"})


def test_cli_prints_config_without_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hf_SECRETsecretSECRET123"
    monkeypatch.setenv("HF_TOKEN", secret)
    # --dry-run without data stops at the data check, after printing the configuration.
    code = main(["--dry-run", "--learning-rate", "3e-4"])
    out = capsys.readouterr()
    assert code == 2
    assert secret not in out.out + out.err + caplog.text
    assert "HF_TOKEN set (never shown)" in caplog.text
    assert re.search(r"^ {2}learning_rate +0\.0003 +flag$", caplog.text, re.M)
    assert "SAUDIAL_DATA" in out.err  # the missing-data error names the setting


def test_train_help_lists_every_setting(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in Settings.model_fields:
        assert "SAUDIAL_" + name.upper() in text, name
        assert "--" + name.replace("_", "-") in text, name


def test_redacted_is_json_and_complete() -> None:
    dumped = Settings().redacted()
    assert json.loads(json.dumps(dumped)) == dumped
    assert set(dumped) == set(Settings.model_fields)
    assert not any("hf_token" in key or "secret" in key for key in dumped)


def test_readme_settings_table_is_current() -> None:
    from pathlib import Path

    from saudial.config.sources import settings_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert settings_table() in readme, "regenerate the README's table: python -m saudial.config"


def test_a_loader_worker_collates_on_a_gpu_and_none_on_the_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unset, dataloader_num_workers is one worker where training runs on a GPU (it collates the next batch
    during the step) and none on the CPU; the user's value wins either way and reaches the Trainer's config."""
    import torch

    from saudial.training.trainer import loader_workers, sft_config

    default = Settings(output_dir=tmp_path)
    assert default.dataloader_num_workers is None
    assert loader_workers(default) == 0  # this machine: no GPU
    args = sft_config(default, torch.float32)
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (0, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the rule alone: what a GPU machine reports
    assert loader_workers(default) == 1
    monkeypatch.setenv("SAUDIAL_DATALOADER_NUM_WORKERS", "0")
    assert loader_workers(load_settings({})) == 0
    monkeypatch.setenv("SAUDIAL_DATALOADER_NUM_WORKERS", "3")
    assert loader_workers(load_settings({})) == 3
    monkeypatch.undo()
    args = sft_config(Settings(output_dir=tmp_path, dataloader_num_workers=2), torch.float32)
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (2, True)
