"""Which base model a run starts from, before any weight is loaded: its family, size and status (model/family.py),
whether saudial trains its architecture, and what the run will do with it.

`inspect_base` reads the base model's config.json only (a local directory, the Hugging Face cache, or, with
the Hub reachable, that one small file) and refuses at once (ConfigError, exit 2):
- a LiquidAI name whose size does not exist (`LiquidAI/LFM2-1.6B`), naming the closest ones (difflib);
- a model whose architecture is not `Lfm2ForCausalLM` (model_type `lfm2`), or that needs code from its own
  repository (`auto_map`, trust_remote_code: LFM3 does), which saudial never runs.
Without config.json (offline and not cached) it says what the table knows and leaves the load to say why.
`saudial check` and the start of `saudial train` print `describe`.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saudial.config import huggingface as hf
from saudial.errors import ConfigError
from saudial.model import family
from saudial.model.family import ARCHITECTURE, Base, Shape

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

SETTING = "SAUDIAL_MODEL_NAME_OR_PATH"
SUPPORTED = (
    f"saudial trains {ARCHITECTURE} (model_type lfm2) with transformers' own code: the LFM2 and LFM2.5 text "
    "models, e.g. LiquidAI/LFM2.5-1.2B-Instruct (saudial/model/family.py lists them)"
)
# LiquidAI/<family>-<size>[-<variant>]: the part a recipe can get wrong (`LFM2-1.6B`, `LFM2.5-700M`).
NAMED_SIZE = re.compile(r"^liquidai/(lfm2(?:\.5)?)-(\d+(?:\.\d+)?[mb](?:-a\d+(?:\.\d+)?b)?)(?:-|$)", re.IGNORECASE)
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kB; anything larger is not one


@dataclass
class BaseInfo:
    name: str
    entry: Base | None  # the table's row (by name, or by shape for a local folder of another name)
    config: dict[str, Any] | None  # config.json, where it could be read
    where: str  # where config.json came from, or why it was not read
    by_shape: list[Base]  # for a local folder: the table's models of its shape

    @property
    def shape(self) -> Shape | None:
        return family.shape_of(self.config) if self.config else None


def check_name(name: str) -> Base | None:
    """The table's row for `name`; a LiquidAI name of a size that does not exist is a ConfigError with the
    closest names. Other names (a local directory, another organisation's model) return None."""
    entry = family.lookup(name)
    if entry is not None or Path(name).expanduser().is_dir():
        return entry
    match = NAMED_SIZE.match(name.strip())
    if match is None:
        return None
    fam, size = match.group(1).upper(), match.group(2).upper()
    near = family.closest(name)
    if any(b.family == fam and b.size == size for b in family.FAMILY.values()):
        # A known size under another name: a fine-tune LiquidAI published (LFM2-1.2B-Tool, ...), or a misspelt
        # name of the table (one or two letters off: LFM2.5-1.2B-Instrcut), which is refused.
        typo = [n for n in near if difflib.SequenceMatcher(None, n.lower(), name.strip().lower()).ratio() >= 0.9]
        if not typo:
            return None
        raise ConfigError(f"{SETTING}={name!r} is not a model LiquidAI publishes: did you mean {typo[0]}?")
    sizes = sorted({b.size for b in family.FAMILY.values() if b.family == fam}, key=_size_order)
    raise ConfigError(
        f"{SETTING}={name!r}: {fam} has no {size} model (its sizes: {', '.join(sizes)}; read {family.STATUS_READ})"
        + (f"; the closest names: {', '.join(near)}" if near else "")
    )


def _size_order(size: str) -> float:
    number = float(re.match(r"\d+(?:\.\d+)?", size).group())  # type: ignore[union-attr]
    return number * (1000 if size.split("-")[0].endswith("B") else 1)


def read_config(name: str, revision: str) -> tuple[dict[str, Any] | None, str]:
    """config.json of `name` (a local directory, the cache, or the Hub when reachable) and where it came from."""
    path: Path | None = None
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser() / "config.json"
        where = "local directory"
        if not path.is_file():
            raise ConfigError(f"{SETTING}={name!r} holds no config.json: point it at a model folder (save_pretrained)")
    else:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json", revision=revision)
        except ValueError:  # not a valid repo id (huggingface_hub's validator)
            return None, "not a Hub id or a local directory"
        if isinstance(cached, str):
            path, where = Path(cached), "Hugging Face cache"
        elif hf.hub_offline() or hf.hub_unreachable() is not None:
            return None, "not read: not in the Hugging Face cache and the Hub is not reachable"
        else:
            try:
                path, where = Path(hf_hub_download(name, "config.json", revision=revision)), "Hub"
            except Exception as exc:  # gated, missing, a hiccup: the load says what it is, with its own words
                return None, f"not read from the Hub ({type(exc).__name__})"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        config = json.loads(raw) if len(raw) <= MAX_CONFIG_BYTES else None
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise ConfigError(f"the config.json of {name!r} ({where}) is not a JSON object of a model's settings")
    return config, where


def check_architecture(name: str, config: dict[str, Any]) -> None:
    """ConfigError unless `config` is an LFM2 model transformers runs with its own code."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    kind = f"a {arch} model" if arch and arch.isidentifier() and len(arch) <= 60 else "a model of another architecture"
    if config.get("auto_map"):
        raise ConfigError(
            f"{SETTING}={name!r} is {kind} that needs code from its own repository (trust_remote_code), "
            f"which saudial never runs: {SUPPORTED}"
        )
    if config.get("model_type") != "lfm2" or (archs is not None and arch != ARCHITECTURE):
        raise ConfigError(f"{SETTING}={name!r} is {kind}, which saudial does not train: {SUPPORTED}")


def inspect_base(settings: Settings, revision: str | None = None) -> BaseInfo:
    """The base model as far as its name and config.json tell, refused at once where saudial cannot train it."""
    name = settings.model_name_or_path
    entry = check_name(name)
    if entry is not None and entry.architecture != ARCHITECTURE:
        raise ConfigError(
            f"{SETTING}={name!r} is a mixture-of-experts model ({entry.architecture}), which saudial does not "
            f"train: {SUPPORTED}"
        )
    config, where = read_config(name, revision or settings.model_revision)
    if config is not None:
        check_architecture(name, config)
    matches = family.by_shape(config) if config is not None and entry is None else []
    return BaseInfo(name, entry, config, where, matches)


def plan(settings: Settings) -> str:
    """What a run does with the base, in one line."""
    if settings.quantization == "4bit":
        how = f"QLoRA: the base frozen in 4-bit {settings.bnb_4bit_quant_type.upper()}"
    elif settings.quantization == "8bit":
        how = "LoRA on the base frozen in 8-bit"
    else:
        how = "LoRA on the base frozen, unquantized"
    targets = ",".join(settings.target_modules)
    task = "a Saudi-dialect chat adapter" if settings.task == "chat" else "an English -> Saudi dialect translator"
    length = f"{settings.max_steps} steps" if settings.max_steps > 0 else f"{settings.num_train_epochs:g} epoch(s)"
    return (
        f"{how}; LoRA r {settings.lora_r} (alpha {settings.lora_alpha}) on {targets}; trains {task}, {length} "
        f"at lr {settings.learning_rate:g}, batch {settings.per_device_train_batch_size} x "
        f"{settings.gradient_accumulation_steps}"
    )


def describe(info: BaseInfo, settings: Settings) -> list[tuple[str, str]]:
    """(label, text) rows: family, size and status, the shape and where it came from, what the run does."""
    entry = info.entry
    rows: list[tuple[str, str]] = []
    if entry is not None:
        rows.append(("family", f"{entry.family}, {entry.size} ({entry.name})"))
        rows.append(("status", entry.status_line()))
    elif info.by_shape:
        names = ", ".join(b.name for b in info.by_shape)
        rows.append(("family", f"not named like a published model; its shape is that of {names}"))
    else:
        rows.append(("family", "not in saudial's table of the LFM2 family (saudial/model/family.py)"))
    shape = info.shape
    if shape is not None:
        published = entry.shape if entry is not None else None
        if published is None:
            agrees = ""
        elif shape == published:
            agrees = " (as published)"
        else:
            agrees = f" (differs from the published {published.describe()}: a changed model)"
        rows.append(("shape", f"{shape.describe()}{agrees}; config.json from the {info.where}"))
    elif entry is not None and entry.shape is not None:
        rows.append(("shape", f"{entry.shape.describe()} (published; config.json {info.where})"))
    else:
        rows.append(("shape", f"unknown (config.json {info.where})"))
    rows.append(("this run", plan(settings)))
    return rows


def log_base(info: BaseInfo, settings: Settings) -> None:
    rows = describe(info, settings)
    log.info("base model %s:\n%s", info.name, "\n".join(f"  {label}: {text}" for label, text in rows))


def record_of(info: BaseInfo) -> dict[str, Any]:
    """What the run record keeps of it (run_manifest.json, `base_model`)."""
    entry = info.entry
    shape = info.shape
    return {
        "name": entry.name if entry else None,  # the published model it is (a local copy's card names it)
        "family": entry.family if entry else None,
        "size": entry.size if entry else None,
        "status": entry.status if entry else None,
        "status_read": family.STATUS_READ,
        "replacement": entry.replacement if entry and entry.replacement else None,
        "same_shape_as": [b.name for b in info.by_shape],
        "shape": shape.describe() if shape else None,
    }
