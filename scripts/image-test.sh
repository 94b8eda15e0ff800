#!/usr/bin/env bash
# Smoke test of the built image on the CPU (called by `make image-test` and .ci/docker.sh):
# a tiny random LFM2 and a small SauDial-shaped workbook are made on the host with the project's venv,
# mounted into `docker compose run --rm train`, and 2 optimizer steps are trained without quantization.
# Checks from the host: exit code 0; adapter, adapter config and run_manifest.json in the outputs folder, and
# the Q8_0 GGUF with its Modelfile that SAUDIAL_EXPORT=gguf:q8_0 makes (llama.cpp inside the image checked it),
# owned by SAUDIAL_UID (the invoking user, 1000 when that is root): the trainer ran unprivileged.
#
# Environment: IMAGE_NAME/IMAGE_TAG (the image to test, default saudial:latest), SAUDIAL_UID/GID
# (default: the invoking user, 1000:1000 for root), WORK (scratch folder, default a new temp dir; kept
# and printed), PYTHON_VENV (default .venv), HF_TOKEN (passed through as in a real run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n==> image-test: %s\n' "$*" >&2; }
fail() { printf '\nFAILED image-test: %s\n' "$*" >&2; exit 1; }

py=${PYTHON_VENV:-.venv}/bin/python
[ -x "$py" ] || fail "$py not found: run 'make setup' first (the tiny model is built on the host)"
uid=${SAUDIAL_UID:-$(id -u)}
gid=${SAUDIAL_GID:-$(id -g)}
if [ "$uid" = 0 ]; then uid=1000; gid=1000; fi
export SAUDIAL_UID=$uid SAUDIAL_GID=$gid
export COMPOSE_FILE=compose.yaml:compose.cpu.yaml
image="${IMAGE_NAME:-saudial}:${IMAGE_TAG:-latest}"
docker image inspect "$image" >/dev/null 2>&1 || fail "image $image not found: run 'make image' first"

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/saudial-image-test.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
say "scratch folder $WORK (image $image, container user $uid:$gid)"

if [ ! -f "$WORK/tiny/config.json" ]; then
    say "making a tiny random LFM2 in $WORK/tiny"
    "$py" -m saudial.devtools.tiny "$WORK/tiny"
fi
mkdir -p "$WORK/data"
if [ ! -f "$WORK/data/SauDial Dataset.xlsx" ]; then
    if [ -f samples/saudial_synthetic_sample.xlsx ]; then
        say "using samples/saudial_synthetic_sample.xlsx as the workbook"
        cp samples/saudial_synthetic_sample.xlsx "$WORK/data/SauDial Dataset.xlsx"
    else
        say "making a synthetic workbook"
        "$py" -m saudial.devtools.synthetic "$WORK/data/SauDial Dataset.xlsx" --rows 40
    fi
fi
rm -rf "$WORK/outputs"
mkdir -p "$WORK/outputs"
# A fresh outputs folder owned by the user the container runs as (matters when invoked as root).
[ "$(id -u)" = 0 ] && chown "$uid:$gid" "$WORK/outputs"
chmod -R a+rX "$WORK/tiny" "$WORK/data"

say "docker compose run --rm train  (CPU, tiny model, 2 steps)"
set +e
HOST_DATA_DIR="$WORK/data" HOST_OUTPUTS_DIR="$WORK/outputs" \
    docker compose run --rm -T \
    -v "$WORK/tiny:/models/tiny:ro" \
    -e SAUDIAL_MODEL_NAME_OR_PATH=/models/tiny \
    -e SAUDIAL_QUANTIZATION=none \
    -e SAUDIAL_MAX_STEPS=2 \
    -e SAUDIAL_GRADIENT_ACCUMULATION_STEPS=1 \
    -e SAUDIAL_EVAL=none \
    -e SAUDIAL_EXPORT=gguf:q8_0 \
    -e HF_HUB_OFFLINE=1 \
    train
rc=$?
set -e
[ "$rc" = 0 ] || fail "the training container exited with $rc (expected 0)"

say "checking $WORK/outputs"
ls -ln "$WORK/outputs" >&2
for f in adapter_model.safetensors adapter_config.json run_manifest.json; do
    [ -s "$WORK/outputs/$f" ] || fail "$f missing from the outputs"
    owner=$(stat -c '%u:%g' "$WORK/outputs/$f")
    [ "$owner" = "$uid:$gid" ] || fail "$f is owned by $owner, expected $uid:$gid"
done
gguf=$(find "$WORK/outputs/gguf" -name '*-Q8_0.gguf' 2>/dev/null | head -n 1)
[ -s "$gguf" ] || fail "SAUDIAL_EXPORT=gguf:q8_0: no Q8_0 GGUF in $WORK/outputs/gguf (llama.cpp in the image)"
[ -s "$WORK/outputs/gguf/Modelfile" ] || fail "SAUDIAL_EXPORT: no Modelfile beside the GGUF"
[ "$(stat -c '%u:%g' "$gguf")" = "$uid:$gid" ] || fail "$gguf is not owned by $uid:$gid"
[ "$uid" != 0 ] || fail "the container ran as root"
echo "image-test: OK: exit 0, adapter + run_manifest.json + a GGUF checked by llama.cpp, written by uid:gid $uid:$gid" >&2
echo "$WORK"
