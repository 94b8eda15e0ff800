"""The model card (README.md), made with huggingface_hub's ModelCard support: written into the output
directory at the end of every run (replacing the placeholder TRL and PEFT leave there) and uploaded as
it is by `saudial push`.

YAML metadata (base_model, library_name peft, pipeline_tag, languages, datasets, tags, and a
model-index with chrF++/BLEU), then: what it was trained on (rows per dialect), the evaluation table,
how to load and use the adapter, the settings (those that differ from the defaults, then all of them),
the training results and the versions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from saudial.config.settings import Settings
from saudial.config.sources import default_of
from saudial.data.text import SYNTHETIC
from saudial.inference.scoring import OVERALL
from saudial.publish import chat_card
from saudial.publish.hub_files import cut_paths, published_base
from saudial.rundir.record import EVALUATIONS, MANIFEST, METRICS, RESULTS_MD, read_json

log = logging.getLogger(__name__)

CARD = "README.md"
DATASET_NAME = "SauDial"
DATASET_ID = "SauDial"  # not on the Hub: the workbook of the SauDial data article (Data in Brief, 2025)
TAGS = ["saudial", "lora", "qlora", "peft", "trl", "sft", "translation", "arabic", "saudi-dialect", "lfm2"]


def eval_results(metrics: dict[str, Any], dataset: str = DATASET_NAME, chat: bool = False) -> list[EvalResult]:
    """chrF++ and BLEU of the adapter, overall and per dialect, as model-index entries."""
    scores = ((metrics.get("evaluation") or {}).get("scores") or {}).get("adapter") or {}
    results = []
    for dialect, values in scores.items():
        config = None if dialect == OVERALL else dialect
        name = dataset if config is None else f"{dataset} ({dialect})"
        for metric_type, metric_name in (("chrf", "chrF++"), ("bleu", "BLEU")):
            key = "chrf++" if metric_type == "chrf" else "bleu"
            results.append(
                EvalResult(
                    task_type="text-generation" if chat else "translation",
                    task_name=chat_card.TASK_NAME if chat else "English to Saudi dialect translation",
                    dataset_type="json" if chat else DATASET_ID if dataset == DATASET_NAME else "synthetic",
                    dataset_name=name,
                    dataset_config=config,
                    dataset_split="held-out",
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=values[key],
                )
            )
    return results


def build_card(output_dir: Path, repo_id: str | None = None) -> ModelCard:
    """The card of the run in `output_dir`; `repo_id` is its Hub repo (None: a card for the local directory)."""
    output_dir = output_dir.resolve()  # the local card's snippets load from it wherever they run
    manifest = read_json(output_dir / MANIFEST) or {}
    metrics = read_json(output_dir / METRICS) or {}
    config: dict[str, Any] = manifest.get("config") or {}
    base_model = str(config.get("model_name_or_path") or _adapter_base(output_dir) or "LiquidAI/LFM2-1.2B")
    if repo_id:  # a local copy of the base: the Hub's card names the published model it is, never a local path
        base_model = published_base(base_model, metrics)
    name = repo_id.split("/")[-1] if repo_id else output_dir.name
    chat = config.get("task") == "chat"  # trained on conversations (SAUDIAL_TASK=chat): publish/chat_card.py
    file_name = Path(str((manifest.get("data") or {}).get("file") or "conversations")).name
    synthetic = bool((manifest.get("data") or {}).get("synthetic"))  # the bundled sample: data/workbook.is_synthetic
    dataset_name = SYNTHETIC if synthetic else DATASET_NAME
    results = eval_results(metrics, file_name, chat=True) if chat else eval_results(metrics, dataset_name)
    quantized_4bit = config.get("quantization", "4bit") == "4bit"  # QLoRA; else LoRA (describe_method)
    data = ModelCardData(
        base_model=base_model if not repo_id or base_model.count("/") == 1 else None,  # the Hub's: a model id
        library_name="peft",
        pipeline_tag="text-generation",
        language=["en", "ar"],
        license="other",
        datasets=None if chat or synthetic else [DATASET_ID],
        tags=[t for t in (chat_card.TAGS if chat else TAGS) if t != "qlora" or quantized_4bit],
        model_name=name,
        eval_results=results or None,
        metrics=["chrf", "bleu"] if results else None,
    )
    body = render_body(output_dir, repo_id or str(output_dir), name, base_model, manifest, metrics)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def render_body(
    output_dir: Path, source: str, name: str, base_model: str, manifest: dict[str, Any], metrics: dict[str, Any]
) -> str:
    """`source`: where the adapter is loaded from in the usage snippet (the Hub repo id or the directory)."""
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    dialects = ", ".join(data.get("per_dialect") or {}) or "Najdi, Hijazi, Eastern, Southern"
    method = describe_method(config, manifest.get("compute_dtype"))
    base_link = (
        base_model
        if Path(base_model).is_absolute() or base_model.count("/") != 1
        else (f"[{base_model}](https://huggingface.co/{base_model})")
    )
    revision = (manifest.get("model") or {}).get("revision_sha")
    pinned = f" Base model revision: `{revision}`." if revision else ""
    shown = source if source == str(output_dir) else "DIR"
    dtype = str(manifest.get("compute_dtype") or "")  # the snippets load the base as the run computed
    dtype = dtype if dtype in ("float32", "float16", "bfloat16") else "bfloat16"
    if config.get("task") == "chat":
        what, data_text = chat_card.intro(method, base_link, data) + pinned, chat_card.data_section(data)
        usage = [chat_card.usage_snippet(source, base_model, dtype), chat_card.usage_note(shown)]
    else:
        what = (
            (
                f"A {method} adapter for {base_link}, trained with TRL's `SFTTrainer` by saudial on the {SYNTHETIC}: "
                "a word code in Arabic script in place of translations, so it does not translate; it shows the "
                f"pipeline end to end. On the SauDial workbook the same run makes a translator into {dialects}."
            )
            if data.get("synthetic")
            else f"A {method} adapter for {base_link} that translates English game text into Saudi dialects "
            f"({dialects}), trained with TRL's `SFTTrainer` by saudial on the SauDial workbook."
        ) + pinned
        data_text = _data_section(data)
        usage = [
            usage_snippet(source, base_model, dtype),
            "The prompt must be exactly the training prompt (the response part empty); "
            f'`saudial translate --adapter {shown} --dialect Najdi "..."` '
            "does it for you, and `saudial merge` writes a merged bf16 model for vLLM or llama.cpp.",
        ]
    sections = [
        f"# {name}",
        what,
        "## Training data",
        data_text,
        "## Evaluation",
        _evaluation_section(output_dir, metrics),
        "## Usage",
        *usage,
        *_gguf_section(manifest.get("export")),
        "## Training settings",
        _settings_section(config if source == str(output_dir) else cut_paths(config)),
        "## Training results",
        _training_results(metrics),
        "## Versions",
        "\n".join(f"- {k}: {v}" for k, v in (manifest.get("versions") or {}).items() if v)
        + f"\n- device: {manifest.get('device', 'unknown')}"
        + f"\n- git revision: {manifest.get('git_revision') or 'unknown'}",
    ]
    return "\n\n".join(sections) + "\n"


def describe_method(config: dict[str, Any], compute_dtype: Any = None) -> str:
    """What the run trained: QLoRA on a 4-bit base, or LoRA on an 8-bit or unquantized one (with its dtype)."""
    quant = config.get("quantization", "4bit")
    dtype = f", {compute_dtype} compute" if compute_dtype else ""
    if quant == "4bit":
        kind = str(config.get("bnb_4bit_quant_type") or "nf4").upper()
        return f"QLoRA (LoRA on the 4-bit {kind}-quantized base{dtype})"
    if quant == "8bit":
        return f"LoRA (on the 8-bit quantized base{dtype})"
    return f"LoRA (on the unquantized {compute_dtype} base)" if compute_dtype else "LoRA (on the unquantized base)"


def _gguf_section(export: Any) -> list[str]:
    """The GGUF files `saudial export` wrote beside the adapter (SAUDIAL_EXPORT), with llama.cpp's checks."""
    if not isinstance(export, dict) or not export.get("files"):
        return []
    folder = export.get("folder", "gguf")
    rows = ["| file | type | size | sha256 | checked by llama.cpp |", "|---|---|---|---|---|"]
    for entry in export["files"]:
        check = entry.get("check") or {}
        verdict = f"top-1 agreement {check.get('top1_agreement', 0):.1%}, greedy {check.get('greedy_identical', 0)}"
        verdict += f"/{check.get('greedy_prompts', 0)} identical" if check.get("passed") else " (failed)"
        rows.append(
            f"| `{folder}/{entry['name']}` | {entry['type']} | {entry['bytes'] / 2**20:.1f} MiB | "
            f"`{entry['sha256'][:16]}…` | {verdict} |"
        )
    versions = ", ".join(f"{k} {v}" for k, v in (export.get("versions") or {}).items())
    how = (
        f"For llama.cpp, Ollama and LM Studio: `{folder}/Modelfile` (`ollama create NAME -f Modelfile`) and "
        f"`{folder}/README.md` say how to run them. Written and checked with {versions}."
    )
    return ["## GGUF (llama.cpp, Ollama, LM Studio)", "\n".join(rows), how]


