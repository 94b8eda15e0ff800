"""What the Hub gets of a run's files where it differs from the run's folder: no path of this machine.

A run trained from a local copy of the base keeps absolute local paths in its folder, where the later commands
(translate, evaluate, merge, export) need them: PEFT's `adapter_config.json` names the base by the path it was
loaded from, and the run record (`run_manifest.json`) holds the data file, the base, the tokenizer and the output
folder absolute (rundir/record.located). On the Hub those paths name nothing a reader can load, and they tell the
world this machine's folders and user name. The Hub's copies therefore name the base as the published model it is
(model/base_model.py records it: `base_model.name` in metrics.json) or, where it is none, by its folder's name, as
the Hub's model card does (publish/card.py); and every other absolute path is cut to its last part. The files in
the run's folder are never changed.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Any

from saudial.rundir.record import MANIFEST, METRICS, read_json

ADAPTER_CONFIG = "adapter_config.json"


def is_local_path(value: object) -> bool:
    """An absolute path of this machine (a Hub id never is one)."""
    return isinstance(value, str) and PurePath(value).is_absolute()


def published_base(base_model: str, metrics: dict[str, Any]) -> str:
    """How the Hub names the base `base_model`: itself where it is a Hub id; for a local folder, the published
    model it is, else the folder's name."""
    if not is_local_path(base_model):
        return base_model
    return (metrics.get("base_model") or {}).get("name") or PurePath(base_model).name


def cut_paths(value: Any) -> Any:
    """`value` (JSON) with every absolute path cut to its last part."""
    if isinstance(value, dict):
        return {key: cut_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [cut_paths(item) for item in value]
    return PurePath(value).name if is_local_path(value) else value


def hub_copies(output_dir: Path) -> dict[str, bytes]:
    """The Hub's bytes of the run's files that name local paths, by their name in the repo (only those that do)."""
    copies: dict[str, bytes] = {}
    adapter = read_json(output_dir / ADAPTER_CONFIG)
    if adapter is not None and is_local_path(adapter.get("base_model_name_or_path")):
        metrics = read_json(output_dir / METRICS) or {}
        adapter["base_model_name_or_path"] = published_base(adapter["base_model_name_or_path"], metrics)
        # As PEFT writes it (PeftConfigMixin.save_pretrained): sorted keys, two spaces.
        copies[ADAPTER_CONFIG] = json.dumps(adapter, indent=2, sort_keys=True).encode()
    manifest = read_json(output_dir / MANIFEST)
    if manifest is not None:
        cut = cut_paths(manifest)
        if cut != manifest:
            copies[MANIFEST] = (json.dumps(cut, indent=2, ensure_ascii=False) + "\n").encode()  # as write_json does
    return copies
