#!/usr/bin/env bash
# Run the GPU tests, the benchmark table or the step profile on a CUDA machine without network access.
#
#   bash bench/device-run.sh gpu-tests [OUT]   pytest -m gpu (per-example losses, kernels, the 4-bit paths)
#   bash bench/device-run.sh bench [OUT]       the benchmark table of docs/benchmarks.md, with Unsloth beside it
#   bash bench/device-run.sh profile [OUT]     where a default step's time goes (bench/profile_step.py)
#   bash bench/device-run.sh host [OUT]        where the step's host time goes: py-spy over the defaults' 40 steps, by
#                                              phase and by Python function (bench/host_profile.py)
#   bash bench/device-run.sh graphs [OUT]      the defaults' forward + backward eager against each decoder layer as a
#                                              CUDA graph, one fixed batch (bench/graph_probe.py)
#   bash bench/device-run.sh all [OUT]         bench, then the GPU tests (beside it on a second GPU, if there is one)
#   bash bench/device-run.sh levers [OUT]      the speed overrides' same-call pairs (bench.py's levers, bench/ablate.py;
#                                              BENCH_ONLY: some of them, e.g. "levers: defaults;levers: CUBLAS")
#   bash bench/device-run.sh activations [OUT] a step's peak memory against its tokens, no, all and half the layers
#                                              checkpointed (bench/activation_memory.py: model/activation_memory.py)
#   bash bench/device-run.sh family [OUT]      each LFM2 size with its recipe, evaluate and translate (bench/family.py;
#                                              FAMILY_SIZES: a comma list of 350M,700M,1.2B,2.6B, default all;
#                                              FAMILY_RUNS: recipe,small-gpu, default both)
#
# OUT (default $OUT, else /tmp/saudial-device) gets each part's log and results as they come, so a call cut
# short keeps what finished: $OUT/bench/results.json and $OUT/bench/table.txt are rewritten after every
# configuration.
# The wheels travel with the checkout: `bash bench/gpu-wheels/fetch.sh` (on a machine with PyPI) builds
# .gpuwheels/ (the project's pins) and .unsloth-wheels/ (the Unsloth peer, kept in its own folder); this
# script installs them when the machine's TRL is not the pinned one. Without .unsloth-wheels/ the bench runs
# without the Unsloth row. Environment:
#   LIMIT=S           seconds for the whole call (default 3600); each part stops in time to report
#   PYTHON            the interpreter (default python3); UNSLOTH_SITE: Unsloth's folder (`make bench-peers`)
#   BENCH_SECTIONS    bench.py sections of the table (default below)
#   BENCH_ONLY        bench.py's --only name prefixes for the bench and levers presets (default: the table's rows)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PRESET=${1:-}
OUT=${2:-${OUT:-/tmp/saudial-device}}
LIMIT=${LIMIT:-3600}
PY=${PYTHON:-python3}  # the interpreter that holds torch (make bench: the project's venv)
UNSLOTH_SITE=${UNSLOTH_SITE:-$([ -d .unsloth-site ] && echo "$PWD/.unsloth-site" || echo /tmp/unsloth_site)}
export UNSLOTH_SITE
SECTIONS=${BENCH_SECTIONS:-configs,wholerun,unsloth,scaling,compiled,maxlen}
TABLE_ROWS="seed as written (bs 1x8);saudial defaults;defaults, every layer checkpointed;defaults, 9,000 rows;defaults, 90,000 rows"
ONLY=${BENCH_ONLY:-$TABLE_ROWS}
# The bench's model is built once per machine; NVLink multicast stays off (the lent hosts' GPUs are shared).
export BENCH_REUSE_MODEL=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$SECONDS
say() { echo "[$((SECONDS - t0))s] $*"; }
left() { echo $((LIMIT - (SECONDS - t0) - ${1:-0})); }

