#!/usr/bin/env bash
# What one lent GPU machine runs for the benchmark table and the GPU tests (docs/benchmarks.md), in two
# calls on a 2-GPU machine (each well inside a 10-minute limit; results are written as they come):
#   bash bench/device-run.sh A    GPU tests on GPU 1 while GPU 0 runs the single-GPU bench (seed, defaults
#                                 with and without checkpointing, batch 128, the whole run with and without
#                                 evaluation, Unsloth)
#   bash bench/device-run.sh C    one short call: GPU tests on GPU 1 while GPU 0 runs the defaults and the whole
#                                 run with evaluation; then SIGTERM and resume on 2 GPUs (a session with ~12 min)
#   bash bench/device-run.sh B    the throughput recipe (compiled), memory over 9,000 rows, 1 vs 2 GPUs
#                                 (eager and compiled), SIGTERM and resume under data parallel
#   bash bench/device-run.sh D    issue #15's levers against the defaults in one call, and the step profile
#                                 with and without them (one GPU is enough)
#   bash bench/device-run.sh E    a 2-GPU machine, both GPUs busy: GPU 1 the GPU tests, then the compiled
#                                 recipe twice on one compile cache (cold, warm); GPU 0 the levers, the whole
#                                 run with and without evaluation, the seed as written, Unsloth, the profile
#   bash bench/device-run.sh F    a 2-GPU machine: GPU 1 the GPU tests, then the compiled step's profile on a
#                                 cold and a warm compile cache; GPU 0 the defaults, logging and padding
#                                 variants, the whole run with and without evaluation, the step profile.
#                                 Only a few files go to OUT (the device returns ~8)
#   bash bench/device-run.sh J    a 2-GPU machine: GPU 1 the GPU tests, then 9,000 and 90,000 rows (scaling);
#                                 GPU 0 the defaults twice, with gradient checkpointing, the whole run with
#                                 and without evaluation, the seed as written, Unsloth, the defaults' profile;
#                                 then SIGTERM and resume on 2 GPUs with what time is left
#   bash bench/device-run.sh K    a 2-GPU machine: GPU 1 90,000 rows; GPU 0 the defaults and their step profile
#                                 (on 2026-11-30 also from a copy of the tree with a change under test), then
#                                 the whole run with and without evaluation; then SIGTERM and resume on 2 GPUs
#   bash bench/device-run.sh I    a 2-GPU machine: GPU 1 the GPU tests, then the compile cache cold, warm, and
#                                 warm with one compile thread (and why Triton kernels are not launched from
#                                 the cache: bypass.txt); GPU 0 the levers (fused RMSNorm, data loader workers),
#                                 the whole run with and without evaluation, the defaults' step profile
#   bash bench/device-run.sh M    one GPU: this tree against the tree before a change (before.patch, below), in
#                                 turns; the whole run; host time by Python function (py-spy from
#                                 .gpuwheels/extra); the step profile; the GPU tests with what time is left
#   bash bench/device-run.sh N    a 2-GPU machine: GPU 1 the GPU tests; GPU 0 the host cost per operation, this
#                                 tree and the one before in turns, Unsloth, the seed as written, the whole run,
#                                 the step profile with the GPU's idle gaps
#   bash bench/device-run.sh O    one GPU: the defaults against two data loader workers, three times in turns;
#                                 the whole run; the step profiles with their idle gaps
#   bash bench/device-run.sh P    one GPU: this tree against the one before (before.patch), three times in turns;
#                                 the step profiles of both with their host-device syncs and idle gaps; the
#                                 whole run with and without evaluation; the GPU tests with what time is left
#   bash bench/device-run.sh Q    one GPU: the GPU tests (and tests/test_sync_free.py on the GPU); this tree
#                                 against the one before, twice in turns; logging every 10 steps; the profile
#   bash bench/device-run.sh R    one GPU: the seed as written, Unsloth, the whole run with and without
#                                 evaluation, the defaults and logging every 10 steps (the bench's ratios)
#   bash bench/device-run.sh S    a 2-GPU machine: GPU 1 the sync-free trainer's tests, then the GPU tests; GPU 0
#                                 this tree and the one before, the step profile, the whole run with and
#                                 without evaluation, logging every 10 steps
#   bash bench/device-run.sh T    one GPU, nothing beside it: the host's cost per operation (how fast this host
#                                 is); the bench's ratios in one bench run (the seed as
#                                 written, gradient checkpointing, the whole run logging every step and at the
#                                 default logging, with evaluation, Unsloth)
#   bash bench/device-run.sh U    one GPU: the step profile with the reads attributed by --syncs; then the GPU
#                                 tests, with the sync-free trainer's and the upstream checks on CUDA
#   bash bench/device-run.sh V    one GPU: a whole run's time outside training split (bench/startup.py, import
#                                 times), then the whole runs of T again
#   bash bench/device-run.sh W    one GPU: this tree against the one before (before.patch), three times in turns,
#                                 logging every 10 steps (the default)
#   bash bench/device-run.sh X    W with the tree before first in each turn, twice
#   bash bench/device-run.sh Y    one GPU: the loss head against TRL's fused head on this tree, four pairs in
#                                 turns (both orders), logging every 10 steps (not run yet)
# Every pytest under `timeout` gets SIGKILL 10 s after SIGTERM (-k 10): a test that trains in-process has
# saudial's SIGTERM handler installed (a graceful stop), which took timeout's SIGTERM in call Q (2026-11-30),
# so the GPU tests ran on past their limit and the call ran out before the bench.
# M, N, P, Q, S, W and X compare with a copy of the tree that has the change under test taken out: before.patch, written
# here by `git diff BASE -- saudial > before.patch` (BASE: the commit to compare with; 9608377 for M and N,
# ada56ee for P, Q and S; ed977de for W and X;
# untracked, not committed; it travels with the tree, and the GPU machine's copy has no git history).
# Needs .gpuwheels/ and .unsloth-wheels/ (bash bench/gpu-wheels/fetch.sh) beside the checkout; OUT: results.
set -uo pipefail
OUT=${OUT:-/tmp/saudial-device}; mkdir -p "$OUT"
export BENCH_REUSE_MODEL=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$SECONDS; say() { echo "[$((SECONDS - t0))s] $*"; }
if ! python3 -c 'import trl, sys; sys.exit(trl.__version__ != "1.16.0")' 2>/dev/null; then
    say "installing the project's wheels"; bash .gpuwheels/install.sh > "$OUT/install.log" 2>&1 || tail -5 "$OUT/install.log"
