"""Load the tokenizer and the (optionally quantized) base model, safely, from a known revision.

Training, evaluation, translation and merging all load the base model through `load_model`, so a
model behaves the same in each of them: 4-bit NF4 on a GPU by default, unquantized on the CPU.
Weights load from safetensors only (a pickle can run code when loaded) and never with the model's own
code (`trust_remote_code=False`). `resolve_revision` pins a Hub model's revision (a branch like "main")
to the commit it names now, so every process and every later resume loads the same weights.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from saudial.config.huggingface import check_model_access, hub_offline
from saudial.errors import ConfigError
from saudial.model import content_hash, patches
from saudial.model.hardware import check_cuda, compute_dtype

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)


def bnb_fields(settings: Settings) -> dict[str, Any]:
    """Settings named like a BitsAndBytesConfig argument (bnb_4bit_quant_type, ...), passed as they are."""
    accepted = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    return {name: getattr(settings, name) for name in type(settings).model_fields if name in accepted}


def quantization_config(settings: Settings, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if settings.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, **bnb_fields(settings))
    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(
    settings: Settings, source: str | None = None, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """Load the tokenizer; give it a pad token distinct from EOS where it has none.

    A pad token equal to EOS was once how EOS got masked out of the labels, so models never learned
    to stop. TRL masks padding by position now, but a distinct pad token keeps that failure away.
    """
    name = source or settings.tokenizer_name_or_path or settings.model_name_or_path
    pinned = revision if name == settings.model_name_or_path and revision else settings.model_revision
    setting = "SAUDIAL_TOKENIZER_NAME_OR_PATH" if settings.tokenizer_name_or_path else "SAUDIAL_MODEL_NAME_OR_PATH"
    check_model_access(name, pinned, setting, "tokenizer_config.json")  # no Hub: one line, at once
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=pinned, trust_remote_code=False)
    except (OSError, ValueError) as exc:  # missing, unreadable or not a tokenizer transformers can load
        raise ConfigError(_load_failure("tokenizer", name, exc)) from None
    if tokenizer.eos_token is None:
        raise ConfigError(f"the tokenizer of {name} has no EOS token: set SAUDIAL_TOKENIZER_NAME_OR_PATH")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(settings: Settings, device_map: Any = None, revision: str | None = None) -> Any:
    """The base model, quantized as configured, through the real `from_pretrained` path (safetensors only).
    `revision`: the commit `resolve_revision` pinned (default: SAUDIAL_MODEL_REVISION as it is)."""
    dtype = compute_dtype(settings)
    quant = quantization_config(settings, dtype)
    if quant is not None:
        check_cuda()
        if device_map is None:
            # QLoRA under data parallelism: each process puts its 4-bit copy on its own GPU.
            device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    check_model_access(settings.model_name_or_path, revision or settings.model_revision)  # no Hub: one line, at once
    # "auto" loads SDPA; training switches padding-free runs to the varlen kernel (patches.py).
    attention = "sdpa" if settings.attn_implementation == "auto" else settings.attn_implementation
    if attention == "sdpa":
        patches.avoid_cudnn_attention()  # host cost per new shape: generation 3.5-5.4x slower (patches.py, item 5)
    # A local folder by its absolute path: PEFT writes the model's name into every adapter_config.json (a
    # checkpoint's too), which then loads from any working directory.
    local = Path(settings.model_name_or_path).expanduser()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local.resolve()) if local.is_dir() else settings.model_name_or_path,
            revision=revision or settings.model_revision,
            use_safetensors=True,  # never a pickle (pytorch_model.bin): loading one can run code
            trust_remote_code=False,
            dtype=dtype,
            quantization_config=quant,
            device_map=device_map,
            attn_implementation=attention,
        )
    except (OSError, ValueError) as exc:  # missing, unreadable, pickle-only, or needs its own code
        raise ConfigError(_load_failure("model", settings.model_name_or_path, exc)) from None
    model.config.use_cache = False  # the KV cache is useless in training and warns with checkpointing
    return model


def _load_failure(what: str, name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "safetensors" in str(exc) and Path(name).is_dir() and any(Path(name).glob("*.bin")):
        return (
            f"cannot load the {what} {name!r}: it has only pickle (.bin) weights, which saudial does not load (a "
            "pickle can run code): load it once yourself and save it with save_pretrained, which writes .safetensors"
        )
    if "trust_remote_code" in str(exc):
        return (
            f"cannot load the {what} {name!r}: it needs code from its own repository (trust_remote_code), which "
            "saudial never runs: use a model that transformers supports itself (LFM2 is)"
        )
    hint = (
        "HF_HUB_OFFLINE is set, so it must already be in the Hugging Face cache (HF_HOME) or be a local directory"
        if hub_offline()
        else "check SAUDIAL_MODEL_NAME_OR_PATH (a Hub id or a local directory), the network, and HF_TOKEN for "
        "gated or private models"
    )
    return f"cannot load the {what} {name!r}: {first}. {hint}"


SHA = re.compile(r"[0-9a-f]{40}")


def resolve_revision(settings: Settings) -> dict[str, Any]:
    """Where the base model comes from, pinned: the manifest's `model` (run_manifest.json).

    A Hub id: `revision_sha` is the commit SAUDIAL_MODEL_REVISION names now (huggingface_hub's
    `model_info`; offline, or when the Hub cannot be asked, the commit of the cached snapshot; None if
    neither is there, and loading then says why). A local directory: `source` "local", no commit, and
    `content_sha256`: one sha256 over the names and contents of its files.
    """
    name = settings.model_name_or_path
    if Path(name).is_dir():
        return {
            "name_or_path": str(Path(name).resolve()),  # absolute, as in the run record's settings
            "source": "local",
            "revision_sha": None,
            "content_sha256": content_hash.sha256(Path(name)),  # started early by the CLI
        }
    revision = settings.model_revision
    found: dict[str, Any] = {"name_or_path": name, "source": "hub", "revision": revision, "revision_sha": None}
    if SHA.fullmatch(revision):
        return found | {"revision_sha": revision}
    from huggingface_hub import HfApi, snapshot_download

    if not hub_offline():
        try:
            return found | {"revision_sha": HfApi().model_info(name, revision=revision).sha}
        except Exception as exc:  # offline, gated without a token, a hiccup: the cache may still know it
            log.info("could not ask the Hub for the commit of %s@%s (%s)", name, revision, type(exc).__name__)
    try:
        snapshot = snapshot_download(name, revision=revision, local_files_only=True, allow_patterns=["config.json"])
        return found | {"revision_sha": Path(snapshot).name if SHA.fullmatch(Path(snapshot).name) else None}
    except Exception:
        log.warning("the commit of %s@%s is unknown (not in the cache, Hub not reachable)", name, revision)
        return found