setup_stack() {  # the project's pinned stack (and Unsloth's, into UNSLOTH_SITE) from the carried wheels
    mkdir -p "$OUT"
    if ! "$PY" -c 'import sys, trl; sys.exit(trl.__version__ != "1.16.0")' 2>/dev/null; then
        [ -f .gpuwheels/install.sh ] || { echo "no .gpuwheels/: run bash bench/gpu-wheels/fetch.sh first" >&2; exit 2; }
        say "installing the project's wheels"
        PYTHON="$PY" bash .gpuwheels/install.sh > "$OUT/install.log" 2>&1 || { tail -5 "$OUT/install.log"; exit 1; }
    fi
    if [ "$1" = unsloth ] && [ -f .unsloth-wheels/install.sh ] && [ ! -d "$UNSLOTH_SITE" ]; then
        say "installing Unsloth's wheels"
        PYTHON="$PY" bash .unsloth-wheels/install.sh > "$OUT/install-unsloth.log" 2>&1 || tail -5 "$OUT/install-unsloth.log"
    fi
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv > "$OUT/gpus.csv" && cat "$OUT/gpus.csv"
    "$PY" -c 'import torch, transformers as t, trl, peft, bitsandbytes as b
print("versions: torch", torch.__version__, "transformers", t.__version__, "trl", trl.__version__,
      "peft", peft.__version__, "bitsandbytes", b.__version__)' | tee "$OUT/versions.txt"
}

gpu_tests() {  # GPU [SECONDS]: pytest -m gpu on that GPU; the log in OUT/gpu-tests.log
    local limit=${2:-$(left 5)}
    say "GPU tests on GPU $1 (${limit} s)"
    # SIGKILL 10 s after SIGTERM: a test that trains in-process has saudial's graceful-stop handler installed,
    # which would take timeout's SIGTERM as a request to finish the step and carry on.
    CUDA_VISIBLE_DEVICES=$1 timeout -k 10 "$limit" "$PY" -m pytest -m gpu -v -p no:cacheprovider tests \
        > "$OUT/gpu-tests.log" 2>&1
    echo "exit $?" >> "$OUT/gpu-tests.log"
    grep -E "FAILED|ERROR|passed|failed|skipped|^exit" "$OUT/gpu-tests.log" | tail -12
}