fi
if [[ "${1:-A}" == [ABEJNRT] ]] && [ ! -d /tmp/unsloth_site ]; then bash .unsloth-wheels/install.sh > "$OUT/install-unsloth.log" 2>&1 || true; fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv > "$OUT/gpus.csv"; cat "$OUT/gpus.csv"
python3 -c 'import torch, transformers, trl, peft, bitsandbytes as b; print("versions:", torch.__version__, transformers.__version__, trl.__version__, peft.__version__, b.__version__)'
# The pieces the calls are made of: GPU tests on GPU 1 in the background (LIMIT s), then, if named, one bench
# section on GPU 1 until 550 s into the call (results in /tmp/gpu1, its log in $OUT/SECTION.log); their summary
# once they end; a bench run (NAME LIMIT LINES bench.py arguments; its log in $OUT/NAME.log); SIGTERM and
# resume on 2 GPUs.
GPU_TESTS="tests/test_gpu.py tests/test_fused_lora.py tests/test_fused_norm.py"  # every file with pytest.mark.gpu cases
gpu_tests() {
    local limit=$1; after=${2:-}
    say "GPU tests on GPU 1 (background)${after:+, then the $after section there}"
    # shellcheck disable=SC2086  # GPU_TESTS is a list of paths
    (CUDA_VISIBLE_DEVICES=1 timeout -k 10 "$limit" python3 -m pytest -m gpu -v -p no:cacheprovider $GPU_TESTS \
        > "$OUT/gpu-tests.log" 2>&1; echo "exit $?" >> "$OUT/gpu-tests.log"
     if [ -n "$after" ]; then
         CUDA_VISIBLE_DEVICES=1 timeout $((550 - SECONDS)) python3 bench/bench.py --out /tmp/gpu1 --work /tmp/bench-gpu1 \
             --sections "$after" > "$OUT/$after.log" 2>&1
     fi) &
    tests=$!
}
gpu_tests_done() {
    wait "$tests"; say "GPU tests:"; grep -E "PASSED|FAILED|ERROR|passed|failed|exit" "$OUT/gpu-tests.log" | tail -20
    if [ -n "$after" ]; then say "$after on GPU 1:"; grep -E "throughput|profile|exit" "$OUT/$after.log" | tail -4; fi
}
bench() {
    local name=$1 limit=$2 lines=$3; shift 3
    timeout "$limit" python3 bench/bench.py --out "$OUT/$name" --work /tmp/bench "$@" 2>&1 | grep -v "it/s\]" \
        | tee "$OUT/$name.log" | tail -"$lines"
}
resume_check() { say "SIGTERM and resume on 2 GPUs"; OUT="$OUT/mgpu" timeout "$1" bash scripts/multigpu-check.sh 2>&1 | tail -14; }
before_tree() {  # /tmp/before: a copy of this tree with before.patch taken out
    rm -rf /tmp/before; cp -r . /tmp/before
    (cd /tmp/before && { git apply -R before.patch 2>/dev/null || patch -s -R -p1 < before.patch; }) || say "no before tree"
}
merge_results() {  # OUT_FILE RESULTS...: the rows (and printed ratios) of several bench runs in one file
    python3 - "$@" <<'PY'
import json, sys
rows = []
for path in sys.argv[2:]:
    report = json.load(open(path))
    rows += [{"file": path.split("/")[2], **row} for row in report.get("results", [])]
    if report.get("ratios"):
        rows.append({"file": path.split("/")[2], "ratios": report["ratios"]})
json.dump(rows, open(sys.argv[1], "w"), indent=1)
PY
}
collect() {  # PREFIX: the call's bench logs and results, one file each, into OUT; drop what need not come back
    cat /tmp/"$1"-*.log > "$OUT/out-$1.log"
    merge_results "$OUT/results.json" /tmp/"$1"-*/results.json
    rm -f "$OUT/gpus.csv" "$OUT/install.log" "$OUT/install-unsloth.log"
}
gpu_tests_until() {  # END [PYTEST ARGS]: the GPU test files on GPU 0 until END s into the call, if a minute is left
    local left=$(($1 - SECONDS)); shift
    [ "$left" -gt 60 ] || return 0
    say "GPU tests"
    # shellcheck disable=SC2086  # GPU_TESTS is a list of paths
    CUDA_VISIBLE_DEVICES=0 timeout -k 10 "$left" python3 -m pytest -q -p no:cacheprovider $GPU_TESTS "$@" 2>&1 | tail -4
}
turns() {  # PREFIX COUNT LIMIT [ROW]: the defaults (or the levers ROW) of this tree and of /tmp/before (before_tree),
    # COUNT times in turns
    local turn tree only=(--only "${4:-levers: defaults}") skip=(--skip "levers: defaults,")
    [ -z "${4:-}" ] || skip=()
    for turn in $(seq "$2"); do
        say "turn $turn: ${ORDER:-after before}"
        for tree in ${ORDER:-after before}; do  # ORDER="before after": the tree before first
            (cd "$([ $tree = after ] && pwd || echo /tmp/before)" && CUDA_VISIBLE_DEVICES=0 OUT=/tmp \
                bench "$1-$tree-$turn" "$3" 3 --sections levers "${only[@]}" "${skip[@]}")
        done
    done
}
case "${1:-A}" in
A)
    gpu_tests 500
    say "bench on GPU 0"
    CUDA_VISIBLE_DEVICES=0 bench bench-a 480 40 --sections configs,wholerun,unsloth \
        --only "seed as written;defaults, GC;defaults, bs 128"
    gpu_tests_done
    ;;
