"""Data parallelism on one machine: relaunch as N processes, and the little coordination they need.

`SAUDIAL_NUM_PROCESSES` (default: every visible GPU, 1 on the CPU) > 1 and no launcher around us
(``WORLD_SIZE`` unset): `launch` starts N copies of the same command line with the environment
contract of ``torchrun --standalone`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), forwards SIGTERM/SIGINT to them and exits with their exit code:
0, or 75 when a signal stopped them after a checkpoint, or the first failure's code. torchrun itself
would turn every worker failure (75 included) into its own exit code 1, and a Kubernetes Job or a
restart policy needs the real one.

Under an external launcher (torchrun, ``accelerate launch``, several nodes: ``WORLD_SIZE`` is set)
nothing is relaunched: this process is one rank. Only rank 0 logs the configuration and the summary,
writes the manifest, metrics and adapter, and uploads.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from saudial.config.settings import Settings
from saudial.errors import EXIT_INTERRUPTED, EXIT_OK, ConfigError, SaudialError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Set by `launch` in its children: they skip printing the configuration the launcher printed already.
LAUNCHER_VARIABLE = "SAUDIAL_LAUNCHER_PID"
# How long the other processes get to exit on their own after one of them failed (they may be blocked
# in a collective operation waiting for the one that died; then they are killed).
FAILURE_GRACE_S = 10.0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def launched_by_us() -> bool:
    return LAUNCHER_VARIABLE in os.environ


def processes_wanted(settings: Settings) -> int:
    """SAUDIAL_NUM_PROCESSES, else the number of visible GPUs (1 on the CPU)."""
    import torch  # only once the settings are known to be good

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = settings.num_processes or max(gpus, 1)
    if gpus and wanted > gpus:
        raise ConfigError(
            f"SAUDIAL_NUM_PROCESSES={wanted} is more than the {gpus} visible GPU(s): one process per GPU; "
            f"lower it or unset it (default: all visible GPUs)"
        )
    if not gpus and wanted > 1 and settings.quantization != "none":
        raise ConfigError(
            f"SAUDIAL_NUM_PROCESSES={wanted} on the CPU needs SAUDIAL_QUANTIZATION=none (4/8-bit needs a CUDA GPU)"
        )
    return wanted


def needs_launch(settings: Settings) -> int:
    """How many processes to start here: 0 when this process should just run (one process, or a rank)."""
    if "WORLD_SIZE" in os.environ:
        if settings.num_processes and settings.num_processes != world_size():
            log.warning(
                "SAUDIAL_NUM_PROCESSES=%s is ignored: an external launcher started %s process(es) (WORLD_SIZE)",
                settings.num_processes,
                world_size(),
            )
        return 0
    wanted = processes_wanted(settings)
    return wanted if wanted > 1 else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N, like a shell


def launch(processes: int, command: list[str] | None = None) -> int:
    """Run `command` (default: this very command line) as `processes` ranks; return the job's exit code."""
    command = command or [sys.executable, *sys.orig_argv[1:]]
    port = _free_port()
    log.info("starting %d data-parallel processes (SAUDIAL_NUM_PROCESSES)", processes)
    children: list[subprocess.Popen[bytes]] = []
    for index in range(processes):
        env = dict(os.environ)
        env.update(
            {
                "RANK": str(index),
                "LOCAL_RANK": str(index),
                "WORLD_SIZE": str(processes),
                "LOCAL_WORLD_SIZE": str(processes),
                "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                LAUNCHER_VARIABLE: str(os.getpid()),
            }
        )
        children.append(subprocess.Popen(command, env=env))

    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        log.warning("%s received: passing it on to the %d training processes", name, processes)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(children)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(children: list[subprocess.Popen[bytes]]) -> int:
    failure: int | None = None
    deadline: float | None = None
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            break
        bad = [_exit_code(c) for c in codes if c is not None and c not in (EXIT_OK, EXIT_INTERRUPTED)]
        if bad and failure is None:
            failure = bad[0]
            deadline = time.monotonic() + FAILURE_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            log.error("a training process failed (exit %s): stopping the others", failure)
            for child in children:
                if child.poll() is None:
                    child.kill()
            deadline = None
        time.sleep(0.2)
    final = [_exit_code(child.returncode) for child in children]
    if failure is not None:
        return failure
    failed = [code for code in final if code not in (EXIT_OK, EXIT_INTERRUPTED)]
    if failed:
        return failed[0]
    return EXIT_INTERRUPTED if EXIT_INTERRUPTED in final else EXIT_OK


# --- inside one rank ------------------------------------------------------------------------------


def quiet_other_ranks() -> None:
    """Ranks other than 0 log warnings and errors only, and draw no progress bars."""
    if is_main_process():
        return
    logging.getLogger("saudial").setLevel(logging.WARNING)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"


def init() -> None:
    """Join the process group early, so rank 0 can prepare the output directory while the others wait.

    Accelerate (through the Trainer) finds the group already initialized and uses it: the backend is
    the one it would have chosen (NCCL on GPUs, gloo on the CPU), so nothing else changes.
    """
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def _active() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (an all-reduce: works the same with gloo and NCCL)."""
    any_rank(False)


def on_main_then_share(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give every rank its result (or raise its error on every rank)."""
    if not _active():
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if is_main_process():
        try:
            box[0] = ("ok", fn())
        except SaudialError as exc:
            box[0] = ("error", exc)
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        value.shared = True  # rank 0 prints it; the others need not repeat it
        raise value
    return value


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (e.g. one of them received SIGTERM)."""
    if not _active():
        return flag
    import torch
    import torch.distributed as dist

    # NCCL reduces GPU tensors only (broadcast_object_list moves to the current GPU by itself).
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
