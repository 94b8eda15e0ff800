# saudial training image: QLoRA fine-tuning of LFM2-1.2B (see docs/docker.md).
#
#   docker compose build train                     (or: make image)
#   docker run --gpus all --init --ipc=host --group-add saudial \
#     -v "$PWD/data:/data:ro" -v "$PWD/outputs:/outputs" saudial:latest
#
# Two stages: llama-build compiles llama-cpp-python's wheel (source-only on PyPI) with a compiler, and the
# image proper, four layers of our own on top of the base: system Python + the user, torch with its CUDA
# wheels, the rest of requirements.lock (the llama-cpp-python wheel included), the application (saudial
# installed into the venv, entrypoint.py, the recipes, and the lock file whose hash every run records). The
# big torch layer changes only when torch does, so a new lock or a code change costs a small download.
#
# Build arguments
#   BASE_IMAGE       NVIDIA's CUDA 13.0.1 *base* image on Ubuntu 24.04 (Python 3.12), pinned by the digest
#                    of its multi-arch index (linux/amd64, linux/arm64). "base" holds the CUDA runtime
#                    (cudart) and the forward-compatibility driver libraries (cuda-compat), nothing else:
#                    torch brings every other CUDA library as nvidia-* wheels, so the "runtime" flavour
#                    would install cuBLAS, cuFFT, cuSPARSE, cuSOLVER, cuRAND, nvJitLink, NVRTC and NCCL a
#                    second time (docs/docker.md, "Default base image").
#                    The digest was not checked from here (no container registry is reachable): it is the
#                    one pinned for nvidia/cuda:13.0.1-base-ubuntu24.04 by several public Dockerfiles and
#                    scripts found by code search on 2026-11-29 (vLLM and ComfyUI deployments built on it).
#                    Any Debian/Ubuntu image with python3 >= 3.11 in apt works (CI uses a local Debian
#                    bookworm, Python 3.11: the only difference from the published image).
#   TORCH_SPEC       the torch requirement, installed alone before the lock: torch==2.13.0 from PyPI is
#                    the CUDA 13.0 build (x86_64 and aarch64). CI's CPU flavour: torch==2.13.0+cpu.
#   TORCH_INDEX_URL  another torch index, e.g. https://download.pytorch.org/whl/cu126 for drivers older than
#                    R580 (with a CUDA 12 BASE_IMAGE; docs/docker.md, "Older drivers").
#   TORCH_FIND_LINKS a folder of local wheels for the torch step, e.g. /wheels (docker/wheels, bind-mounted,
#                    never in a layer). Empty by default: a plain build never looks at local wheels, so a
#                    CPU wheel left in docker/wheels (torch-2.13.0+cpu also matches torch==2.13.0) cannot
#                    replace the CUDA build.
#   LLAMA_CMAKE_ARGS how llama.cpp is compiled for llama-cpp-python (`saudial export`): portable code
#                    (x86-64-v3 on amd64: AVX2/FMA/F16C; armv8 on arm64), ggml's own threads (no libgomp in the
#                    image), no multimodal library. -DGGML_NATIVE=ON builds for the build machine's CPU only.
#   LLAMA_WHEELS     a folder holding a llama_cpp_python-<locked version> wheel already built from the locked
#                    sdist with LLAMA_CMAKE_ARGS (CI passes the one `make setup` built: /wheels). Empty by
#                    default: the llama-build stage compiles it (~5 min on 2 cores).
#   REVISION/VERSION source revision and version, recorded in OCI labels and SAUDIAL_IMAGE_REVISION.
# Build secret
#   ca               optional CA bundle for a TLS-intercepting proxy (docker build --secret id=ca,src=...):
#                    mounted only during the pip steps, never written to a layer.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04@sha256:f8ef28f579ea42a44b415d2c5d46f788e6a9b395c6c83f2929416e1fc192c143