B)
    say "throughput recipe, memory over 9,000 rows"
    CUDA_VISIBLE_DEVICES=0 bench bench-b 300 12 --sections throughput,memory
    say "1 vs 2 GPUs"
    bench bench-m 330 14 --sections multigpu
    resume_check 200
    ;;
C)
    gpu_tests 290
    say "bench on GPU 0: defaults, whole run with and without evaluation"
    CUDA_VISIBLE_DEVICES=0 bench bench-c 290 20 --sections configs,wholerun --only "saudial defaults"
    gpu_tests_done
    resume_check 170
    ;;
D)
    say "levers and profile on GPU 0"
    CUDA_VISIBLE_DEVICES=0 bench bench-d 540 40 --sections levers,profile
    ;;
E)
    gpu_tests 270 compilecache  # then the compile cache cold and warm
    say "GPU 0: levers, whole run, seed as written, Unsloth, profile"
    CUDA_VISIBLE_DEVICES=0 bench bench-e 470 50 --sections levers,wholerun,configs,unsloth,profile \
        --only "seed as written"
    gpu_tests_done
    cp /tmp/gpu1/results.json "$OUT/compilecache.json" 2>/dev/null
    ;;
F)
    gpu_tests 270 compileprofile  # then the compiled step's profile, cold and warm compile cache
    say "GPU 0: defaults, logging and padding variants, whole run, profile"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench out-f 420 30 --sections levers,wholerun,profile \
        --only "levers: defaults" --skip "levers: defaults, bs 128;levers: defaults, GC"
    cp /tmp/out-f.log /tmp/out-f/results.json "$OUT/" 2>/dev/null; cp /tmp/out-f/profile-defaults.txt "$OUT/" 2>/dev/null
    gpu_tests_done
    cat /tmp/gpu1/profile-defaults---compile--*.txt > "$OUT/profiles-compiled.txt" 2>/dev/null
    ;;