def _settings_section(config: dict[str, Any]) -> str:
    """The settings that differ from saudial's defaults, then all of them (folded)."""
    if not config:
        return "See run_manifest.json."
    changed = []
    for key, value in config.items():
        if key in Settings.model_fields and value != json.loads(json.dumps(default_of(key), default=str)):
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            changed.append(f"| `{key}` | `{shown}` |")
    table = "\n".join(["| setting | value |", "|---|---|", *changed]) if changed else "All settings at their defaults."
    full = json.dumps(config, indent=2, ensure_ascii=False, default=str)
    return f"{table}\n\n<details><summary>All settings</summary>\n\n```json\n{full}\n```\n\n</details>"


def _adapter_base(output_dir: Path) -> str | None:
    return (read_json(output_dir / "adapter_config.json") or {}).get("base_model_name_or_path")


def _data_section(data: dict[str, Any]) -> str:
    if not data:
        return "See run_manifest.json."
    lines = [
        ("**The bundled synthetic sample, not SauDial.** " if data.get("synthetic") else "")
        + f"File `{Path(str(data.get('file', ''))).name}` (sha256 `{str(data.get('sha256', ''))[:16]}…`): "
        f"{data.get('rows_read')} rows read, {data.get('dropped_empty')} empty dropped, "
        f"{data.get('duplicates_removed')} exact duplicates removed; held-out split without any English "
        "sentence on both sides.",
        "",
        "| Dialect | train | eval |",
        "|---|---:|---:|",
    ]
    for dialect, counts in (data.get("per_dialect") or {}).items():
        lines.append(f"| {dialect} | {counts.get('train')} | {counts.get('eval')} |")
    return "\n".join(lines)


