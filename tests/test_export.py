"""GGUF export, checked by llama.cpp itself (llama-cpp-python, built from source) against transformers.

On the tiny LFM2 (both block kinds, the locally trained byte-level BPE with Arabic): the converter's file and
every type llama.cpp's quantize makes from it are loaded by llama.cpp and compared with transformers on the
same merged model; the LoRA GGUF on the base GGUF against the merged GGUF; the Modelfile's template against
saudial's own prompt. Then `saudial export` through the real entry point: a finished run, its files and
record; and each bad input and fault: exit code, one line, no GGUF under a final name, nothing else touched.

The random adapter's B matrices are drawn large (tests/adapter_run.random_adapter), so merged and base
differ everywhere and a LoRA that llama.cpp applied wrongly, or not at all, shows.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

# llama.cpp's gguf and llama-cpp-python come from the dev lock (CI and `make setup-dev` install them); the GPU
# machine's stack (bench/gpu-wheels) has neither, and its `pytest -m gpu` collects this module too.
pytest.importorskip("gguf", reason="gguf (requirements-dev.lock) is not installed")
pytest.importorskip("llama_cpp", reason="llama-cpp-python (requirements-dev.lock) is not installed")

from saudial.config.settings import Settings
from saudial.data.prompts import build_prompt
from saudial.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, ConfigError
from saudial.export import checks, convert, llama, modelfile
from tests.adapter_run import copy_run, random_adapter, trained_adapter
from tests.conftest import ENTRYPOINT, REPO, base_env

SAMPLE = REPO / "samples" / "saudial_synthetic_sample.xlsx"
# Floors for the quantized types' top-1 agreement with transformers over every position (1,726) of the 24
# check prompts, from measurement on the tiny model: q8_0 0.945, q4_k_m 0.722 (its 64-wide rows are too
# narrow for k-quants: llama.cpp falls back to q5_0/q8_0 per tensor). A broken quantization, tensor layout or
# tokenizer lands near chance (1/917); rounding noise between a random model's close logits does not.
TOP1_FLOOR = {"q8_0": 0.90, "q4_k_m": 0.60}
CONFIDENT_SCALE = 25.0


@pytest.fixture(scope="module")
def merged(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny LFM2 with a random adapter: the adapter saved, merged in float32, written as GGUF (f32 + LoRA),
    the base as f16 GGUF, and transformers' reference on the translate prompts."""
    import torch

    from saudial.inference.merged import merge_into
    from saudial.model.loading import load_tokenizer

    where = tmp_path_factory.mktemp("gguf")
    # The tiny model with its tied embeddings scaled up: logits spread over ~±10 as a trained model's do, so
    # that argmax is decided by the weights and not by rounding noise between near-equal logits.
    from saudial.model.loading import load_model

    settings = Settings(model_name_or_path=str(tiny_model), quantization="none", torch_dtype="float32")
    confident = load_model(settings, device_map="cpu")
    with torch.no_grad():
        confident.get_input_embeddings().weight.mul_(CONFIDENT_SCALE)
    confident.save_pretrained(where / "base-model")
    load_tokenizer(settings).save_pretrained(where / "base-model")
    settings = settings.model_copy(update={"model_name_or_path": str(where / "base-model")})
    peft_model, tokenizer = random_adapter(settings)
    adapter = where / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    base = peft_model.get_base_model()
    base_only = load_model(settings, device_map="cpu").eval()
    convert.write_model(where / "base-F32.gguf", base_only, tokenizer, adapter, "base")
    llama.quantize(where / "base-F32.gguf", where / "base-F16.gguf", "f16")
    convert.write_lora(where / "lora-F32.gguf", adapter, base.config, "lora")
    del peft_model, base
    model = merge_into(load_model(settings, device_map="cpu"), adapter)
    model.config.use_cache = True
    convert.write_model(where / "merged-F32.gguf", model, tokenizer, adapter, "merged")
    texts = checks.translate_prompts()
    with torch.inference_mode():
        ref = checks.reference(model, tokenizer, texts)
    return {"where": where, "tokenizer": tokenizer, "model": model, "texts": texts, "ref": ref, "adapter": adapter}


