"""requirements.lock against the platforms the image is published for, and against CUDA 12 builds of torch.

    python3 .ci/lock_platforms.py select  LOCK MACHINE PYVER   -> the lock's entries for that platform (wheels)
    python3 .ci/lock_platforms.py sdist   LOCK MACHINE PYVER   -> those published as source only (SOURCE_ONLY)
    python3 .ci/lock_platforms.py cuda12  LOCK TORCH_CU12_VERSION WHEEL_DIR...  -> no pin needs CUDA 13
    python3 .ci/lock_platforms.py torch   REPORT_JSON MACHINE  -> what torch 2.13.0 from PyPI is there

`select` evaluates each entry's environment marker for CPython PYVER on Linux/MACHINE and prints the
entries that apply, with their hashes and without the marker: pip evaluates markers against the Python
running it, not the one given by --python-version, so `pip download --python-version 3.12` on a 3.11 host
would fetch the 3.11 pins (numpy, networkx differ between the two).

`cuda12` fails when a pin of the lock, or a requirement declared by any locked wheel (Requires-Dist,
markers ignored), is tied to CUDA 13: nvidia-* wheels (NVIDIA's CUDA 13 wheels carry no -cuXX suffix;
CUDA 12 ones end in -cu12), *-cu13 / *cuda13*, cuda-toolkit / cuda-bindings / cuda-python / cuda-runtime,
triton or torch itself (both come from the torch step, per variant), or a torch range that excludes the
CUDA 12 build (e.g. 2.13.0+cu126). With none, a CUDA 12 build of torch
from PyTorch's index (TORCH_INDEX_URL) brings its own CUDA 12 wheels and the lock installs unchanged.

`torch` reads a `pip install --dry-run --report` of torch==2.13.0 and prints the wheel chosen, whether it
is a CUDA build (Requires-Dist on cuda-toolkit / nvidia-*) and its CUDA version.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

from pip._vendor.packaging.markers import Marker
from pip._vendor.packaging.requirements import Requirement

ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
CUDA13 = re.compile(
    r"^(nvidia-(?!.*-cu1[0-2]$).+|.*-cu13|.*cuda-?13.*|cuda-(toolkit|bindings|python|runtime|pathfinder)|triton|torch)$"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(lock: Path):
    """(name, version, marker or None, [hash lines]) for each pinned entry of a pip-compile lock."""
    current = None
    for line in lock.read_text().splitlines():
        m = ENTRY.match(line)
        if m:
            if current:
                yield current
            current = (m.group(1), m.group(2), m.group(3), [])
        elif current and line.strip().startswith("--hash="):
            current[3].append(line.strip().rstrip("\\").strip())
        elif current and not line.startswith(" "):
            yield current
            current = None
    if current:
        yield current


def environment(machine: str, pyver: str) -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "python_version": pyver,
        "python_full_version": f"{pyver}.0",
        "implementation_version": f"{pyver}.0",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


# Pins published as source only, compiled at install time (the Dockerfile's llama-build stage, scripts/setup.sh):
# `select` leaves them out of the wheel download, `sdist` prints them for lock-check.sh's sdist download.
SOURCE_ONLY = {"llama-cpp-python"}


def select(lock: Path, machine: str, pyver: str, sdists: bool = False) -> int:
    env = environment(machine, pyver)
    kept = skipped = 0
    for name, version, marker, hashes in entries(lock):
        if (marker and not Marker(marker).evaluate(env)) or (canonical(name) in SOURCE_ONLY) != sdists:
            skipped += 1
            continue
        kept += 1
        print(f"{name}=={version} " + " ".join(hashes))
    print(f"lock_platforms: {kept} pins apply to CPython {pyver} on Linux {machine}, {skipped} do not", file=sys.stderr)
    return 0


def cuda12(lock: Path, wheel_dirs: list[Path], torch_cu12: str) -> int:
    bad = [f"pin {n}=={v}" for n, v, _, _ in entries(lock) if CUDA13.match(canonical(n))]
    wheels = [w for d in wheel_dirs for w in sorted(d.glob("*.whl"))]
    torch_users = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode("utf-8", "replace").splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                name = canonical(req.name)
                if name in ("torch", "triton"):
                    # Requiring torch is what these packages are for: the range must admit the CUDA 12
                    # build (PEP 440 ignores the local label unless a specifier names one).
                    optional = req.marker is not None and "extra" in str(req.marker)  # an extra nobody installs
                    torch_users.add(wheel.name.split("-")[0])
                    if name == "torch" and not optional and not req.specifier.contains(torch_cu12, prereleases=True):
                        bad.append(f"{wheel.name} requires {req}, which excludes torch {torch_cu12}")
                elif CUDA13.match(name):
                    bad.append(f"{wheel.name} requires {req}")
    print(
        f"info checked {sum(1 for _ in entries(lock))} pins and the Requires-Dist of {len(wheels)} locked wheels; "
        f"{len(torch_users)} require torch ({', '.join(sorted(torch_users))}), each admits {torch_cu12}"
    )
    if bad:
        print("FAILED the lock is tied to CUDA 13 (a CUDA 12 build of torch could not use it): " + "; ".join(bad))
        return 1
    print(
        "ok   no pin in requirements.lock, and no requirement of a locked wheel, needs CUDA 13 "
        "(nvidia-*, *-cu13, cuda-toolkit/bindings, triton, torch all come from the torch step)"
    )
    return 0


def torch_report(report: Path, machine: str) -> int:
    install = json.loads(report.read_text())["install"]
    torch = next(i for i in install if i["metadata"]["name"] == "torch")
    wheel = torch["download_info"]["url"].rsplit("/", 1)[-1]
    requires = torch["metadata"].get("requires_dist", [])
    toolkit = [r for r in requires if r.startswith("cuda-toolkit")]
    cuda = re.search(r"==(\d+\.\d+)", toolkit[0]).group(1) if toolkit else None
    nvidia = sorted(
        i["metadata"]["name"] + "==" + i["metadata"]["version"]
        for i in install
        if CUDA13.match(canonical(i["metadata"]["name"]))
    )
    print(f"info torch 2.13.0 for {machine}: {wheel}; resolves with {len(install)} packages")
    if cuda:
        print(f"ok   PyPI's torch 2.13.0 for {machine} is a CUDA {cuda} build (Requires-Dist: {toolkit[0]})")
        print(f"info its CUDA wheels for {machine}: {', '.join(nvidia)}")
        return 0
    print(f"FAILED PyPI's torch 2.13.0 for {machine} declares no CUDA toolkit: a CPU-only build")
    return 1


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd in ("select", "sdist"):
        sys.exit(select(Path(args[0]), args[1], args[2], sdists=cmd == "sdist"))
    if cmd == "cuda12":
        sys.exit(cuda12(Path(args[0]), [Path(a) for a in args[2:]], args[1]))
    if cmd == "torch":
        sys.exit(torch_report(Path(args[0]), args[1]))
    sys.exit(f"unknown command {cmd}")
