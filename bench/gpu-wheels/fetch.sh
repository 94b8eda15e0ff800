#!/usr/bin/env bash
# Build the wheel folders that travel to a GPU machine without network (docs/benchmarks.md):
#   .gpuwheels/       the project's pins for CPython 3.12 (everything the GPU image lacks or has older),
#   .unsloth-wheels/  Unsloth 2026.10.9 and the older stack it pins, installed there with --target.
# bitsandbytes keeps only its CUDA 13.0 and CPU libraries and Unsloth drops its web app (studio/, cli),
# so both folders fit the 64 MiB carry limit (~45 MiB together). Needs PyPI and ../shared/tools/slim_wheel.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SLIM=${SLIM:-../shared/tools/slim_wheel.py}
get() {  # folder, requirement...
    local dir=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform any -d "$dir" "$@"
}
slim() {  # folder, wheel glob, prefixes...
    local dir=$1 glob=$2 tmp
    shift 2
    tmp=$(mktemp -d)
    for wheel in "$dir"/$glob; do
        python3 "$SLIM" "$wheel" "$tmp/$(basename "$wheel")" "$@"
        mv "$tmp/$(basename "$wheel")" "$wheel"
    done
    rmdir "$tmp"
}

mkdir -p .gpuwheels .unsloth-wheels
get .gpuwheels transformers==5.23.0 trl==1.16.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 \
    accelerate==1.15.0 huggingface-hub==2.4.0 openpyxl==3.1.5 et-xmlfile==2.0.0 multiprocess==0.70.19 \
    dill==0.4.1 pydantic-settings==2.16.3 python-dotenv==1.2.4 pydantic==2.14.4 pydantic-core==2.50.5 \
    typing-inspection==0.4.5 annotated-types==0.8.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 \
    tokenizers==0.23.3
slim .gpuwheels "bitsandbytes-*.whl" bitsandbytes/libbitsandbytes_cuda11 bitsandbytes/libbitsandbytes_cuda12 \
    bitsandbytes/libbitsandbytes_cuda132 bitsandbytes/libbitsandbytes_rocm bitsandbytes/libbitsandbytes_xpu
cp bench/gpu-wheels/install-project.sh .gpuwheels/install.sh
# Not installed by install.sh: py-spy, for host time by Python function (bench/host_profile.py).
mkdir -p .gpuwheels/extra
get .gpuwheels/extra py-spy==0.4.3

get .unsloth-wheels unsloth==2026.10.9 unsloth-zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 transformers==5.17.0 \
    huggingface-hub==1.33.0 fsspec==2026.2.0 cut-cross-entropy==25.1.1
slim .unsloth-wheels "unsloth-2026*.whl" studio/ unsloth_cli/
cp bench/gpu-wheels/install-unsloth.sh .unsloth-wheels/install.sh
du -sh .gpuwheels .unsloth-wheels