def test_llama_cpp_tokenizes_every_sample_row_and_prompt_like_the_tokenizer(merged: dict[str, Any]) -> None:
    tokenizer = merged["tokenizer"]
    frame = pd.read_excel(SAMPLE)
    texts = [str(v) for column in frame.columns[5:12] for v in frame[column].dropna()]
    texts += checks.ARABIC + checks.translate_prompts() + checks.chat_prompts(tokenizer)
    rows = frame.iloc[:, [0, 5, 8]].itertuples(index=False, name=None)
    texts += [build_prompt(d, str(e), c if isinstance(c, str) else None) for d, e, c in rows]
    assert len(texts) > 1500 and any(re.search("[\u0600-\u06ff]", t) for t in texts)
    runner = llama.Runner(merged["where"] / "merged-F32.gguf")
    try:
        differ = [t for t in texts if runner.tokenize(t) != tokenizer(t)["input_ids"]]
    finally:
        runner.close()
    assert not differ, differ[:3]


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_float_types_reproduce_transformers(merged: dict[str, Any], kind: str) -> None:
    path = merged["where"] / f"merged-{kind.upper()}.gguf"
    if kind != "f32":
        llama.quantize(merged["where"] / "merged-F32.gguf", path, kind)
    ref = checks.reference(merged["model"], merged["tokenizer"], merged["texts"], kind)  # the weights the file holds
    result = checks.check_file(kind, path, ref, merged["texts"])
    print(kind, result.record())
    assert result.prompts >= 20 and result.tokens_equal
    assert result.last_max_rel_diff <= checks.FLOAT_TOLERANCE[kind], result.record()
    assert result.greedy_identical == result.greedy_prompts == checks.GREEDY_PROMPTS, result.record()
    if kind != "bf16":  # f32, f16: every one of the 3 x 32 greedy tokens identical (measured: all of them)
        assert result.greedy_agreement == 1.0, result.record()
    assert result.passed


@pytest.mark.parametrize("kind", ["q8_0", "q4_k_m"])
def test_quantized_types_load_generate_and_mostly_agree(merged: dict[str, Any], kind: str) -> None:
    path = merged["where"] / f"merged-{kind.upper()}.gguf"
    llama.quantize(merged["where"] / "merged-F32.gguf", path, kind)
    assert 0 < path.stat().st_size < (merged["where"] / "merged-F32.gguf").stat().st_size
    result = checks.check_file(kind, path, merged["ref"], merged["texts"])
    print(kind, result.record())
    assert result.tokens_equal and result.passed
    assert result.top1_agreement >= TOP1_FLOOR[kind], result.record()


def test_lora_gguf_on_the_f16_base_equals_the_merged_f16_gguf(merged: dict[str, Any]) -> None:
    where = merged["where"]
    if not (where / "merged-F16.gguf").exists():
        llama.quantize(where / "merged-F32.gguf", where / "merged-F16.gguf", "f16")
    with_lora = llama.Runner(where / "base-F16.gguf", lora=where / "lora-F32.gguf")
    plain = llama.Runner(where / "base-F16.gguf")
    whole = llama.Runner(where / "merged-F16.gguf")
    try:
        worst = moved = 0.0
        for ids in merged["ref"].ids:
            got, want, base = with_lora.logits(ids), whole.logits(ids), plain.logits(ids)
            worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
            moved = max(moved, float(np.max(np.abs(base - want)) / np.max(np.abs(want))))
    finally:
        for runner in (with_lora, plain, whole):
            runner.close()
    print(f"lora vs merged f16: {worst:.2e} of the largest logit; base vs merged: {moved:.2e}")
    assert moved > 0.05  # the adapter changes the model: a LoRA that was not applied would fail below
    assert worst <= 2 * checks.FLOAT_TOLERANCE["f16"]  # both sides rounded to f16, differently (measured 5.4e-3)


