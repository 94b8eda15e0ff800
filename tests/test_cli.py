"""The command line as a newcomer meets it: the installed command, the help, recipes, `saudial check`.

Every test runs the real entry point as a subprocess, as a user would. The setup script and the installed
command are checked by CI's own `make setup-dev` on every run (.ci/run), not by a test building a second venv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saudial.cli.parser import COMMAND_SETTINGS, GROUPS, SUMMARY
from saudial.config.settings import Settings, env_name, flag_name
from saudial.config.sources import load_settings
from saudial.errors import ConfigError
from tests.conftest import ENTRYPOINT, REPO, RunEntry, base_env

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
CLOSED = "http://127.0.0.1:9"  # the discard port: connection refused at once


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAUDIAL_") and k not in ("HF_TOKEN", "CI")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args],
        env=env or clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- help ------------------------------------------------------------------------------------------


def test_top_level_help_lists_the_commands_with_an_example() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("usage: saudial ")
    for command, summary in SUMMARY.items():
        assert re.search(rf"^  {command} +{re.escape(summary)}$", text, re.M), command
    assert "examples:" in text and "saudial translate --adapter" in text and "saudial check" in text
    assert "--learning-rate" not in text  # the settings belong to the commands' own help
    again = subprocess.run([sys.executable, "-m", "saudial", "--help"], cwd=REPO, capture_output=True, text=True)
    assert again.stdout == text


@pytest.mark.parametrize("command", list(SUMMARY))
def test_command_help_lists_its_settings_once_with_defaults(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"usage: saudial {command}")
    flags = re.findall(r"^ {2}(-[-\w]+(?:, -[-\w]+)*)", text, re.M)
    listed = [flag for entry in flags for flag in entry.split(", ")]
    assert len(listed) == len(set(listed)), f"duplicated option strings: {listed}"
    assert not [flag for flag in listed if "_" in flag], "underscore spellings are accepted, not listed"
    wanted = set(COMMAND_SETTINGS[command])
    flat = " ".join(text.split())  # help lines wrap anywhere
    for name in Settings.model_fields:
        if name in wanted:
            assert f"[{env_name(name)}; default: " in flat, name
            assert len(re.findall(rf"^ {{2}}{re.escape(flag_name(name))}(?![-\w])", text, re.M)) == 1, name
        else:
            assert f"[{env_name(name)};" not in flat, f"{command} --help lists {name}, which it does not use"
    groups = re.findall(r"^(\w+) settings:$", text, re.M)
    assert groups == [g for g in GROUPS if set(GROUPS[g]) & wanted]
    if command == "evaluate":  # its --output-dir is where the evaluation goes, by default the adapter's folder
        assert "[SAUDIAL_OUTPUT_DIR; default: --adapter]" in flat and "logs and manifest go" not in flat


def test_help_needs_neither_torch_nor_the_network() -> None:
    code = (
        "import sys\nfrom saudial.cli.main import main\n"
        "for argv in (['--help'], ['train', '--help'], ['translate', '--help'], ['check', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers', 'httpx2', 'bitsandbytes') if m in sys.modules))"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
    print(f"four --help screens in one process: {elapsed:.2f} s")


def test_every_command_in_the_help_runs() -> None:
    from saudial.cli.main import COMMANDS

    assert list(COMMANDS) == list(SUMMARY)


def test_every_setting_is_in_exactly_one_help_group() -> None:
    placed = [name for names in GROUPS.values() for name in names]
    assert sorted(placed) == sorted(Settings.model_fields), set(placed) ^ set(Settings.model_fields)
    for command, names in COMMAND_SETTINGS.items():
        assert set(names) <= set(Settings.model_fields), command


def test_a_setting_another_command_uses_is_refused_by_name() -> None:
    result = run("translate", "--adapter", "x", "--lora-r", "4", "Hello")
    assert result.returncode == 2
    assert result.stderr == (
        "saudial translate: error: --lora-r is not a flag of `saudial translate` (a setting of `saudial train`, "
        "also read from SAUDIAL_LORA_R); `saudial translate --help` lists its flags\n"
    )


def test_a_misspelt_or_shortened_flag_is_refused_with_the_closest_one() -> None:
    """argparse's abbreviations are off: `--learning-rat` would otherwise set the learning rate and pass unseen."""
    said = {
        "--learning-rat": "did you mean --learning-rate?",  # a prefix of a flag: refused, not taken for it
        "--learnig-rate": "did you mean --learning-rate?",
        "--lr": "did you mean --learning-rate?",  # another tool's name for it
        "--epochs": "did you mean --num-train-epochs?",
        "--zzzz": "; `saudial train --help` lists its flags",
    }
    for flag, hint in said.items():
        result = run("train", "--dry-run", flag, "1e-4")
        assert (result.returncode, result.stdout) == (2, ""), (flag, result.stderr)
        assert result.stderr.startswith(f"saudial train: error: {flag} is not a flag of `saudial train`"), result.stderr
        assert hint in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_negative_number_after_a_flag_is_its_value(tmp_path: Path) -> None:
    """argparse reads `-1e-4` as a flag ("expected one argument"); it reaches the setting's own check instead."""
    result = run("train", "--dry-run", "--learning-rate", "-1e-4")
    assert result.returncode == 2
    assert "--learning-rate='-1e-4' is invalid: Input should be greater than 0" in result.stderr, result.stderr


