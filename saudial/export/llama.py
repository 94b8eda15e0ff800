"""llama.cpp itself, through llama-cpp-python: quantize a GGUF, and load one to tokenize and run it.

Quantizing runs in a child process (`python -m saudial.export.llama SRC DST TYPE`): llama.cpp's quantize is
one long C call, during which Python cannot act on SIGTERM, and a failure inside llama.cpp (an abort, a
full disk) must not take saudial down with it. `quantize` waits for the child, stops it on SIGTERM/SIGINT
and removes what it had written; the child writes to a temporary name that `quantize` renames only once
the child reports success.

The type names are llama.cpp's own (`gguf.LlamaFileType`, as `llama-quantize` lists them): q4_k_m, q8_0,
f16, bf16, ... ; f32 is the converter's file itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from saudial.errors import ConfigError, Interrupted, StorageError, free_space

log = logging.getLogger(__name__)

NO_SPACE = "No space left on device"
SMALL_MODEL_BYTES = 64 << 20
# File types llama.cpp writes that are not types to ask for (the converter's guess, the tensor-mixing ones).
NOT_ASKED = {"GUESSED", "MOSTLY_Q4_1_SOME_F16"}


def known_types() -> dict[str, int]:
    """'q4_k_m' -> llama.cpp's ftype number, for every type llama.cpp's quantize writes."""
    types = {}
    for member in gguf.LlamaFileType:
        if member.name in NOT_ASKED:
            continue
        types[member.name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()] = int(member.value)
    return types


def parse_types(text: str, setting: str) -> list[str]:
    """'q4_k_m,Q8_0' -> ['q4_k_m', 'q8_0'] (in order, once each); an unknown name is exit 2 naming the types."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    known = known_types()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        listed = ", ".join(sorted(known))
        what = f"{unknown[0]!r} is not a type llama.cpp knows" if unknown else "no type is given"
        raise ConfigError(f"{setting}: {what}; choose from {listed} (e.g. q4_k_m,q8_0)")
    return list(dict.fromkeys(names))


def versions() -> dict[str, str]:
    import llama_cpp

    from saudial import __version__

    return {"llama_cpp_python": llama_cpp.__version__, "gguf": _version("gguf"), "saudial": __version__}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def quantize(source: Path, target: Path, kind: str, threads: int = 0) -> None:
    """`target` as llama.cpp's `kind` made from `source` (a float32 GGUF), in a child process."""
    partial = target.with_name(target.name + ".partial")
    command = [sys.executable, "-m", "saudial.export.llama", str(source), str(partial), kind, str(threads)]
    received: list[str] = []

    def stop(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while child.poll() is None and not received:
            time.sleep(0.05)
        if received:
            child.terminate()
            child.wait()
            partial.unlink(missing_ok=True)
            raise Interrupted(f"stopped by {received[0]} while llama.cpp wrote {target.name}")
        stderr = child.stderr.read() if child.stderr else ""
        if child.returncode != 0:
            partial.unlink(missing_ok=True)
            if NO_SPACE in stderr:
                raise StorageError(
                    f"cannot write {target}: ENOSPC ({NO_SPACE}); {free_space(target)} there: free space there or "
                    "write to a larger disk"
                )
            last = stderr.strip().splitlines()[-1][:200] if stderr.strip() else f"exit status {child.returncode}"
            raise RuntimeError(f"llama.cpp could not make {target.name}: {last}")
        os.replace(partial, target)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        partial.unlink(missing_ok=True)


def _quantize_here(source: str, target: str, kind: str, threads: int) -> int:
    """The child: llama.cpp's llama_model_quantize. 0 on success; llama.cpp's message on stderr otherwise."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = known_types()[kind]
    params.nthread = threads
    result = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if result != 0:
        print(f"llama_model_quantize returned {result}", file=sys.stderr)
    return 0 if result == 0 else 1


# llama.cpp's log, kept once installed (ctypes calls it from C: the Python function must stay alive).
_LOG_CALLBACK: list[Any] = []


def route_llama_log() -> None:
    """llama.cpp's log lines to this module's logger, at DEBUG: saudial's own lines say what an export does.

    Upstream: llama-cpp-python 0.3.36 reads ggml's log levels by an older numbering (its `_logger`: WARN as 3 is
    read as logging.ERROR), so with verbose=False llama.cpp's warnings still reached stderr, such as
    "llama_kv_cache: the V embeddings have different sizes across layers" for every LFM2 loaded.
    tests/test_export.py checks that an export prints no such line and that upstream's `Llama(verbose=False)` still
    does."""
    import ctypes

    import llama_cpp

    if _LOG_CALLBACK:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        log.debug("llama.cpp (%d): %s", level, text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _LOG_CALLBACK.append(callback)


class Runner:
    """One GGUF loaded by llama.cpp (and a LoRA GGUF applied to it): tokenize, logits, greedy tokens."""

    def __init__(self, path: Path, lora: Path | None = None, n_ctx: int = 1024, threads: int | None = None) -> None:
        from llama_cpp import Llama

        route_llama_log()
        if threads is None:  # a small model runs fastest on one thread (more only wait for each other)
            threads = 1 if path.stat().st_size < SMALL_MODEL_BYTES else min(4, os.cpu_count() or 1)
        self.llm = Llama(
            model_path=str(path),
            lora_path=str(lora) if lora else None,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids as llama.cpp tokenizes the text: BOS as the model's metadata says, special tokens parsed."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """The logits at every position of `ids` (a fresh sequence)."""
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: Sequence[int], new_tokens: int) -> list[int]:
        """`new_tokens` tokens chosen by argmax after `ids` (no stop token: every position is compared)."""
        self.llm.reset()
        self.llm.eval(list(ids))
        out: list[int] = []
        for _ in range(new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            self.llm.eval([token])
        return out

    def close(self) -> None:
        self.llm.close()


if __name__ == "__main__":
    source_arg, target_arg, kind_arg, threads_arg = sys.argv[1:5]
    sys.exit(_quantize_here(source_arg, target_arg, kind_arg, int(threads_arg)))