def go_template(template: str, fields: dict[str, Any]) -> str:
    """Ollama's Go template, for the constructs the Modelfile uses: `{{ .Field }}`, `{{- range .Messages }} ...
    {{ end }}` (with `{{ .Role }}`, `{{ .Content }}` inside) and `{{-` trimming the text before it."""
    template = re.sub(r"\s*\{\{-", "{{", template)

    def fill(text: str, scope: dict[str, Any]) -> str:
        return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: str(scope[m.group(1)]), text)

    def loop(m: re.Match[str]) -> str:
        return "".join(fill(m.group(2), {k.capitalize(): v for k, v in item.items()}) for item in fields[m.group(1)])

    return fill(re.sub(r"\{\{ range \.(\w+) \}\}(.*?)\{\{ end \}\}", loop, template, flags=re.S), fields)


def test_the_modelfile_template_renders_the_prompt_saudial_translate_builds(merged: dict[str, Any]) -> None:
    text = modelfile.modelfile(Settings(), "m.gguf", "translate", ["<|im_end|>"], "Najdi", False)
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S)
    assert template and 'SYSTEM """Najdi"""' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER temperature 0" in text and "PARAMETER repeat_penalty 1.05" in text
    for dialect in checks.DIALECTS:
        for english in checks.ENGLISH:
            rendered = go_template(template.group(1), {"System": dialect, "Prompt": english})
            assert rendered == build_prompt(dialect, english)
    tokenizer = merged["tokenizer"]
    for messages in checks.CONVERSATIONS:
        rendered = go_template(modelfile.CHAT_TEMPLATE, {"Messages": messages})
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.bos_token + rendered == expected
    assert modelfile.chat_template_matches(tokenizer, checks.CONVERSATIONS)


def test_the_readmes_llama_cli_line_fits_the_task() -> None:
    """A translate adapter reads saudial's prompt as raw text; a chat adapter needs conversation mode (-cnv), where
    llama-cli applies the GGUF's chat template, for one turn (-st)."""
    translate = modelfile.readme(["x-Q8_0.gguf"], "x-Q8_0.gguf", "translate", "run", "base")
    chat = modelfile.readme(["x-Q8_0.gguf"], "x-Q8_0.gguf", "chat", "run", "base")
    assert re.search(r"^llama-cli -m x-Q8_0\.gguf -no-cnv .* -p \"", translate, re.M), translate
    assert re.search(r"^llama-cli -m x-Q8_0\.gguf -cnv -st .* -p \"Where is the market\?\"$", chat, re.M), chat
    assert "-no-cnv" not in chat


def test_quant_types_are_llama_cpps() -> None:
    assert llama.parse_types("Q4_K_M, q8_0,f16,bf16,q4_k_m", "--quant") == ["q4_k_m", "q8_0", "f16", "bf16"]
    with pytest.raises(ConfigError, match=r"--quant: 'q3_k_xl' is not a type llama.cpp knows; choose from .*q4_k_m"):
        llama.parse_types("q4_k_m,q3_k_xl", "--quant")


# --- the command, through the real entry point ----------------------------------------------------------


def export_env(tiny_model: Path, workbook: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = base_env(tiny_model, workbook, tmp_path / "unused", **extra)
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH"):
        env.pop(key)  # from the run's manifest
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENTRYPOINT), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr[-3000:]
    return errors[0]


def tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_adapter(tiny_model, workbook, tmp_path_factory)