def test_a_dry_run_refuses_an_output_directory_a_run_would_refuse_and_names_the_flag(tmp_path: Path) -> None:
    """The path is checked with the data, before the slow imports, and the flag the user typed is the one named."""
    file = tmp_path / "taken"
    file.write_text("mine")
    sample = str(REPO / "samples" / "saudial_synthetic_sample.xlsx")
    result = run("train", "--dry-run", "--data", sample, "--output-dir", str(file))
    assert result.returncode == 2 and result.stdout.count("\n") <= 30
    assert f"error: --output-dir={str(file)!r} is a file, not a directory" in result.stderr, result.stderr[-2000:]
    assert file.read_text() == "mine"
    by_variable = run("train", "--dry-run", "--data", sample, env=clean_env(SAUDIAL_OUTPUT_DIR="samples"))
    assert by_variable.returncode == 2
    assert "error: SAUDIAL_OUTPUT_DIR='samples' is the folder that holds the data file" in by_variable.stderr


def test_a_misspelt_command_is_named_with_the_closest_one() -> None:
    result = run("trian", "--learning-rate", "1e-4")
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        result.stderr == "saudial: error: 'trian' is not a command: did you mean `saudial train`? (`saudial --help`)\n"
    )
    unlike = run("upload")
    assert unlike.returncode == 2 and "the commands: train, check, translate" in unlike.stderr
    forged = run("tr\x1b[2Jain")  # escaped once, as every message escapes what the user gave
    assert forged.stderr.startswith("saudial: error: 'tr\\x1b[2Jain' is not a command: did you mean"), forged.stderr


def test_a_variable_named_like_a_commands_own_flag_says_to_pass_the_flag(tmp_path: Path) -> None:
    """translate's --dialect is a flag, not a setting: SAUDIAL_DIALECT is not read, and the closest setting's name
    (SAUDIAL_DIALECTS, the training data's filter) would be the wrong advice there. Other commands do suggest it."""
    env = clean_env(SAUDIAL_DIALECT="Najdi")
    result = run("translate", "--adapter", str(tmp_path), "Hello", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        "error: SAUDIAL_DIALECT is not read: this command takes --dialect as a flag "
        "(pass --dialect, unset SAUDIAL_DIALECT)\n"
    )
    check = run("check", "--quiet", env=env)
    assert check.returncode == 2 and "unknown setting SAUDIAL_DIALECT: did you mean SAUDIAL_DIALECTS?" in check.stderr
    debug = run("translate", "--adapter", str(tmp_path / "none"), "Hello", env=clean_env(SAUDIAL_DEBUG="0"))
    assert "SAUDIAL_DEBUG" not in debug.stderr  # a variable saudial reads, though --debug is a flag too


# --- recipes and precedence ------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SAUDIAL_")]:
        monkeypatch.delenv(key)
    settings = load_settings({}, config_file=recipe)
    assert isinstance(settings, Settings) and type(settings) is Settings
    if recipe.name == "seed.yaml":  # the seed's recipe as written, for comparison
        assert (settings.bnb_4bit_quant_type, settings.bnb_4bit_use_double_quant) == ("fp4", False)
        assert settings.target_modules == ["q_proj", "v_proj"]
        assert (settings.per_device_train_batch_size, settings.gradient_accumulation_steps) == (1, 8)
        assert (settings.learning_rate, settings.num_train_epochs) == (2e-4, 1.0)
    if recipe.name == "default.yaml":  # the defaults, written out
        defaults = Settings().model_dump()
        assert {k: v for k, v in settings.model_dump().items() if v != defaults[k]} == {}
    if recipe.name == "small-gpu.yaml":
        assert settings.gradient_checkpointing and settings.per_device_train_batch_size <= 16
        effective = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
        assert effective == Settings().per_device_train_batch_size  # the default schedule
    assert {p.name for p in RECIPES} >= {"default.yaml", "seed.yaml", "small-gpu.yaml"}


