"""The LFM2 family table (model/family.py), the base-model checks before loading (model/base_model.py),
`saudial check`'s base-model section, and the LoRA target check (model/lora.py; issue 30 item 21)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Lfm2Config, Lfm2ForCausalLM

from saudial.config.settings import Settings
from saudial.errors import ConfigError
from saudial.jobs import check
from saudial.model import base_model, family, lora
from tests.conftest import RunEntry, base_env

# Parameters as LiquidAI publishes them (the LFM2 model card's "Model details" table).
PUBLISHED = {
    "LiquidAI/LFM2-350M": 354_483_968,
    "LiquidAI/LFM2-700M": 742_489_344,
    "LiquidAI/LFM2-1.2B": 1_170_340_608,
    "LiquidAI/LFM2-2.6B": 2_569_272_320,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_shape_builds_the_published_parameter_count(name: str) -> None:
    shape = family.FAMILY[name.lower()].shape
    assert shape is not None
    with torch.device("meta"):
        model = Lfm2ForCausalLM(Lfm2Config(**shape.config_kwargs()))  # type: ignore[arg-type]
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert model.model.layers[0].feed_forward.w1.out_features == shape.ff_dim
    kinds = [i for i, layer in enumerate(model.model.layers) if hasattr(layer, "self_attn")]
    assert tuple(kinds) == shape.attention_layers


def test_every_entry_has_a_status_and_only_sourced_shapes() -> None:
    for entry in family.FAMILY.values():
        assert entry.status in ("current", "deprecated")
        assert not entry.replacement or entry.status == "deprecated"
        if entry.architecture != family.ARCHITECTURE:
            assert entry.shape is None
    assert family.lookup("liquidai/lfm2-1.2b") is family.FAMILY["liquidai/lfm2-1.2b"]
    assert family.lookup("/models/LFM2.5-1.2B-Instruct/").name == "LiquidAI/LFM2.5-1.2B-Instruct"  # type: ignore[union-attr]


def write_config(folder: Path, name: str) -> Path:
    """A local model folder with the published config.json of `name` (no weights: check reads the config only)."""
    shape = family.FAMILY[name.lower()].shape
    assert shape is not None
    config = Lfm2Config(**shape.config_kwargs())  # type: ignore[arg-type]
    config.architectures = [family.ARCHITECTURE]
    config.save_pretrained(folder)
    return folder


def test_a_size_that_does_not_exist_is_refused_with_the_closest_names() -> None:
    with pytest.raises(ConfigError) as caught:
        base_model.check_name("LiquidAI/LFM2-1.6B")
    message = str(caught.value)
    assert "LFM2 has no 1.6B model" in message and "LiquidAI/LFM2-1.2B" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"LFM2\.5 has no 700M"):
        base_model.check_name("LiquidAI/LFM2.5-700M-Instruct")
    assert base_model.check_name("LiquidAI/LFM2-1.2B-Tool") is None  # a published fine-tune of a known size
    with pytest.raises(ConfigError, match=r"did you mean LiquidAI/LFM2\.5-1\.2B-Instruct\?"):
        base_model.check_name("LiquidAI/LFM2.5-1.2B-Instrcut")


def test_an_architecture_saudial_does_not_train_stops_before_loading(tmp_path: Path) -> None:
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    with pytest.raises(ConfigError, match="is a Qwen3ForCausalLM model, which saudial does not train: saudial trains"):
        base_model.inspect_base(Settings(model_name_or_path=str(qwen)))
    lfm3 = tmp_path / "lfm3"
    lfm3.mkdir()
    remote = {"architectures": ["Lfm3ForCausalLM"], "model_type": "lfm3", "auto_map": {"AutoModel": "x.Lfm3"}}
    (lfm3 / "config.json").write_text(json.dumps(remote))
    with pytest.raises(ConfigError, match="trust_remote_code"):
        base_model.inspect_base(Settings(model_name_or_path=str(lfm3)))
    with pytest.raises(ConfigError, match="mixture-of-experts"):
        base_model.inspect_base(Settings(model_name_or_path="LiquidAI/LFM2.5-8B-A1B"))


@pytest.mark.parametrize(
    ("name", "status"), [("LiquidAI/LFM2-1.2B", "deprecated"), ("LiquidAI/LFM2.5-1.2B-Instruct", "current")]
)
def test_check_names_family_size_status_and_the_run_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, status: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_config(tmp_path / name.split("/")[1], name)
    settings = Settings(model_name_or_path=str(folder))
    report = check.build(settings)
    rows = dict(report.lines)
    entry = family.FAMILY[name.lower()]
    assert rows["family"] == f"{entry.family}, 1.2B ({name})"
    assert rows["status"].startswith(f"{status} (LiquidAI's documentation, read {family.STATUS_READ})")
    assert ("LFM2.5-1.2B-Instruct instead" in rows["status"]) == (status == "deprecated")
    assert "(as published)" in rows["shape"] and "16 layers (10 short-conv + 6 attention" in rows["shape"]
    assert rows["this run"].startswith("QLoRA: the base frozen in 4-bit NF4; LoRA r 8 (alpha 16) on q_proj")
    assert not any("base model" in b or "does not train" in b for b in report.blockers)


def test_a_local_folder_of_another_name_is_known_by_its_shape(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "my-copy", "LiquidAI/LFM2-700M")
    info = base_model.inspect_base(Settings(model_name_or_path=str(folder)))
    rows = dict(base_model.describe(info, Settings()))
    assert rows["family"] == "not named like a published model; its shape is that of LiquidAI/LFM2-700M"


@pytest.fixture(scope="module")
def tiny_lfm2(tiny_model: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model)


def test_lora_targets_count_what_peft_selects(tiny_lfm2: torch.nn.Module) -> None:
    # The tiny model: 4 layers, attention at layer 2 (q/k/v/out_proj once), short conv at 0, 1, 3 (in_proj,
    # out_proj three times), an MLP (w1/w2/w3) in each.
    counts = lora.check_targets(tiny_lfm2, ["q_proj", "out_proj", "in_proj", "w1"])
    assert counts == {"q_proj": 1, "out_proj": 4, "in_proj": 3, "w1": 4}
    assert lora.linear_layers(tiny_lfm2) == ["in_proj", "k_proj", "out_proj", "q_proj", "v_proj", "w1", "w2", "w3"]
    assert lora.check_targets(tiny_lfm2, ["all-linear"]) == {"all-linear": 4 * 3 + 4 + 3 * 2}
    assert lora.lora_fields(Settings(target_modules="all-linear"))["target_modules"] == "all-linear"


def test_a_target_name_that_selects_nothing_is_refused_with_the_models_own_names(
    tiny_lfm2: torch.nn.Module,
) -> None:
    with pytest.raises(ConfigError) as caught:
        lora.check_targets(tiny_lfm2, ["q_proj", "o_proj", "gate_proj"])
    message = str(caught.value)
    assert "'o_proj', 'gate_proj' match no module" in message
    assert "in_proj,k_proj,out_proj,q_proj,v_proj,w1,w2,w3" in message and "q_proj'" not in message


@pytest.mark.slow  # one run of the entry point up to the loaded model: ~20 s on 2 cores
def test_the_lora_target_error_as_a_user_sees_it(
    tiny_model: Path, workbook: Path, tmp_path: Path, run_entry: RunEntry
) -> None:
    env = base_env(tiny_model, workbook, tmp_path / "out", SAUDIAL_TARGET_MODULES="q_proj,k_proj,v_proj,o_proj")
    result = run_entry(env)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: SAUDIAL_TARGET_MODULES: 'o_proj' matches no module of the base model")
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "adapter_model.safetensors").exists()


REPO = Path(__file__).resolve().parent.parent
FAMILY_RECIPES = sorted(p for p in (REPO / "recipes").glob("lfm2*.yaml"))


def test_each_family_recipe_names_a_known_base_and_its_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    from saudial.config.sources import load_settings

    for key in [k for k in os.environ if k.startswith("SAUDIAL_")]:
        monkeypatch.delenv(key)
    names = set()
    for recipe in FAMILY_RECIPES:
        settings = load_settings({}, config_file=recipe)
        entry = base_model.check_name(settings.model_name_or_path)
        assert entry is not None and entry.architecture == family.ARCHITECTURE, recipe.name
        assert settings.lora_alpha == 2 * settings.lora_r, recipe.name  # the default's LoRA scale
        text = recipe.read_text()
        assert "Why each value" in text and "learning rate" in text and "batch" in text and "LoRA r" in text
        names.add(entry.name)
    assert names == {
        "LiquidAI/LFM2.5-1.2B-Instruct",
        "LiquidAI/LFM2.5-1.2B-Base",
        "LiquidAI/LFM2-350M",
        "LiquidAI/LFM2-700M",
        "LiquidAI/LFM2-2.6B",
    }


def test_a_recipe_naming_a_size_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    from saudial.config.sources import load_settings

    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model_name_or_path: LiquidAI/LFM2.5-1.6B-Instruct\n")
    settings = load_settings({}, environ={}, config_file=recipe)
    with pytest.raises(ConfigError) as caught:
        base_model.inspect_base(settings)
    assert "LFM2.5 has no 1.6B model" in str(caught.value)
    assert "the closest names: LiquidAI/LFM2.5-1.2B-Instruct" in str(caught.value)