@pytest.mark.slow
def test_export_of_a_finished_run(run_dir: Path, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    out = copy_run(run_dir, tmp_path / "run")
    (out / "gguf").mkdir()  # an empty folder is the user's to give
    env = export_env(tiny_model, workbook, tmp_path)
    started = time.perf_counter()
    result = run(env, "export", "--adapter", str(out), "--quant", "q8_0,f16")
    print(f"saudial export: {time.perf_counter() - started:.1f} s\n{result.stderr[-2000:]}")
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    names = sorted(p.name for p in (out / "gguf").iterdir())
    stem = f"{tiny_model.name}-saudial"
    assert names == sorted(["Modelfile", "README.md", "run_manifest.json", f"{stem}-Q8_0.gguf", f"{stem}-F16.gguf"])
    record = json.loads((out / "gguf" / "run_manifest.json").read_text())
    export = record["export"]
    assert [f["type"] for f in export["files"]] == ["q8_0", "f16"] and export["versions"]["llama_cpp_python"]
    for entry in export["files"]:
        assert entry["bytes"] == (out / "gguf" / entry["name"]).stat().st_size and len(entry["sha256"]) == 64
        assert entry["check"]["tokens_equal"] and entry["check"]["passed"]
    assert "gguf" in json.loads((out / "run_manifest.json").read_text())["files"]
    # llama.cpp's log goes to saudial's logger (export/llama.route_llama_log); upstream, with verbose=False, it
    # still prints its warnings: llama-cpp-python reads ggml's WARN level as an error.
    assert not [line for line in result.stderr.splitlines() if line.startswith("llama")], result.stderr[-2000:]
    load = f"from llama_cpp import Llama; Llama(model_path={str(out / 'gguf' / f'{stem}-Q8_0.gguf')!r}, verbose=False)"
    upstream = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120)
    assert upstream.returncode == 0 and "llama_kv_cache: " in upstream.stderr, upstream.stderr[-2000:]
    assert json.loads((out / "run_manifest.json").read_text())["export"]["folder"] == "gguf"
    assert f"FROM ./{stem}-Q8_0.gguf" in (out / "gguf" / "Modelfile").read_text()
    assert "vllm serve" in (out / "gguf" / "README.md").read_text()
    again = run(env, "export", "--adapter", str(out), "--quant", "q8_0")  # an earlier export: not without overwrite
    assert again.returncode == EXIT_CONFIG and "holds an earlier export" in one_error_line(again.stderr)
    lora_env = env | {"SAUDIAL_EXPORT": "gguf:f16"}  # types that do not apply to the LoRA: said, not silently dropped
    lora = run(lora_env, "export", "--adapter", str(out), "--output", str(tmp_path / "lora"), "--lora-only")
    assert lora.returncode == EXIT_OK, lora.stderr[-3000:]
    assert "SAUDIAL_EXPORT=gguf:f16 names GGUF types; --lora-only writes the LoRA in F32 only" in lora.stderr
    entry = json.loads((tmp_path / "lora" / "run_manifest.json").read_text())["export"]["files"][0]
    assert entry["name"] == f"{stem}-LoRA-F32.gguf" and entry["check"]["passed"]  # on the base GGUF, vs merged
    assert f"ADAPTER ./{stem}-LoRA-F32.gguf" in (tmp_path / "lora" / "Modelfile").read_text()


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(run_dir: Path, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    env = export_env(tiny_model, workbook, tmp_path)
    out = copy_run(run_dir, tmp_path / "run")
    before = tree(out)
    result = run(env, "export", "--adapter", str(out), "--quant", "q4_k_m,q3_k_xl")
    assert result.returncode == EXIT_CONFIG
    assert "--quant: 'q3_k_xl' is not a type llama.cpp knows" in one_error_line(result.stderr)
    result = run(env, "export", "--adapter", str(out), "--lora-only", "--quant", "f16")
    assert result.returncode == EXIT_CONFIG
    assert "--quant 'f16' does not apply with --lora-only: the GGUF LoRA is written in F32" in one_error_line(
        result.stderr
    )
    original = (out / "run_manifest.json").read_text()
    (out / "run_manifest.json").write_text(json.dumps(json.loads(original) | {"status": "trained"}))
    result = run(env, "export", "--adapter", str(out))
    assert result.returncode == EXIT_CONFIG
    assert "is not a finished saudial run (its run is trained, not finished)" in one_error_line(result.stderr)
    (out / "run_manifest.json").write_text(original)
    assert tree(out) == before and not (out / "gguf").exists()
    # A damaged adapter is found once the export has begun: it leaves no staging folder, and no output folder
    # where the export made one.
    damaged = copy_run(run_dir, tmp_path / "damaged")
    adapter = damaged / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    for output in ([], ["--output", str(tmp_path / "new" / "gguf")]):
        result = run(env, "export", "--adapter", str(damaged), *output)
        assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
        assert "adapter_model.safetensors" in one_error_line(result.stderr)
    assert not (damaged / "gguf").exists() and not (tmp_path / "new" / "gguf").exists()


@pytest.mark.slow
def test_a_full_disk_during_the_export_exits_74_and_keeps_nothing(
    run_dir: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    from tests.conftest import fill

    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "mine.txt").write_text("the user's")
        out = tmp_path / "run"
        copy_run(run_dir, out)
        size = (tiny_model / "model.safetensors").stat().st_size
        filler = fill(disk, size * 2)  # room for the float32 file, not for it and the types made from it
        before = tree(disk)
        result = run(
            export_env(tiny_model, workbook, tmp_path),
            "export",
            "--adapter",
            str(out),
            "--output",
            str(disk / "gguf"),
            "--quant",
            "f32,f16,bf16,q8_0",
        )
        assert result.returncode == EXIT_IO, result.stderr[-3000:]
        line = one_error_line(result.stderr)
        assert f"cannot write {disk / 'gguf'}" in line and "free" in line, line
        assert not list((disk / "gguf").glob("*.gguf"))  # nothing under a final name
        assert {k: v for k, v in tree(disk).items() if not k.startswith("gguf/")} == before
        filler.unlink()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


SLOW_QUANTIZE = """
import os, sys, time
if os.environ.get("SLOW_QUANTIZE") and "saudial.export.llama" in sys.orig_argv:
    open(os.environ["SLOW_QUANTIZE"], "w").close()
    time.sleep(60)
"""


@pytest.mark.slow
def test_sigterm_during_quantization_exits_75_and_keeps_nothing(
    run_dir: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """llama.cpp's quantize made slow (the child process sleeps before it starts): SIGTERM meanwhile."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_QUANTIZE)
    marker = tmp_path / "quantizing"
    out = copy_run(run_dir, tmp_path / "run")
    env = export_env(tiny_model, workbook, tmp_path) | {"PYTHONPATH": str(tmp_path), "SLOW_QUANTIZE": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), "export", "--adapter", str(out), "--quant", "q8_0"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert "stopped by SIGTERM while llama.cpp wrote" in one_error_line(stderr)
    assert not (out / "gguf").exists()  # the export made it, and nothing of the export is kept


@pytest.mark.slow
def test_a_training_run_with_saudial_export_ends_with_the_gguf_files(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    bad = run(base_env(tiny_model, workbook, out, SAUDIAL_EXPORT="gguf:q4_k_m,q9"), "train")
    assert bad.returncode == EXIT_CONFIG and "SAUDIAL_EXPORT: 'q9' is not a type llama.cpp knows" in one_error_line(
        bad.stderr
    )
    assert not out.exists()  # refused before anything was written
    result = run(base_env(tiny_model, workbook, out, SAUDIAL_EVAL="none", SAUDIAL_EXPORT="gguf:q8_0"), "train")
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    record = json.loads((out / "run_manifest.json").read_text())
    assert record["status"] == "finished" and "gguf" in record["files"]
    assert [f["type"] for f in record["export"]["files"]] == ["q8_0"]
    assert (out / "gguf" / record["export"]["files"][0]["name"]).is_file()
    card = (out / "README.md").read_text()
    assert "## GGUF (llama.cpp, Ollama, LM Studio)" in card and record["export"]["files"][0]["sha256"][:16] in card