I)
    # Inductor logs each Triton kernel it cannot launch from the compile cache (triton_heuristics, INFO).
    TORCH_LOGS="torch._inductor.runtime.triton_heuristics" gpu_tests 300 compilecache
    say "GPU 0: levers, whole run, profile of the defaults"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench out-i 500 40 --sections levers,wholerun,profile --only "levers;profile: defaults"
    cp /tmp/out-i.log /tmp/out-i/results.json /tmp/out-i/profile-defaults.txt "$OUT/" 2>/dev/null
    gpu_tests_done
    cp /tmp/gpu1/results.json "$OUT/compilecache.json" 2>/dev/null
    grep -h "Bypassing\|compile_threads\|StaticallyLaunched" /tmp/bench-gpu1/logs/*.log 2>/dev/null | sed 's/.*Bypassing/Bypassing/' \
        | sort | uniq -c | sort -rn | head -40 > "$OUT/bypass.txt"
    rm -f "$OUT/gpus.csv" "$OUT/install.log" "$OUT/install-unsloth.log"
    ;;
J)
    gpu_tests 240 scaling
    say "GPU 0: defaults, whole run, seed as written, Unsloth, profile"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench out-j 480 40 --sections levers,wholerun,configs,unsloth,profile \
        --only "levers: defaults;seed as written (bs 1x8);profile: defaults" \
        --skip "levers: defaults, transformers;levers: defaults, 2 data;levers: defaults, bs 128"
    cp /tmp/out-j.log /tmp/out-j/results.json /tmp/out-j/profile-defaults.txt "$OUT/" 2>/dev/null
    gpu_tests_done
    cp /tmp/gpu1/results.json "$OUT/scaling.json" 2>/dev/null
    rm -f "$OUT/gpus.csv" "$OUT/install.log" "$OUT/install-unsloth.log"
    left=$((575 - SECONDS)); [ "$left" -gt 120 ] && resume_check "$left" | tee "$OUT/resume.log"
    ;;
K)
    say "GPU 1: 90,000 rows (background)"
    (CUDA_VISIBLE_DEVICES=1 timeout 400 python3 bench/bench.py --out /tmp/gpu1 --work /tmp/bench-gpu1 --sections scaling \
        --only "defaults, 90,000" > "$OUT/scaling.log" 2>&1) &
    rows=$!
    # The run of 2026-11-30 also ran the next two lines from a copy of the tree with a change under test
    # (cp -r . /tmp/before, then python3 bench/bench.py from there): one tree's numbers against the other's.
    say "GPU 0: the defaults twice and their profile"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench out-k1 200 6 --sections levers,profile --only "levers: defaults;profile: defaults" \
        --skip "levers: defaults, transformers;levers: defaults, 2 data;levers: defaults, bs;levers: defaults, GC"
    say "GPU 0: the whole run with and without evaluation"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench out-k3 200 8 --sections wholerun
    for n in 1 3; do cp /tmp/out-k$n.log "$OUT/"; cp /tmp/out-k$n/results.json "$OUT/results-k$n.json"; done 2>/dev/null
    cp /tmp/out-k1/profile-defaults.txt "$OUT/profiles.txt" 2>/dev/null
    wait "$rows"; say "90,000 rows:"; grep -E "rows|exit" "$OUT/scaling.log" | tail -3
    rm -f "$OUT/gpus.csv" "$OUT/install.log" "$OUT/install-unsloth.log"
    left=$((575 - SECONDS)); [ "$left" -gt 120 ] && resume_check "$left" | tee "$OUT/resume.log"
    ;;
M)
    # One GPU, nothing beside it. "before": a copy of the tree with the change under test taken out
    # (before.patch reversed: see above), run in turns with this tree.
    python3 -m pip install -q --no-index --no-deps .gpuwheels/extra/py_spy-*.whl > /dev/null 2>&1
    before_tree
    say "the fused LoRA's CUDA cases"
    timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_fused_lora.py 2>&1 | tail -3
    skip="levers: defaults, 2 data;levers: defaults, bs;levers: defaults, GC;levers: defaults, transformers"
    for turn in 1 2; do
        say "turn $turn: this tree (defaults, foreach AdamW), then before"
        CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench "m-after-$turn" 150 4 --sections levers --only "levers: defaults" \
            --skip "$skip;levers: defaults, again;levers: defaults, foreach AdamW, again"
        (cd /tmp/before && CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench "m-before-$turn" 90 3 --sections levers \
            --only "levers: defaults" --skip "$skip;levers: defaults,")
    done
    say "whole run with and without evaluation: this tree, then before"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench m-after-w 150 4 --sections wholerun
    (cd /tmp/before && CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench m-before-w 150 4 --sections wholerun)
    say "host time by Python function (py-spy), then the step profile"
    BENCH_WRAP="py-spy record --rate 200 --format raw --function --output /tmp/spy.txt --" CUDA_VISIBLE_DEVICES=0 OUT=/tmp \
        bench m-spy 90 2 --sections levers --only "levers: defaults" --skip "levers: defaults,"
    python3 bench/host_profile.py /tmp/spy.txt --top 60 > "$OUT/host-profile.txt" 2>&1; head -3 "$OUT/host-profile.txt"
    gzip -c /tmp/spy.txt > "$OUT/spy.txt.gz"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench m-prof 120 3 --sections profile --only "profile: defaults"
    cp /tmp/m-prof/profile-defaults.txt "$OUT/" 2>/dev/null
    collect m
    gpu_tests_until 570 -m gpu
    ;;
N)
    # A 2-GPU machine: GPU 1 the GPU tests; GPU 0, in turns, this tree and the tree before the change under
    # test (before.patch, as in M), Unsloth and the seed as written, the whole run, the step profile with
    # the GPU's idle gaps; first the host cost of single operations.
    before_tree
    gpu_tests 400
    say "GPU 0: host cost per operation"
    CUDA_VISIBLE_DEVICES=0 timeout 60 python3 bench/dispatch_cost.py > "$OUT/dispatch.txt" 2>&1; cat "$OUT/dispatch.txt"
    turns n 2 100
    say "GPU 0: Unsloth, the seed as written, the whole run"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench n-peers 260 12 --sections unsloth,configs,wholerun --only "seed as written (bs 1x8)"
    gpu_tests_done
    say "GPU 0: the step profile and the GPU's idle gaps"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench n-prof 100 3 --sections profile --only "profile: defaults"
    cp /tmp/n-prof/profile-defaults.txt "$OUT/" 2>/dev/null; head -40 "$OUT/profile-defaults.txt"
    collect n
    ;;
O)
    # One GPU, nothing beside it: the defaults against two data loader workers, three times in turns; the
    # whole run; the step profile and the GPU's idle gaps of both.
    say "the fused LoRA's CUDA cases"
    timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_fused_lora.py tests/test_gpu.py -k fused_lora 2>&1 | tail -2
    skip="levers: defaults, 2 data loader workers, again;levers: defaults, again;levers: defaults, foreach"
    for turn in 1 2 3; do
        say "turn $turn: defaults, then 2 data loader workers"
        CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench "o-$turn" 100 4 --sections levers --only "levers: defaults" \
            --skip "$skip;levers: defaults, bs;levers: defaults, GC"
    done
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench o-w 100 4 --sections wholerun
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench o-prof 150 4 --sections profile --only "profile: defaults;profile: 2 data"
    for f in /tmp/o-prof/profile-*.txt; do head -22 "$f"; done > "$OUT/gaps.txt"; cp /tmp/o-prof/profile-*.txt "$OUT/"
    collect o
    ;;
P)
    # One GPU, nothing beside it: this tree and the one before the change under test (before.patch), in turns;
    # the step profiles of both (host-device syncs, idle gaps); the whole run; the GPU tests with what is left.
    before_tree
    turns p 3 70
    for tree in after before; do
        (cd "$([ $tree = after ] && pwd || echo /tmp/before)" && CUDA_VISIBLE_DEVICES=0 OUT=/tmp \
            bench "p-prof-$tree" 100 3 --sections profile --only "profile: defaults")
        head -40 "/tmp/p-prof-$tree/profile-defaults.txt" > "$OUT/profile-$tree.txt" 2>/dev/null
    done
    head -45 "$OUT"/profile-*.txt
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench p-w 120 4 --sections wholerun
    collect p
    gpu_tests_until 575 -m gpu
    ;;
Q)
    # One GPU, nothing beside it: the GPU tests first (the change under test runs there), then this tree and
    # the one before (before.patch) in turns, logging every 10 steps, and this tree's step profile.
    before_tree
    say "GPU tests, and the sync-free trainer's tests on the GPU"
    # shellcheck disable=SC2086  # GPU_TESTS is a list of paths
    timeout -k 10 270 python3 -m pytest -q -p no:cacheprovider $GPU_TESTS tests/test_sync_free.py \
        > "$OUT/gpu-tests.log" 2>&1; tail -4 "$OUT/gpu-tests.log"
    turns q 2 60
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench q-log10 60 3 --sections levers --only "levers: defaults, logging every 10"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench q-prof 100 3 --sections profile --only "profile: defaults"
    head -45 /tmp/q-prof/profile-defaults.txt > "$OUT/profile-after.txt" 2>/dev/null; cat "$OUT/profile-after.txt"
    collect q
    ;;
S)
    # A 2-GPU machine: GPU 1 the sync-free trainer's tests on CUDA, then the GPU tests (in the background); GPU 0
    # this tree and the one before (before.patch), this tree's step profile, the whole run with and without
    # evaluation, logging every 10 steps.
    before_tree
    say "GPU 1: tests/test_sync_free.py, then the GPU tests (background)"
    # shellcheck disable=SC2086  # GPU_TESTS is a list of paths
    (CUDA_VISIBLE_DEVICES=1 timeout -k 10 90 python3 -m pytest -q -p no:cacheprovider tests/test_sync_free.py \
        > "$OUT/gpu-tests.log" 2>&1; echo "exit $?" >> "$OUT/gpu-tests.log"
     CUDA_VISIBLE_DEVICES=1 timeout -k 10 $((420 - SECONDS)) python3 -m pytest -m gpu -v -p no:cacheprovider $GPU_TESTS \
        >> "$OUT/gpu-tests.log" 2>&1; echo "exit $?" >> "$OUT/gpu-tests.log") &
    tests=$!
    turns s 1 60
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench s-prof 80 3 --sections profile --only "profile: defaults"
    head -45 /tmp/s-prof/profile-defaults.txt > "$OUT/profile-after.txt" 2>/dev/null; head -30 "$OUT/profile-after.txt"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench s-whole 90 4 --sections wholerun
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench s-log10 50 3 --sections levers --only "levers: defaults, logging every 10"
    wait "$tests"; say "GPU 1 tests:"; grep -E "PASSED|FAILED|ERROR|passed|failed|exit" "$OUT/gpu-tests.log" | tail -24
    collect s
    ;;
T)
    # One GPU, nothing beside it: the seed as written, the small-GPU path (gradient checkpointing), the whole run
    # (logging every step, at the default logging, with evaluation) and Unsloth in one bench run, so that the
    # bench prints its ratios.
    CUDA_VISIBLE_DEVICES=0 timeout 60 python3 bench/dispatch_cost.py > "$OUT/dispatch.txt" 2>&1; cat "$OUT/dispatch.txt"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench t-peers 470 16 --sections configs,wholerun,unsloth \
        --only "seed as written (bs 1x8);defaults, GC on"
    collect t
    ;;
U)
    # One GPU, nothing beside it: the defaults' step profile (host-device reads attributed by --syncs), then the
    # GPU tests, the sync-free trainer's and the upstream checks on CUDA, with what time is left.
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench u-prof 100 3 --sections profile --only "profile: defaults"
    head -45 /tmp/u-prof/profile-defaults.txt > "$OUT/profile-defaults.txt" 2>/dev/null; head -30 "$OUT/profile-defaults.txt"
    collect u
    gpu_tests_until 585 -m "gpu or not slow" tests/test_sync_free.py tests/test_upstream.py
    ;;
V)
    # One GPU: where a whole run's time outside training goes on the GPU machine (bench/startup.py on the tiny
    # model; python -X importtime of the training modules), then the whole runs again (another host's sample).
    CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/startup.py --runs 2 --steps 2 --work /tmp/startup \
        --json "$OUT/startup.json" 2>&1 | tail -22
    CUDA_VISIBLE_DEVICES=0 python3 -X importtime -c "import saudial.training.recipe" 2> "$OUT/importtime.txt"
    sort -t'|' -k2 -n -r "$OUT/importtime.txt" | head -25
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench v-whole 150 6 --sections wholerun
    collect v
    ;;
W)
    # One GPU: this tree against the one before the change under test (before.patch), three times in turns, at
    # the default logging (every 10 steps). On 2026-11-30 (sixth session) before.patch was `git diff ed977de --
    # saudial`: the decoder-mask hook (since taken out: every pair slower) and the checkpoint's weight check.
    before_tree
    turns w 3 60 "levers: defaults, logging every 10"
    collect w
    ;;
X)
    # W with the tree before first in each turn, twice (on 2026-11-30 W had run this tree first, and all three
    # pairs were slower, by 3-7%: was it the order?)
    before_tree
    ORDER="before after" turns x 2 60 "levers: defaults, logging every 10"
    collect x
    ;;
Y)
    # One GPU: the loss head (model/lm_head.py) against TRL's fused head, on this tree: /tmp/before is a copy
    # whose lm_head.supported() answers False, so the trainer keeps TRL's head (and its reads). Four pairs at the
    # default logging (every 10 steps), two with each tree first. Written after W and X (2026-11-30), not run yet.
    rm -rf /tmp/before; cp -r . /tmp/before
    python3 - /tmp/before/saudial/model/lm_head.py <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
head = "def supported(model: Any) -> bool:\n"
assert head in text
open(path, "w").write(text.replace(head, head + "    return False  # device-run Y: TRL's head\n", 1))
PY
    turns y 2 60 "levers: defaults, logging every 10"
    ORDER="before after" turns y-r 2 60 "levers: defaults, logging every 10"
    collect y
    ;;
R)
    # One GPU, nothing beside it: the bench's ratios (the seed as written, Unsloth, the whole run) in one call,
    # the defaults and logging every 10 steps (the default), the whole run with evaluation.
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench r-peers 330 12 --sections configs,wholerun,unsloth --only "seed as written (bs 1x8)"
    CUDA_VISIBLE_DEVICES=0 OUT=/tmp bench r-levers 100 4 --sections levers --only "levers: defaults" \
        --skip "levers: defaults, again;levers: defaults, foreach;levers: defaults, 2 data;levers: defaults, bs;levers: defaults, GC"
    collect r
    ;;
esac
say "done"
