# saudial training image: QLoRA fine-tuning of LFM2-1.2B (see docs/docker.md).
#
#   docker compose build train                     (or: make image)
#   docker run --gpus all --init --ipc=host -v "$PWD/data:/data:ro" -v "$PWD/outputs:/outputs" saudial:latest
#
# Build arguments
#   BASE_IMAGE       NVIDIA's CUDA 13.0.1 runtime on Ubuntu 24.04 (Python 3.12), pinned by the digest of
#                    its multi-arch index. The digest was not checked from here (no registry is
#                    reachable); it is the one pinned by several public projects' Dockerfiles for
#                    nvidia/cuda:13.0.1-runtime-ubuntu24.04. Any Debian/Ubuntu image with python3 >= 3.11
#                    in apt works (CI uses a local Debian bookworm, Python 3.11).
#   TORCH_SPEC       the torch requirement, installed alone before the lock: torch==2.13.0 from PyPI is
#                    the CUDA 13.0 build. CI: torch==2.13.0+cpu from docker/wheels.
#   TORCH_INDEX_URL  another torch index, e.g. https://download.pytorch.org/whl/cu126 for older drivers
#                    (use a matching BASE_IMAGE, e.g. nvidia/cuda:12.6.3-runtime-ubuntu24.04).
#   REVISION/VERSION source revision and version, recorded in OCI labels and SAUDIAL_IMAGE_REVISION.
# Build secret
#   ca               optional CA bundle for a TLS-intercepting proxy (docker build --secret id=ca,src=...):
#                    mounted only during the pip steps, never written to a layer.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04@sha256:c3fde347d52d578c84fd644bc177bc7ec333feaf11550d990da4084d7612e4c7

# ---------------------------------------------------------------------------------------------------
# python-base: the distribution's Python 3 (3.12 on Ubuntu 24.04, 3.11 on Debian bookworm), no pip cache,
# no compilers. Shared by both stages so the venv copied below finds the same interpreter.
FROM ${BASE_IMAGE} AS python-base
ARG DEBIAN_FRONTEND=noninteractive
# Package versions come from the pinned base image's release; pinning them here would tie the
# Dockerfile to one distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# ---------------------------------------------------------------------------------------------------
# builder: the virtual environment. torch first, alone (its wheel differs between CUDA and CPU builds,
# so its hash cannot be in the shared lock), then every other package from requirements.lock with
# --require-hashes, torch already present.
FROM python-base AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv
# The CA bundle secret is an empty file when none is given (compose passes /dev/null): then pip keeps
# its own bundle. docker/wheels is bind-mounted, so local wheels are used without entering a layer.
RUN --mount=type=secret,id=ca \
    --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/venv/bin/pip install --find-links /wheels \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.lock \
 && /opt/venv/bin/pip check \
 && rm -f /tmp/requirements.lock

# ---------------------------------------------------------------------------------------------------
# runtime: python-base + the venv + the application, as a non-root user.
FROM python-base AS runtime
ARG BASE_IMAGE
ARG REVISION=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="saudial" \
      org.opencontainers.image.description="QLoRA fine-tuning of LiquidAI LFM2-1.2B on the SauDial English to Saudi-dialect workbook" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.licenses="Apache-2.0"

# uid/gid 1000 "saudial" (Ubuntu 24.04's stock "ubuntu" user holds 1000 and is removed). Home, HF cache
# and /outputs are world-writable with the sticky bit, so compose's `user: UID:GID` (the host user's
# ids) can write there too, and a fresh named volume on /cache/huggingface inherits that mode.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 saudial \
 && useradd --uid 1000 --gid 1000 --home-dir /home/saudial --create-home --shell /usr/sbin/nologin saudial \
 && mkdir -p /outputs /data /cache/huggingface \
 && chown 1000:1000 /outputs /cache/huggingface \
 && chmod 1777 /home/saudial /outputs /cache/huggingface

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY saudial/ /app/saudial/
COPY entrypoint.py /app/entrypoint.py

# NVIDIA_* as NVIDIA's images set them (the CUDA base also sets them; repeated for other bases).
# Hugging Face cache on the volume; data read-only from /data; everything else goes to /outputs.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/saudial \
    HF_HOME=/cache/huggingface \
    SAUDIAL_DATA="/data/SauDial Dataset.xlsx" \
    SAUDIAL_OUTPUT_DIR=/outputs \
    SAUDIAL_IMAGE_REVISION=${REVISION}

USER 1000:1000
# Exec form: python is the process that receives SIGTERM (use --init / compose `init: true` for tini as
# PID 1). Arguments after the image name are entrypoint.py's flags or subcommands.
ENTRYPOINT ["python", "/app/entrypoint.py"]
CMD []