bench() {  # GPU [SECONDS]: the table's sections; results in OUT/bench/, the log in OUT/bench.log
    local sections=$SECTIONS limit=${2:-$(left 10)}
    if [ ! -d "$UNSLOTH_SITE" ]; then
        sections=${sections//,unsloth/}; sections=${sections//unsloth,/}; say "no Unsloth stack: no Unsloth row"
    fi
    say "bench on GPU $1: $sections (${limit} s)"
    CUDA_VISIBLE_DEVICES=$1 timeout "$limit" "$PY" bench/bench.py --out "$OUT/bench" --work /tmp/saudial-bench \
        --sections "$sections" --only "$ONLY" 2>&1 | grep --line-buffered -v "it/s\]" > "$OUT/bench.log"
    tail -30 "$OUT/bench.log"
}

profile() {  # the defaults' step profile: kernels, GPU busy time, host-device reads, the GPU's idle gaps
    say "step profile of the defaults"
    CUDA_VISIBLE_DEVICES=0 timeout "$(left 5)" "$PY" bench/bench.py --out "$OUT/profile" --work /tmp/saudial-bench \
        --sections profile --only "profile: defaults" > "$OUT/profile.log" 2>&1
    head -45 "$OUT"/profile/profile-defaults.txt 2>/dev/null || tail -20 "$OUT/profile.log"
}

host() {  # py-spy over the defaults' levers row; OUT/host/: the raw samples, the phases, the functions
    say "host profile of the defaults (py-spy)"
    mkdir -p "$OUT/host"
    "$PY" -m pip install -q --no-index --no-deps .gpuwheels/extra/py_spy-*.whl > "$OUT/host/install.log" 2>&1 ||
        { tail -3 "$OUT/host/install.log"; return 1; }
    local spy
    spy=$(command -v py-spy || echo "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/py-spy")
    CUDA_VISIBLE_DEVICES=0 BENCH_WRAP="$spy record --rate 200 --nonblocking --threads --format raw --output $OUT/host/spy.txt --" \
        timeout "$(left 20)" "$PY" bench/bench.py --out "$OUT/host" --work /tmp/saudial-bench --sections levers \
        --only "levers: defaults" --skip "levers: defaults," 2>&1 | grep --line-buffered -v "it/s\]" > "$OUT/host.log"
    "$PY" bench/host_profile.py "$OUT/host/spy.txt" --phases | tee "$OUT/host/phases.txt"
    "$PY" bench/host_profile.py "$OUT/host/spy.txt" --top 40 > "$OUT/host/functions.txt"
    head -45 "$OUT/host/functions.txt"
}

graphs() {  # what CUDA graphs of the decoder layers would take off the step; OUT/graph-probe.json
    say "CUDA graphs of the decoder layers (probe)"
    CUDA_VISIBLE_DEVICES=0 timeout "$(left 5)" "$PY" bench/graph_probe.py --work /tmp/saudial-bench \
        --json "$OUT/graph-probe.json" 2>&1 | grep --line-buffered -v "it/s\]" > "$OUT/graphs.log"
    tail -3 "$OUT/graphs.log"
}

family() {  # each LFM2 size's whole run with its recipe; results in OUT/family/ (family.json after every run)
    say "LFM2 family on GPU 0: ${FAMILY_SIZES:-all sizes}"
    CUDA_VISIBLE_DEVICES=0 timeout "$(left 5)" "$PY" bench/family.py --out "$OUT/family" \
        --sizes "${FAMILY_SIZES:-350M,700M,1.2B,2.6B}" --runs "${FAMILY_RUNS:-recipe,small-gpu}" 2>&1 | grep --line-buffered -v "it/s\]" > "$OUT/family.log"
    tail -12 "$OUT/family.log"
}

activations() {  # peak memory per step against tokens (bench/activation_memory.py); results in OUT/activations/
    say "activation memory on GPU 0"
    CUDA_VISIBLE_DEVICES=0 timeout "$(left 5)" "$PY" bench/bench.py --out "$OUT/activations" --work /tmp/saudial-bench \
        --sections activations 2>&1 | grep --line-buffered -v "it/s\]" > "$OUT/activations.log"
    tail -4 "$OUT/activations.log"
}

levers() {  # the defaults against each speed override taken out, in turns; results in OUT/levers/
    say "levers on GPU 0"
    CUDA_VISIBLE_DEVICES=0 timeout "$(left 5)" "$PY" bench/bench.py --out "$OUT/levers" --work /tmp/saudial-bench \
        --sections levers --only "${BENCH_ONLY:-}" 2>&1 | grep --line-buffered -v "it/s\]" > "$OUT/levers.log"
    tail -14 "$OUT/levers.log"
}

case "$PRESET" in
family) setup_stack project && family ;;
levers) setup_stack project && levers ;;
activations) setup_stack project && activations ;;
gpu-tests) setup_stack project && gpu_tests 0 ;;
bench) setup_stack unsloth && bench 0 ;;
profile) setup_stack project && profile ;;
host) setup_stack project && host ;;
graphs) setup_stack project && graphs ;;
all)
    setup_stack unsloth
    if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
        # The tests share the host's CPU with the bench: its host-bound step runs a few percent slower then.
        gpu_tests 1 "$(left 5)" > "$OUT/gpu-tests.summary" 2>&1 &
        tests=$!
        bench 0
        wait "$tests"; cat "$OUT/gpu-tests.summary"
    else
        bench 0 "$(left 240)"  # the GPU tests take ~190 s on an H100
        gpu_tests 0
    fi
    ;;
*) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
say "done: $OUT"
