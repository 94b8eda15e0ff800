"""Probes run INSIDE a built saudial image by .ci/image-checks.sh (stdlib only, plus torch for `torch`).

    docker run --rm -i --entrypoint python IMAGE - <mode> < .ci/image_probe.py

Each mode prints `ok   ...` / `FAILED ...` lines and `info ...` lines, and exits 1 when a check failed:
  perms     nothing outside /tmp is world-writable; home, HF cache and /outputs are 1000:1000, mode 2770
  libs      every shared library by name: no CUDA library twice, and which CUDA libraries live
            outside site-packages (the base image's)
  torch     (CUDA flavour) torch's CUDA version and arch list; is_available() False without a GPU
  ldd       (CUDA flavour) bitsandbytes' CUDA 13 library and libtorch_cuda.so: present, every dependency
            resolved except the driver's libcuda.so.1, and loaded from torch's nvidia-* wheels
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import sysconfig
from collections import defaultdict
from pathlib import Path

SITE = Path(sysconfig.get_paths()["purelib"])
# Runtime mounts, not the image: their contents are the container engine's.
SKIP = ("/proc", "/sys", "/dev")
# Libraries of the CUDA user space (toolkit, math libraries, cuDNN, NCCL, the driver's compat libraries).
CUDA_LIB = re.compile(
    r"^lib(cuda|cudart|cublas|cublasLt|cufft|cufftw|curand|cusolver|cusolverMg|cusparse|cusparseLt|"
    r"nvrtc|nvrtc-builtins|nvJitLink|nvjitlink|nvblas|nccl|cudnn\w*|cufile\w*|cupti|nvperf\w*|"
    r"nvToolsExt|nvtx\w*|nvshmem\w*|nvidia-\w+|npp\w*|nvjpeg|checkpoint|pcsamplingutil|nvvm)\.so"
)
# Known and accepted: NVIDIA's "base" flavour is cudart plus the forward-compatibility libraries; its
# cudart (0.7 MB) is the one library torch's wheels bring again. torch and bitsandbytes never load it
# (torch's RUNPATH and the soname already loaded win; see `ldd`). A local base (CI) has none of it.
BASE_IMAGE_DUPLICATES = {"libcudart.so.13"}

failed = 0


def ok(msg: str) -> None:
    print(f"ok   {msg}", flush=True)


def fail(msg: str) -> None:
    global failed
    failed += 1
    print(f"FAILED {msg}", flush=True)


def info(msg: str) -> None:
    print(f"info {msg}", flush=True)


def walk(root: str = "/"):
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == "/":
            dirnames[:] = [d for d in dirnames if f"/{d}" not in SKIP]
        for name in dirnames + filenames:
            yield os.path.join(dirpath, name)


def perms() -> None:
    writable = []
    for path in walk():
        if path == "/tmp" or path.startswith("/tmp/"):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & stat.S_IWOTH:
            writable.append(f"{stat.filemode(st.st_mode)} {path}")
    if writable:
        fail(f"{len(writable)} world-writable path(s) outside /tmp: " + "; ".join(writable[:20]))
    else:
        ok("no file or folder outside /tmp is world-writable")
    for path in ("/home/saudial", "/cache/huggingface", "/outputs"):
        st = os.stat(path)
        mode = stat.S_IMODE(st.st_mode)
        want = (1000, 1000, 0o2770)
        got = (st.st_uid, st.st_gid, mode)
        if got == want:
            ok(f"{path}: owner 1000:1000 (saudial), mode 2770 (group saudial, setgid, no access for others)")
        else:
            fail(f"{path}: owner {st.st_uid}:{st.st_gid}, mode {mode:o}; expected 1000:1000, 2770")


def so_key(name: str) -> str | None:
    """libfoo.so.13.1.2 -> libfoo.so.13, libfoo.so -> libfoo.so; None for a non-library."""
    m = re.match(r"^(.+?\.so)((?:\.\d+)?)(?:\.[0-9.]+)?$", name)
    return m.group(1) + m.group(2) if m else None


def libs() -> None:
    by_key: dict[str, list[str]] = defaultdict(list)
    for path in walk():
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # symlinks point at a file counted once
        # Shared libraries only (lib*.so*): Python extension modules and Perl's XS modules share
        # basenames across packages by design.
        key = so_key(os.path.basename(path)) if os.path.basename(path).startswith("lib") else None
        if key:
            by_key[key].append(path)
    dups = {k: v for k, v in sorted(by_key.items()) if len(v) > 1}
    n_files = sum(len(v) for v in by_key.values())
    info(f"{n_files} shared-library files, {len(by_key)} names, {len(dups)} name(s) twice or more:")
    for key, paths in dups.items():
        kind = "CUDA" if CUDA_LIB.match(key) else "other"
        info(f"duplicate ({kind}) {key}: " + ", ".join(paths))
    cuda_dups = sorted(k for k in dups if CUDA_LIB.match(k))
    unexpected = [k for k in cuda_dups if k not in BASE_IMAGE_DUPLICATES]
    accepted = [k for k in cuda_dups if k in BASE_IMAGE_DUPLICATES]
    if unexpected:
        fail("CUDA libraries installed twice: " + ", ".join(unexpected))
    else:
        ok(
            "no CUDA library installed twice"
            + (f" (besides the base image's {', '.join(accepted)})" if accepted else "")
        )
    outside = sorted(
        p for k, ps in by_key.items() if CUDA_LIB.match(k) for p in ps if not p.startswith(str(SITE) + "/")
    )
    info(f"CUDA libraries outside site-packages (from the base image): {len(outside)}")
    for p in outside:
        info(f"  {p} ({os.path.getsize(p) / 1e6:.1f} MB)")
    wheels = sorted(
        p for k, ps in by_key.items() if CUDA_LIB.match(k) for p in ps if p.startswith(str(SITE / "nvidia") + "/")
    )
    wheel_bytes = sum(os.path.getsize(p) for p in wheels)
    info(f"CUDA libraries from torch's nvidia-* wheels: {len(wheels)}, {wheel_bytes / 1e9:.2f} GB")
    for p in wheels:
        info(f"  {os.path.relpath(p, SITE)} ({os.path.getsize(p) / 1e6:.1f} MB)")


def torch_probe() -> None:
    import warnings

    import torch

    info(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    if (torch.version.cuda or "").startswith("13.0"):
        ok(f"torch.version.cuda is {torch.version.cuda} (the CUDA 13.0 build from PyPI)")
    else:
        fail(f"torch.version.cuda is {torch.version.cuda!r}, expected 13.0.x: not the CUDA build")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            available = torch.cuda.is_available()
        except Exception as exc:
            fail(f"torch.cuda.is_available() raised {type(exc).__name__}: {exc}")
            return
    if available:
        fail("torch.cuda.is_available() is True on a machine without a GPU")
    else:
        ok("torch.cuda.is_available() is False without a GPU, no exception")
    for w in caught:
        info(f"warning from is_available(): {str(w.message).splitlines()[0]}")
    arches = torch.cuda.get_arch_list()
    sms = sorted(int(a.split("_")[1].rstrip("af")) for a in arches if a.startswith("sm_"))
    info(f"torch.cuda.get_arch_list(): {' '.join(arches)}")
    if sms:
        ok(f"oldest compute capability in torch's kernels: {sms[0] // 10}.{sms[0] % 10} (sm_{sms[0]})")
    else:
        fail("torch.cuda.get_arch_list() lists no sm_ architecture")


def lib_dirs_of_torch() -> list[str]:
    """The folders of the CUDA libraries torch has loaded: what a library dlopen'ed after torch sees."""
    import torch  # noqa: F401 - loads libtorch_cuda and the nvidia-* libraries

    dirs = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if path.startswith("/") and ".so" in path and CUDA_LIB.match(os.path.basename(path)):
            d = os.path.dirname(path)
            if d not in dirs:
                dirs.append(d)
    return dirs