# llama-build stage: llama-cpp-python, the only locked package published as source only (llama.cpp in C/C++,
# compiled by pip through CMake), built into a wheel here with the compilers the final image never carries.
# The sdist is checked against requirements.lock's sha256. Its build backend (scikit-build-core) comes from
# PyPI through pip's build isolation; CMake and Ninja from the distribution.
FROM ${BASE_IMAGE} AS llama-build
ARG DEBIAN_FRONTEND=noninteractive
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF"
ARG LLAMA_WHEELS=
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    mkdir /llama-wheel \
 && pin=$(sed -n 's/^llama-cpp-python==\([^ ]*\).*/\1/p' /tmp/requirements.lock) \
 && if [ -n "$LLAMA_WHEELS" ] && cp "$LLAMA_WHEELS"/llama_cpp_python-"$pin"-*.whl /llama-wheel/ 2>/dev/null; then \
        echo "llama-cpp-python $pin: using $(ls /llama-wheel)"; \
    else \
        apt-get update \
     && apt-get install -y --no-install-recommends python3 python3-venv g++ cmake ninja-build ca-certificates \
     && rm -rf /var/lib/apt/lists/* \
     && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
     && grep -A1 '^llama-cpp-python==' /tmp/requirements.lock > /tmp/llama.txt \
     && python3 -m venv /opt/build \
     && CMAKE_ARGS="$LLAMA_CMAKE_ARGS" /opt/build/bin/pip wheel --no-cache-dir --no-deps --require-hashes \
            -r /tmp/llama.txt -w /llama-wheel; \
    fi

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# System layer: the distribution's Python 3 (3.12 on Ubuntu 24.04, 3.11 on Debian bookworm), no compilers,
# no apt lists. The user saudial (uid 1000) and its group saudial (gid 1000) own home, the Hugging Face
# cache and /outputs, mode 2770: nobody else can read or write there, and the setgid bit keeps new files
# in the group. Compose runs the container as the host user (`user:`) with the group added
# (`group_add: [saudial]`), Kubernetes with fsGroup 1000, `docker run --user` with --group-add saudial.
# Ubuntu 24.04's stock "ubuntu" user holds uid 1000 and is removed. Last, nothing outside /tmp stays
# world-writable (the distribution's /var/tmp and /run/lock are 1777).
# Package versions come from the pinned base image's release; pinning them here would tie the
# Dockerfile to one distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 saudial \
 && useradd --uid 1000 --gid 1000 --home-dir /home/saudial --create-home --shell /usr/sbin/nologin saudial \
 && mkdir -p /outputs /data /cache/huggingface \
 && chown saudial:saudial /home/saudial /outputs /cache/huggingface \
 && chmod 2770 /home/saudial /outputs /cache/huggingface \
 && find / -xdev \( -path /tmp -o -path /proc -o -path /sys -o -path /dev \) -prune \
        -o -perm -0002 ! -type l -exec chmod o-w {} + \
 && python3 -m venv /opt/venv

# torch layer: torch alone (its wheel differs between CUDA and CPU builds, so its hash cannot be in the
# shared lock), with the nvidia-*/cuda-* wheels and triton it requires. The CA bundle secret is an empty
# file when none is given (compose passes /dev/null): then pip keeps its own bundle.
# Triton bundles a CUPTI of its own, for CUDA 12, used only by its Proton profiler (libcupti.so.12 three
# times, libnvperf_host/target, libcheckpoint, libpcsamplingutil, two static archives: 128 MB). torch's
# nvidia-cuda-cupti wheel brings the same libraries for CUDA 13, which torch's profiler uses; saudial never
# runs Proton. Removed in the same step, so no CUDA library name is in the image twice.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ARG TORCH_FIND_LINKS=
ARG PIP_NO_CACHE_DIR=1
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=secret,id=ca \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/venv/bin/pip install \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:?TORCH_SPEC is empty: leave it unset for the default}" \
 && rm -rf /opt/venv/lib/python3*/site-packages/triton/backends/nvidia/lib/cupti

# Lock layer: every other package from requirements.lock, hash-checked, torch already present; first the
# llama-cpp-python wheel of the llama-build stage (bind-mounted, never a layer of its own), which then
# satisfies the lock's pin of it.
RUN --mount=type=secret,id=ca \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    --mount=type=bind,from=llama-build,source=/llama-wheel,target=/tmp/llama-wheel \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/venv/bin/pip install --no-deps /tmp/llama-wheel/llama_cpp_python-*.whl \
 && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.lock \
 && /opt/venv/bin/pip check

# Application layer.
ARG REVISION=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="saudial" \
      org.opencontainers.image.description="QLoRA fine-tuning of LiquidAI LFM2-1.2B on the SauDial English to Saudi-dialect workbook" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# saudial itself, installed into the venv from its pyproject.toml without dependencies (the lock above has
# them all, setuptools included, so --no-build-isolation fetches nothing): the `saudial` command, and the
# package in site-packages, byte-compiled by pip (the runtime forbids writing bytecode, and a start without
# .pyc files recompiles every module it imports: measured on a GPU machine, ~14 s of imports instead of ~5).
WORKDIR /app
RUN --mount=type=bind,source=.,target=/src,rw \
    /opt/venv/bin/pip install --no-deps --no-build-isolation /src
COPY entrypoint.py requirements.lock /app/
COPY recipes/ /app/recipes/

# NVIDIA_* as NVIDIA's images set them (the CUDA base also sets them and NVIDIA_REQUIRE_CUDA; repeated
# for other bases). Hugging Face cache on the volume; data read-only from /data; everything else goes
# to /outputs. PYTORCH_CUDA_ALLOC_CONF: expandable segments (saudial/config/runtime.py says why).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/saudial \
    HF_HOME=/cache/huggingface \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    SAUDIAL_DATA="/data/SauDial Dataset.xlsx" \
    SAUDIAL_OUTPUT_DIR=/outputs \
    SAUDIAL_IMAGE_REVISION=${REVISION}

USER 1000:1000
# Exec form: python is the process that receives SIGTERM (use --init / compose `init: true` for tini as
# PID 1). Arguments after the image name are entrypoint.py's flags or subcommands.
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD []
