#!/usr/bin/env bash
# Checks of a built saudial image, run by .ci/docker.sh (CI, both flavours) and by the publish workflow
# (deploy/github/workflows/publish-image.yml, on the real NVIDIA base before the tags are pushed). Each
# check prints `ok ...` or `FAILED ...`; the script exits 1 when any failed. No GPU needed.
#
#   bash .ci/image-checks.sh IMAGE cuda|cpu
#
# Environment: MODEL_DIR, a local model folder (tokenizer) for the --dry-run check where the Hugging Face
# Hub cannot be reached (CI: the tiny LFM2 of saudial.devtools.tiny); without it the check reads the default model
# from the Hub.
#
#   both flavours  the image's user is not root; exec-form ENTRYPOINT; nothing outside /tmp is
#                  world-writable; home, HF cache and /outputs belong to saudial with mode 2770; no CUDA
#                  library twice (every duplicate .so name listed); `--dry-run` on the bundled sample
#                  exits 0; size and largest layers printed
#   cuda           torch.version.cuda is 13.0.x and torch.cuda.is_available() is False without crashing;
#                  bitsandbytes' CUDA 13 library and libtorch_cuda.so present, ldd finds everything but the
#                  driver's libcuda.so.1, from torch's wheels; the oldest compute capability torch carries;
#                  a real start without a GPU exits 2 with one error line and no traceback
#   cpu            torch is the +cpu build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${1:?usage: image-checks.sh IMAGE cuda|cpu}
FLAVOUR=${2:?usage: image-checks.sh IMAGE cuda|cpu}
FAILED=0
T0=$SECONDS

ok() { printf 'ok   %s\n' "$*"; }
failed() {
    FAILED=$((FAILED + 1))
    printf 'FAILED %s\n' "$*"
}
probe() { docker run --rm -i --network none --entrypoint python "$IMAGE" - "$@" <.ci/image_probe.py; }
# Output of a probe: its lines as they are, and each FAILED line counted here.
run_probe() {
    local out rc=0
    out=$(probe "$@" 2>&1) || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" != 0 ]; then
        local n
        n=$(grep -c '^FAILED' <<<"$out" || true)
        FAILED=$((FAILED + (n > 0 ? n : 1)))
        [ "$n" -gt 0 ] || printf 'FAILED probe %s exited %s\n' "$*" "$rc"
    fi
}

printf '=== image-checks: %s (%s)\n' "$IMAGE" "$FLAVOUR"
docker image inspect "$IMAGE" >/dev/null 2>&1 || {
    echo "FAILED image $IMAGE not found"
    exit 1
}

# --- user and entry point -------------------------------------------------------------------------
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$IMAGE")
case "$user" in
    "" | 0 | 0:* | root | root:*) failed "the image's USER is '$user' (root)" ;;
    *) ok "image USER is $user (non-root)" ;;
esac
uid_in=$(docker run --rm --network none --entrypoint id "$IMAGE" -u)
if [ "$uid_in" != 0 ]; then ok "a container runs as uid $uid_in"; else failed "a container runs as root"; fi
if [ "$entrypoint" = '["python","/app/entrypoint.py"]' ]; then
    ok "exec-form ENTRYPOINT $entrypoint"
else
    failed "unexpected ENTRYPOINT $entrypoint"
fi

# --- filesystem -------------------------------------------------------------------------------------
run_probe perms libs

# --- torch and CUDA ---------------------------------------------------------------------------------
if [ "$FLAVOUR" = cuda ]; then
    run_probe torch ldd
else
    tv=$(docker run --rm --network none --entrypoint python "$IMAGE" -c 'import torch; print(torch.__version__, torch.version.cuda)')
    case "$tv" in
        *+cpu\ None) ok "torch $tv: the CPU build" ;;
        *) failed "torch in the CPU image is '$tv', expected the +cpu build" ;;
    esac
fi

# --- the entry point on the bundled sample, without a GPU ---------------------------------------------
# TODO(issue 13): once `saudial check` exists, also run it here (no GPU: exit 2, one screen, mentions
# `make demo`); .ci/docker.sh carries the same TODO.
sample_args=(-v "$PWD/samples:/samples:ro" -e "SAUDIAL_DATA=/samples/saudial_synthetic_sample.xlsx")
model_args=()
if [ -n "${MODEL_DIR:-}" ]; then
    model_args=(--network none -v "$MODEL_DIR:/models/local:ro" -e SAUDIAL_MODEL_NAME_OR_PATH=/models/local -e HF_HUB_OFFLINE=1)
fi
err=$(mktemp)
trap 'rm -f "$err"' EXIT
# One error line, no traceback: stderr holds log lines (the configuration dump), then at most one line
# that starts with "error:", which must be the last one.
one_error_line() {
    local n_err last
    n_err=$(grep -c '^error:' "$err" || true)
    last=$(tail -n 1 "$err")
    ! grep -q 'Traceback' "$err" && [ "$n_err" = 1 ] && [ "${last#error:}" != "$last" ]
}

rc=0
docker run --rm "${sample_args[@]}" "${model_args[@]}" "$IMAGE" --dry-run >/dev/null 2>"$err" || rc=$?
if [ "$rc" = 0 ] && ! grep -q Traceback "$err"; then
    ok "--dry-run on the bundled sample (SAUDIAL_QUANTIZATION default 4bit, no GPU): exit 0, data validated"
else
    failed "--dry-run on the bundled sample exited $rc: $(tail -n 3 "$err" | tr '\n' ' ')"
fi

if [ "$FLAVOUR" = cuda ]; then
    rc=0
    docker run --rm --network none "${sample_args[@]}" "$IMAGE" >/dev/null 2>"$err" || rc=$?
    if [ "$rc" = 2 ] && one_error_line; then
        ok "a real start without a GPU: exit 2, one line, no traceback: $(tail -n 1 "$err" | cut -c1-160)"
    else
        failed "a real start without a GPU exited $rc (expected 2 and one error line): $(tail -n 3 "$err" | tr '\n' ' ')"
    fi
    noise=$(grep -vc -e '^error:' -e '^[0-9:]* INFO saudial: configuration:' "$err" || true)
    printf 'info stderr of that start: %s line(s) besides the error line (the configuration dump; issue 13)\n' "$noise"
fi

# --- size -------------------------------------------------------------------------------------------
python3 .ci/image_report.py "$FLAVOUR=$IMAGE"

printf '=== image-checks: %s: %s failed (%ss)\n' "$IMAGE" "$FAILED" "$((SECONDS - T0))"
[ "$FAILED" = 0 ]
