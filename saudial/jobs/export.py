"""`saudial export`: a finished run's adapter as GGUF for llama.cpp, Ollama and LM Studio, checked by llama.cpp.

1. Cheap checks first: the adapter folder is a finished saudial run, every type is one llama.cpp knows, the
   output folder is new, empty or an earlier export's (the rules of `saudial merge`: rundir/products.prepare).
2. The base model loaded unquantized from its own bf16 weights, widened to float32, the adapter merged in
   (inference/merged.py); with --lora-only the base alone.
3. One float32 GGUF written by saudial's converter (export/convert.py); each requested type made from it by
   llama.cpp's quantize (export/llama.py); with --lora-only the adapter as a GGUF LoRA instead.
4. Every file loaded by llama.cpp and compared with transformers on the same model (export/checks.py); a
   float type that does not reproduce the model stops the export, nothing of it kept.
5. The Ollama Modelfile and README.md beside them; the record (types, sizes, sha256, versions, the checks)
   in the folder's run_manifest.json and, for the default folder inside the run, the run's own record.

Everything is written into OUTPUT/staging and moved into OUTPUT only once all of it is complete and checked
(rundir/staging.py): SIGTERM (exit 75), a full disk (exit 74) or a failed check leave the previous export,
and every file saudial did not write, as they were.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from saudial.config.settings import Settings
from saudial.data.files import sha256_of
from saudial.errors import ConfigError, faults
from saudial.export import checks, convert, llama, modelfile
from saudial.inference.generate import settings_for_adapter
from saudial.inference.merged import load_base, merge_into
from saudial.process import signals
from saudial.rundir import products, record, staging
from saudial.rundir.record import MANIFEST, now, read_json, trained_task

log = logging.getLogger(__name__)

DEFAULT_TYPES = "q4_k_m,q8_0"
FOLDER = "gguf"  # the default --output: inside the run's folder, listed in its record
SOURCE = ".source-F32.gguf"  # the converter's float32 file in staging, removed unless f32 is asked for
OOM_EXPORT = "exporting holds the model in host memory in float32, twice (about 10 GB for LFM2-1.2B): free memory"


def check_finished_run(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's run record; exit 2 unless it is a finished saudial run (adapter, tokenizer, record)."""
    manifest = read_json(adapter_dir / MANIFEST)
    status = (manifest or {}).get("status")
    missing = [n for n in ("adapter_model.safetensors", "adapter_config.json") if not (adapter_dir / n).is_file()]
    if manifest is None or not manifest.get("saudial_run") or status not in (record.FINISHED, record.PUSHED) or missing:
        why = (
            f"it has no {', '.join(missing)}"
            if missing
            else "it has no saudial run record (run_manifest.json)"
            if manifest is None
            else f"its run is {status or 'of unknown status'}, not finished"
        )
        raise ConfigError(
            f"--adapter {str(adapter_dir)!r} is not a finished saudial run ({why}): point it at the output directory "
            "of a training run that finished (SAUDIAL_OUTPUT_DIR), or finish that run first"
        )
    return manifest


def stem_of(settings: Settings) -> str:
    base = Path(settings.model_name_or_path.rstrip("/")).name or "model"
    return f"{base}-saudial"


def run_export(
    settings: Settings, adapter_dir: Path, output: Path | None, quant: str | None, lora_only: bool
) -> dict[str, Any]:
    """Write and check the GGUF files; return the export's record."""
    if lora_only and quant:
        raise ConfigError(
            f"--quant {quant!r} does not apply with --lora-only: the GGUF LoRA is written in F32 (small, and llama.cpp "
            "applies it to a base GGUF of any type): leave out --quant, or leave out --lora-only for the merged model"
        )
    if lora_only and (settings.export or "").removeprefix("gguf"):
        log.warning("SAUDIAL_EXPORT=%s names GGUF types; --lora-only writes the LoRA in F32 only", settings.export)
    manifest = check_finished_run(adapter_dir)
    requested = quant or (settings.export or "").removeprefix("gguf:") or DEFAULT_TYPES
    types = [] if lora_only else llama.parse_types(requested, "--quant" if quant else "SAUDIAL_EXPORT")
    settings = settings_for_adapter(settings, adapter_dir)
    output = output if output is not None else adapter_dir / FOLDER
    inside = output.resolve().parent == adapter_dir.resolve()
    created = None if output.exists() else output
    # A folder holding anything saudial did not write is refused (exit 2), as is an earlier export without overwrite.
    work = products.prepare(output, settings, kind="export", listed_by=adapter_dir if inside else None)
    if inside:
        record.own(adapter_dir, output.name)  # the run's record lists its export folder before it is filled
    then = f"nothing in {output} outside {work} was changed; start the same command again"
    promoting = False
    try:
        with signals.interruptible("export", then), faults(work, oom_advice=OOM_EXPORT, note=then):
            export = write_all(settings, adapter_dir, work, types, lora_only, manifest)
            files = [name for name in staging.contents(work) if name != MANIFEST]
            record.update(work, {**manifest, "saudial_export": 1, "export": export, record.FILES: files}, replace=True)
            signals.check()
            promoting = True  # from here a crash is completed by the next start (staging.resume_promotion)
            staging.promote(output)
    except BaseException:
        if not promoting:
            products.discard(work, created)
        raise
    if inside:  # the run's own record says what was exported beside it
        record.update(adapter_dir, {"export": {**export, "folder": output.name}})
    log.info("GGUF export written to %s", output.resolve())
    return export