def test_precedence_flag_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SAUDIAL_")]:
        monkeypatch.delenv(key)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nlora_r: 4\nnum_train_epochs: 2\ntarget_modules: [q_proj, v_proj]\n")
    monkeypatch.setenv("SAUDIAL_LORA_R", "6")
    monkeypatch.setenv("SAUDIAL_NUM_TRAIN_EPOCHS", "3")
    settings = load_settings({"num_train_epochs": "5"}, config_file=recipe)
    assert settings.num_train_epochs == 5.0  # flag > env
    assert settings.lora_r == 6  # env > file
    assert settings.learning_rate == 1e-4 and settings.target_modules == ["q_proj", "v_proj"]  # file > default
    assert settings.lora_alpha == 16  # default
    assert {"learning_rate", "lora_r", "num_train_epochs", "target_modules"} <= settings.model_fields_set


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("learning_rate: 1.0e-4\nlora_rank: 4\n", "unknown setting 'lora_rank': did you mean lora_r?"),
        ("SAUDIAL_LEARNING_RATE: 1.0e-4\n", "did you mean learning_rate?"),
        ("- learning_rate\n", "must be a mapping"),
        ("learning_rate: [1\n", "is not valid YAML at line 2"),
        ("lora_r: many\n", "lora_r='many' is invalid"),
    ],
)
def test_bad_recipe_is_one_line_naming_the_file(content: str, expected: str, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load_settings({}, environ={}, config_file=recipe)
    assert str(recipe) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_config_flag_through_the_entry_point(
    tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nlora_r: 4\nwarmup_ratio: 0.2\n")
    env = base_env(tiny_model, workbook, tmp_path / "out", SAUDIAL_LORA_R="6")
    result = run_entry(env, "--config", str(recipe), "--dry-run", "--warmup_ratio", "0.1")
    assert result.returncode == 0, result.stderr[-2000:]
    err = result.stderr
    assert err.count(f"flag > SAUDIAL_* variable > {recipe} > default") == 1  # the order, said once
    rows = dict(re.findall(r"^ {2}(\w+) +\S+ +(\S+)$", err, re.M))
    assert rows["learning_rate"] == str(recipe) and rows["lora_r"] == "env" and rows["warmup_ratio"] == "flag"
    assert re.search(r"^ {2}lora_r +6 +env$", err, re.M) and re.search(r"^ {2}warmup_ratio +0\.1 +flag$", err, re.M)

    recipe.write_text("learnig_rate: 1.0e-4\n")
    bad = run_entry(env, "--config", str(recipe), "--dry-run")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: --config {recipe}: unknown setting 'learnig_rate': did you mean learning_rate? (fix or remove it)"
    ]


# --- saudial check ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="what `check` says on a machine without CUDA")
def test_check_without_cuda_names_the_ways_forward(tmp_path: Path, tiny_model: Path) -> None:
    secret = "hf_CheckNeverPrintsThis0123456789"
    env = clean_env(HF_ENDPOINT=CLOSED, HF_HOME=str(tmp_path / "hf"), HF_TOKEN=secret)
    result = run("check", env=env)
    assert result.returncode == 2, result.stderr
    out = result.stdout
    for line in ("python", "torch", "NVIDIA driver", "GPU", "compute dtype", "bitsandbytes", "endpoint", "token"):
        assert re.search(rf"^  {line} ", out, re.M), line
    assert "gradient checkpointing" in out and "batch" in out and "torch.compile" in out
    assert "make demo" in out and "SAUDIAL_QUANTIZATION=none" in out
    assert "NOT reachable" in out and "found in HF_TOKEN" in out
    assert secret not in out + result.stderr
    assert len(out.splitlines()) <= 40  # one screen

    # Unquantized with a local model, training can run here: exit 0, and --quiet says nothing.
    env.update(SAUDIAL_QUANTIZATION="none", SAUDIAL_MODEL_NAME_OR_PATH=str(tiny_model))
    quiet = run("check", "--quiet", env=env)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stdout + quiet.stderr
    loud = run("check", env=env)
    assert loud.returncode == 0 and "Training can run on the CPU" in loud.stdout
