#!/usr/bin/env bash
# requirements.lock and torch 2.13.0 on every platform the image is built for, and against CUDA 12 torch
# (issue 14, "any NVIDIA host"). Run by .ci/docker.sh; needs only pip and PyPI, no Docker.
#
#   1. arm64 (GH200, GB200) and amd64, CPython 3.12 (the published image's Python): every pin of the lock
#      that applies there is downloaded as a wheel (--only-binary=:all:, hash-checked against the lock) into
#      a temporary folder, deleted afterwards; torch==2.13.0 with everything it requires is resolved from
#      PyPI's metadata (pip install --dry-run --report), and its Requires-Dist says whether it is a CUDA
#      build. llama-cpp-python, published as source only (built in the Dockerfile's llama-build stage), is
#      downloaded as its sdist instead and checked against the lock's hash.
#   2. CUDA 12: no pin of the lock, and no requirement of a locked wheel, is tied to CUDA 13, so the lock
#      installs unchanged beside a CUDA 12 torch from PyTorch's index (docs/docker.md, "Older drivers").
#
# This machine's pip settings (a local wheel folder, a version cap) are bypassed with --isolated; the CA
# bundle pip would use (PIP_CERT) is passed on explicitly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
TORCH_VERSION=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements-torch.txt)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/saudial-lock-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
pip_args=(--isolated --disable-pip-version-check)
if [ -n "${PIP_CERT:-}" ]; then pip_args+=(--cert "$PIP_CERT"); fi
FAILED=0
T0=$SECONDS

# glibc of the images: Ubuntu 24.04 has 2.39 (Debian bookworm 2.36). pip takes --platform literally (it does
# not add the older manylinux tags a 2.39 system accepts), so every tag is listed.
platforms() {
    local v
    for v in $(seq 39 -1 17); do printf -- '--platform\nmanylinux_2_%s_%s\n' "$v" "$1"; done
    printf -- '--platform\nmanylinux2014_%s\n' "$1"
}

for machine in aarch64 x86_64; do
    t=$SECONDS
    mapfile -t plat < <(platforms "$machine")
    target=(--only-binary=:all: "${plat[@]}" --python-version 3.12 --implementation cp --abi cp312)
    "$PY" .ci/lock_platforms.py select requirements.lock "$machine" 3.12 >"$WORK/lock-$machine.txt"
    if "$PY" -m pip "${pip_args[@]}" download -q --no-deps "${target[@]}" --require-hashes \
        -r "$WORK/lock-$machine.txt" -d "$WORK/wheels-$machine" >"$WORK/log" 2>&1; then
        n=$(find "$WORK/wheels-$machine" -name '*.whl' | wc -l)
        size=$(du -sm "$WORK/wheels-$machine" | cut -f1)
        echo "ok   every pin of requirements.lock for CPython 3.12 on Linux $machine has a wheel ($n wheels, $size MB, hashes match the lock)"
    else
        grep -v -e '^\[notice\]' "$WORK/log" | tail -n 5
        echo "FAILED requirements.lock has pins without a Linux $machine wheel for CPython 3.12 (above)"
        FAILED=$((FAILED + 1))
    fi
    # llama-cpp-python has no wheels: its sdist (the same file on every platform) is hash-checked once.
    if [ "$machine" = x86_64 ]; then
        "$PY" .ci/lock_platforms.py sdist requirements.lock "$machine" 3.12 >"$WORK/sdist.txt"
        if "$PY" -m pip "${pip_args[@]}" download -q --no-deps --no-binary=:all: --require-hashes \
            -r "$WORK/sdist.txt" -d "$WORK/sdists" >"$WORK/log" 2>&1; then
            echo "ok   the source-only pins ($(cut -d' ' -f1 "$WORK/sdist.txt" | tr '\n' ' ')) download as sdists and match the lock's hashes"
        else
            grep -v -e '^\[notice\]' "$WORK/log" | tail -n 5
            echo "FAILED a source-only pin of requirements.lock did not download or its hash differs (above)"
            FAILED=$((FAILED + 1))
        fi
    fi
    if [ "$machine" = aarch64 ]; then
        bnb=$(find "$WORK/wheels-$machine" -name 'bitsandbytes-*.whl' | head -n 1)
        libs=$("$PY" -c 'import sys, zipfile; print(" ".join(sorted(n.rsplit("_", 1)[1][:-3] for n in zipfile.ZipFile(sys.argv[1]).namelist() if "libbitsandbytes_cuda" in n)))' "$bnb" 2>/dev/null || true)
        if [[ " $libs " == *" cuda130 "* ]]; then
            echo "ok   bitsandbytes' $machine wheel carries its CUDA 13.0 library ($(basename "$bnb"); CUDA builds: $libs)"
        else
            echo "FAILED bitsandbytes' $machine wheel has no libbitsandbytes_cuda130.so"
            FAILED=$((FAILED + 1))
        fi
    fi
    if "$PY" -m pip "${pip_args[@]}" install -q --dry-run --ignore-installed "${target[@]}" \
        --target "$WORK/never-written" --report "$WORK/torch-$machine.json" "torch==$TORCH_VERSION" >"$WORK/log" 2>&1; then
        "$PY" .ci/lock_platforms.py torch "$WORK/torch-$machine.json" "$machine" || FAILED=$((FAILED + 1))
    else
        grep -v -e '^\[notice\]' "$WORK/log" | tail -n 5
        echo "FAILED torch==$TORCH_VERSION and its CUDA wheels do not resolve for CPython 3.12 on Linux $machine"
        FAILED=$((FAILED + 1))
    fi
    echo "info $machine took $((SECONDS - t)) s"
done

"$PY" .ci/lock_platforms.py cuda12 requirements.lock "$TORCH_VERSION+cu126" "$WORK/wheels-aarch64" "$WORK/wheels-x86_64" \
    || FAILED=$((FAILED + 1))
rm -rf "$WORK"
echo "lock-check: $FAILED failed ($((SECONDS - T0)) s; the downloaded wheels are deleted)"
[ "$FAILED" = 0 ]