def ldd(lib: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, env=env, check=False).stdout
    missing, resolved = [], {}
    for line in out.splitlines():
        parts = line.strip().split()
        if "=>" in parts and "not found" in line:
            missing.append(parts[0])
        elif "=>" in parts and len(parts) >= 3:
            resolved[parts[0]] = parts[2]
    return missing, resolved


def ldd_probe() -> None:
    import ctypes

    torch_dirs = lib_dirs_of_torch()
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(torch_dirs))
    targets = {
        "bitsandbytes' CUDA 13 library": SITE / "bitsandbytes" / "libbitsandbytes_cuda130.so",
        "torch's libtorch_cuda.so": SITE / "torch" / "lib" / "libtorch_cuda.so",
    }
    for what, lib in targets.items():
        if not lib.is_file():
            fail(f"{what} is missing: {lib}")
            continue
        # torch's own libraries find the wheels through their RUNPATH: plain ldd. bitsandbytes' library
        # has a RUNPATH to /usr/local/cuda-13.0 only and relies on torch having loaded them: ldd with
        # the folders torch loaded them from.
        missing, resolved = ldd(lib, env if "bitsandbytes" in what else dict(os.environ))
        others = [m for m in missing if m != "libcuda.so.1"]
        cuda_deps = {k: v for k, v in resolved.items() if CUDA_LIB.match(k)}
        if others:
            fail(f"{what}: ldd finds no {', '.join(others)}")
        else:
            ok(
                f"{what} present ({lib.stat().st_size / 1e6:.0f} MB); ldd resolves every dependency"
                + (" except the driver's libcuda.so.1 (from the host at run time)" if missing else "")
            )
        for name, path in sorted(cuda_deps.items()):
            path = os.path.normpath(path)
            where = "nvidia-* wheel" if path.startswith(str(SITE / "nvidia")) else "NOT a wheel"
            info(f"  {lib.name}: {name} => {path} ({where})")
        stray = {k: v for k, v in cuda_deps.items() if not os.path.normpath(v).startswith(str(SITE))}
        if stray:
            fail(f"{what}: CUDA libraries resolved outside site-packages: {stray}")
    # The real load order: torch first (as bitsandbytes itself does), then bitsandbytes' CUDA library.
    bnb = targets["bitsandbytes' CUDA 13 library"]
    ctypes.CDLL(str(bnb))
    loaded = sorted(
        {
            line.split()[-1]
            for line in Path("/proc/self/maps").read_text().splitlines()
            if re.search(r"/lib(cudart|cublas|cublasLt)\.so", line)
        }
    )
    outside = [p for p in loaded if not p.startswith(str(SITE))]
    if outside:
        fail(f"after import torch + dlopen(bitsandbytes), CUDA libraries mapped from outside the wheels: {outside}")
    else:
        ok("import torch + dlopen(libbitsandbytes_cuda130.so): cudart/cuBLAS mapped once each, from the wheels")
    for p in loaded:
        info(f"  mapped: {p}")


if __name__ == "__main__":
    modes = {"perms": perms, "libs": libs, "torch": torch_probe, "ldd": ldd_probe}
    for mode in sys.argv[1:]:
        modes[mode]()
    sys.exit(1 if failed else 0)
