"""The CUDA driver started in the background while Python imports the model libraries.

torch starts the driver (`cuInit`) on its first CUDA call, which in a training run comes after ~5 s of imports
(torch, transformers, PEFT, TRL, datasets). The driver's start is C work that needs no Python objects: here one
thread calls `cuInit` and retains the GPU's primary context through ctypes, which releases the GIL for each
foreign call, so the imports go on meanwhile. torch's own start later finds the driver initialized and the
primary context made (the CUDA runtime, which torch uses, works in the primary context). docs/benchmarks.md has
the same-call pair that measured what it saves on an H100.

Nothing depends on it: where libcuda is missing (the CPU image, a machine without a GPU) or a call fails, the
thread ends and torch starts the driver itself, as it would have. The context is the one torch would make: that
of LOCAL_RANK's GPU in a rank (process/distributed.py selects it), of GPU 0 in a run of one process. A process
that will only launch ranks (several GPUs visible, or SAUDIAL_NUM_PROCESSES above 1) makes none, so it holds no
GPU memory; its ranks start their own. The context's extra reference lives with the process.
"""

from __future__ import annotations

import ctypes
import os
import threading

_started: threading.Thread | None = None


def _start_driver(num_processes: int | None) -> None:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return  # no NVIDIA driver here
    if cuda.cuInit(0) != 0:  # CUDA_SUCCESS is 0: no device visible, or a driver too old
        return
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return
    if "WORLD_SIZE" in os.environ:  # a rank (ours or an external launcher's): its GPU is LOCAL_RANK's
        device = int(os.environ.get("LOCAL_RANK", "0"))
    elif (num_processes or count.value) > 1:
        return  # this process launches the ranks and trains on no GPU itself (process/distributed.py)
    else:
        device = 0
    handle = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return
    context = ctypes.c_void_p()
    cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle)


def start_in_background(num_processes: int | None) -> threading.Thread | None:
    """Start the driver in a daemon thread (once per process); None where the GPUs are hidden.

    `num_processes`: SAUDIAL_NUM_PROCESSES (None: one per visible GPU), which says whether this process trains
    on a GPU itself or launches ranks that do.
    """
    global _started
    if _started is not None:
        return _started
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None  # the GPUs are hidden: nothing to start
    if not os.environ.get("LOCAL_RANK", "0").isdigit():
        return None  # torch will say what is wrong with it
    # The driver reads CUDA_MODULE_LOADING at cuInit. Where the user has chosen nothing, lazy loading (kernels
    # loaded when first launched; the driver's own default since CUDA 12.2) is asked for, so an older driver
    # started here does not load every kernel of torch's libraries up front.
    os.environ.setdefault("CUDA_MODULE_LOADING", "LAZY")
    _started = threading.Thread(target=_start_driver, args=(num_processes,), name="cuda-driver-start", daemon=True)
    _started.start()
    return _started