def _evaluation_section(output_dir: Path, metrics: dict[str, Any]) -> str:
    table = output_dir / RESULTS_MD
    if table.is_file():
        return table.read_text(encoding="utf-8").strip() + _samples_note(metrics) + _history_note(metrics)
    if "eval_loss" in metrics:
        return f"Eval loss: {metrics['eval_loss']:.4f} (translations were not scored in this run)."
    return "Not evaluated in this run (`saudial evaluate --adapter DIR` does it)."


def _samples_note(metrics: dict[str, Any]) -> str:
    """metrics.json's `eval_samples` is the held-out split; `evaluation.samples` how many of it were scored."""
    scored = (metrics.get("evaluation") or {}).get("samples")
    split = metrics.get("eval_samples")
    if isinstance(scored, int) and isinstance(split, int) and scored < split:
        return (
            f"\n\nTranslations scored on {scored} of the {split} held-out examples (SAUDIAL_MAX_EVAL_SAMPLES; "
            "sampled per dialect in proportion)."
        )
    return ""


def _history_note(metrics: dict[str, Any]) -> str:
    """Which of the run's evaluations the card shows: the latest; metrics.json keeps them all."""
    history = metrics.get(EVALUATIONS)
    if not isinstance(history, list) or len(history) < 2 or not isinstance(history[-1], dict):
        return ""
    last = history[-1]
    return (
        f"\n\nThe latest of {len(history)} evaluations of this adapter ({last.get('evaluated')}, by `saudial "
        f"{last.get('command')}`); `evaluations` in metrics.json keeps every one with its settings."
    )


def _training_results(metrics: dict[str, Any]) -> str:
    keys = ["train_loss", "eval_loss", "train_steps", "train_samples", "train_runtime_s", "train_tokens_per_second"]
    rows = [
        f"| {k} | {metrics[k]:.4g} |" if isinstance(metrics[k], float) else f"| {k} | {metrics[k]} |"
        for k in keys
        if k in metrics
    ]
    return "\n".join(["| metric | value |", "|---|---:|", *rows]) if rows else "See metrics.json."


def usage_snippet(source: str, base_model: str, dtype: str = "bfloat16") -> str:
    return f'''```python
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{source}")
model = AutoModelForCausalLM.from_pretrained("{base_model}", dtype=torch.{dtype}, device_map="auto")
model = PeftModel.from_pretrained(model, "{source}").eval()

# The training prompt, character for character, with the response left empty.
prompt = (
    "### Instruction:\\n"
    "Translate the following English text to Saudi Dialect (Najdi).\\n"
    "Context: Shop dialogue\\n"  # leave this line out when there is no context
    "\\n### Input:\\nWelcome, traveller! What would you like to buy?\\n\\n### Response:\\n"
)
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=256, do_sample=False, eos_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```'''


def write_card(output_dir: Path, repo_id: str | None = None) -> Path:
    """README.md in `output_dir`: the run's card (for the Hub repo `repo_id`, or for the directory itself)."""
    card = build_card(output_dir, repo_id)
    path = output_dir / CARD
    path.write_text(str(card), encoding="utf-8")
    log.info("model card written to %s", path)
    return path
