"""Process-wide options of the libraries underneath, set before they initialize (torch is not imported here)."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

# PyTorch's caching allocator with expandable segments. Padding-free rows change length every step, and the
# native allocator fragments on them: measured on an H200 (docs/benchmarks.md), the default 900-row run
# reserved 48.8 GiB for 22.0 GiB allocated, and 22.6 GiB with expandable segments at the same speed.
ALLOCATOR = "expandable_segments:True"


ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the older name, and torch's newer one


def configure_allocator() -> None:
    """Expandable segments, unless the user configured the allocator. Must run before CUDA is initialized
    (torch reads the variable at its lazy CUDA init); cli.main calls it first, and the image sets it too."""
    if not any(name in os.environ for name in ALLOCATOR_VARIABLES):
        os.environ[ALLOCATOR_VARIABLES[0]] = ALLOCATOR


def expandable_segments() -> bool:
    """Whether this process's allocator settings have expandable segments on (PyTorch reads True or true)."""
    settings = next((os.environ[name] for name in ALLOCATOR_VARIABLES if name in os.environ), "")
    return "expandable_segments:true" in settings.replace(" ", "").lower()


def configure_caches() -> None:
    """Compiled kernels kept in the Hugging Face cache directory (HF_HOME), unless the user placed them: Triton's
    (`TRITON_CACHE_DIR`: saudial's kernels, model/kernels.py) and TorchInductor's (`TORCHINDUCTOR_CACHE_DIR`:
    `torch_compile`). Their defaults are under the home directory, which in the image is the container's own
    and gone with it, while HF_HOME is the image's named volume: without this, every `docker compose run`
    compiled the kernels again, which on a machine's first run cost ~5 s of training warm-up and ~4 s of
    evaluation's first generation on an H100 (docs/benchmarks.md). Must run before torch is imported: importing
    Inductor sets its variable to a default under /tmp. Both libraries read the variables when they compile
    (tests/test_upstream.py); cli.main calls this first."""
    from huggingface_hub import constants

    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(constants.HF_HOME, "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(constants.HF_HOME, "torch-compile"))


# The fast tokenizers' thread pool (Rust's rayon): on around the batched calls saudial makes before training
# (`parallel_tokenizers`: 200,000 texts in 10.9 s instead of 14.7 s on 2 cores, more on more), off elsewhere
# (TOKENIZERS_PARALLELISM=false, unless the user set it). The training loader's worker is a fork of the process,
# with none of the pool's threads: older `tokenizers` warned at every such fork unless the variable was set, and a
# child that used the pool could hang. `tokenizers` reads the variable on every call; tests/test_upstream.py checks
# that, and that a process forked after the pool ran tokenizes, with no message.
TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"
_serial_by_saudial = False


def serial_tokenizers() -> None:
    """TOKENIZERS_PARALLELISM=false, unless the user set it."""
    global _serial_by_saudial
    if TOKENIZERS_PARALLELISM not in os.environ:
        os.environ[TOKENIZERS_PARALLELISM] = "false"
        _serial_by_saudial = True


@contextlib.contextmanager
def parallel_tokenizers() -> Iterator[None]:
    """The fast tokenizers on every core for the calls inside, where `serial_tokenizers` turned them off."""
    if not _serial_by_saudial or os.environ.get(TOKENIZERS_PARALLELISM) != "false":
        yield
        return
    os.environ[TOKENIZERS_PARALLELISM] = "true"
    try:
        yield
    finally:
        os.environ[TOKENIZERS_PARALLELISM] = "false"


def prepare_process() -> None:
    """What a saudial process sets before any library initializes: the allocator, the compiled kernels' caches,
    bitsandbytes' deferred compile and the tokenizers' threads. cli.main calls it first; so does anything that
    imports the model libraries before running cli.main in the same process (bench/ablate.py): importing
    bitsandbytes initializes CUDA, which reads the allocator's variable then."""
    configure_allocator()
    configure_caches()
    defer_bitsandbytes_compile()
    serial_tokenizers()


# bitsandbytes' fallback kernels (`bitsandbytes.backends.default.ops`, for devices without a native kernel:
# never saudial's CUDA or CPU paths) are wrapped in `torch.compile` when that module is imported, and building the
# wrapper imports TorchInductor: ~0.9 s of every command that imports PEFT (`import bitsandbytes` 0.87-0.94 s against
# 0.03 s deferred, 2 CPU cores). `defer_bitsandbytes_compile` moves that `torch.compile` call, with the same
# arguments, from the import to each wrapped function's first call; tests/test_upstream.py checks bitsandbytes
# still compiles at import (drop this when it stops) and that the import no longer brings TorchInductor in.
BITSANDBYTES_COMPILING = "bitsandbytes.backends.default.ops"


def defer_bitsandbytes_compile() -> None:
    """An import hook for BITSANDBYTES_COMPILING (no-op once bitsandbytes is imported, or installed twice);
    cli.main installs it before any command imports the model libraries."""
    if BITSANDBYTES_COMPILING in sys.modules or any(isinstance(f, _DeferCompileFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferCompileFinder())


class _DeferCompileFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != BITSANDBYTES_COMPILING:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferCompileLoader(spec.loader)
        return spec


class _DeferCompileLoader(importlib.abc.Loader):
    """The module's own loader, with `torch.compile` deferred while the module's code runs."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ...: tracebacks and inspect read them
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        import torch

        compile_now = torch.compile
        torch.compile = compile_on_first_call(compile_now)
        try:
            self.loader.exec_module(module)
        finally:
            torch.compile = compile_now


def compile_on_first_call(compile_now: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.compile` as called (`compile(fn, **options)` or `@compile(**options)`), compiling `fn` with the
    same options the first time the function is called. Where compiling fails there, `fn` runs as it is from
    then on, as bitsandbytes' `_try_torch_compile` does when `torch.compile` fails at import (not retried)."""

    def compile_later(model: Callable[..., Any] | None = None, **options: Any) -> Any:
        if model is None:  # the decorator with options
            return functools.partial(compile_later, **options)
        compiled: list[Callable[..., Any]] = []

        @functools.wraps(model)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                try:
                    compiled.append(compile_now(model, **options))
                except Exception:
                    compiled.append(model)
            return compiled[0](*args, **kwargs)

        return call

    return compile_later