def write_all(
    settings: Settings, adapter_dir: Path, work: Path, types: list[str], lora_only: bool, manifest: dict[str, Any]
) -> dict[str, Any]:
    task = trained_task(adapter_dir) or "translate"
    stem = stem_of(settings)
    started = time.perf_counter()
    log.info("loading %s unquantized (float32) with the adapter %s", settings.model_name_or_path, adapter_dir)
    base, tokenizer = load_base(settings, adapter_dir, "float32")
    tokenizer_dir = work / ".tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    source = work / SOURCE
    files: list[dict[str, Any]] = []
    lora_name = ""
    if lora_only:  # the base as GGUF (for the check only), then the adapter
        convert.write_model(source, base, tokenizer, tokenizer_dir, stem)
        lora_name = f"{stem}-LoRA-F32.gguf"
        convert.write_lora(work / lora_name, adapter_dir, base.config, stem)
        files.append(described(work / lora_name, "lora", time.perf_counter() - started))
    model = merge_into(base, adapter_dir)
    texts = checks.check_texts(task, tokenizer)
    log.info("computing transformers' reference on %d prompts", len(texts))
    refs = {kind: checks.reference(model, tokenizer, texts, kind) for kind in {"f32", *types} & set(checks.ROUNDED)}
    refs["f32"] = checks.reference(model, tokenizer, texts)
    signals.check()
    if not lora_only:
        convert.write_model(source, model, tokenizer, tokenizer_dir, stem)
        source_seconds = time.perf_counter() - started
        for kind in types:
            signals.check()
            begun = time.perf_counter()
            target = work / f"{stem}-{kind.upper()}.gguf"
            log.info("llama.cpp: writing %s", target.name)
            if kind == "f32":
                target.write_bytes(source.read_bytes())
            else:
                llama.quantize(source, target, kind)
            files.append(described(target, kind, source_seconds + time.perf_counter() - begun))
    for entry in files:
        signals.check()
        path, lora = (source, work / entry["name"]) if entry["type"] == "lora" else (work / entry["name"], None)
        log.info("llama.cpp: checking %s against transformers", entry["name"])
        result = checks.check_file(entry["type"], path, refs.get(entry["type"], refs["f32"]), texts, lora=lora)
        entry["check"] = result.record()
        if not result.passed:
            raise ConfigError(failed_check(entry["name"], result))
        log.info(
            "%s: %.1f MiB; llama.cpp tokenizes the %d prompts like the tokenizer; top-1 agreement with transformers "
            "%.1f%%, largest logit difference %.1e of the largest logit",
            entry["name"],
            entry["bytes"] / 2**20,
            result.prompts,
            100 * result.top1_agreement,
            result.last_max_rel_diff,
        )
    source.unlink(missing_ok=True)
    staging.remove(work, [tokenizer_dir.name])
    dialect = ((manifest.get("config") or {}).get("dialects") or ["Najdi"])[0]
    template = task == "chat" and modelfile.chat_template_matches(tokenizer, checks.CONVERSATIONS)
    default = files[0]["name"] if not lora_only else f"{Path(settings.model_name_or_path).name}-F16.gguf"
    stops = [str(tokenizer.eos_token)]
    text = modelfile.modelfile(settings, default, task, stops, dialect, template, lora=lora_name)
    (work / "Modelfile").write_text(text, encoding="utf-8")
    names = [entry["name"] for entry in files]
    (work / "README.md").write_text(
        modelfile.readme(
            names, default, task, str(adapter_dir), settings.model_name_or_path, lora=lora_name, checks=table(files)
        ),
        encoding="utf-8",
    )
    return {
        "format": "gguf",
        "types": [entry["type"] for entry in files],
        "lora_only": lora_only,
        "files": files,
        "merged_from": "the base model's own weights in float32, the adapter merged with PEFT's merge_and_unload",
        "base_model": settings.model_name_or_path,
        "task": task,
        "modelfile": {"from": default, "template": task if task == "translate" or template else "none"},
        "versions": llama.versions(),
        "tolerance": {k: v for k, v in checks.FLOAT_TOLERANCE.items()},
        "exported": now(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def described(path: Path, kind: str, seconds: float) -> dict[str, Any]:
    return {
        "name": path.name,
        "type": kind,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "seconds_to_write": round(seconds, 2),
    }


def failed_check(name: str, result: checks.Result) -> str:
    if not result.tokens_equal:
        why = f"llama.cpp tokenizes check prompt {result.first_token_mismatch} differently from the tokenizer"
    elif result.greedy_identical < result.greedy_prompts:
        differ = result.greedy_prompts - result.greedy_identical
        why = f"greedy tokens differ on {differ} of {result.greedy_prompts} prompts"
    else:
        tol = checks.FLOAT_TOLERANCE.get(result.kind, 0.0)
        why = f"its logits differ by {result.last_max_rel_diff:.2e} of the largest logit (tolerance {tol:.0e})"
    return (
        f"{name} does not reproduce the model in llama.cpp ({why}): nothing of this export was kept; this model or "
        "tokenizer is not one saudial's GGUF export supports"
    )


def table(files: list[dict[str, Any]]) -> str:
    rows = [
        "",
        "| file | type | size | logits max rel. diff | top-1 agreement | greedy identical |",
        "|---|---|---|---|---|---|",
    ]
    for entry in files:
        check = entry.get("check") or {}
        rows.append(
            f"| `{entry['name']}` | {entry['type']} | {entry['bytes'] / 2**20:.1f} MiB | "
            f"{check.get('last_max_rel_diff', 0):.2e} | {check.get('top1_agreement', 0):.1%} | "
            f"{check.get('greedy_identical', 0)}/{check.get('greedy_prompts', 0)} |"
        )
    return "\n".join(rows) + "\n"
