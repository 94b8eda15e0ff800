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
# Needs .gpuwheels/ and .unsloth-wheels/ (bash bench/gpu-wheels/fetch.sh) beside the checkout; OUT: results.
set -uo pipefail
OUT=${OUT:-/tmp/saudial-device}; mkdir -p "$OUT"
export BENCH_REUSE_MODEL=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$SECONDS; say() { echo "[$((SECONDS - t0))s] $*"; }
if ! python3 -c 'import trl, sys; sys.exit(trl.__version__ != "1.16.0")' 2>/dev/null; then
    say "installing the project's wheels"; bash .gpuwheels/install.sh > "$OUT/install.log" 2>&1 || tail -5 "$OUT/install.log"
fi
if [ "${1:-A}" != C ] && [ ! -d /tmp/unsloth_site ]; then bash .unsloth-wheels/install.sh > "$OUT/install-unsloth.log" 2>&1 || true; fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv > "$OUT/gpus.csv"; cat "$OUT/gpus.csv"
python3 -c 'import torch, transformers, trl, peft, bitsandbytes as b; print("versions:", torch.__version__, transformers.__version__, trl.__version__, peft.__version__, b.__version__)'
case "${1:-A}" in
A)
    say "GPU tests on GPU 1 (background)"
    (CUDA_VISIBLE_DEVICES=1 timeout 500 python3 -m pytest -m gpu -v -p no:cacheprovider tests/test_gpu.py \
        > "$OUT/gpu-tests.log" 2>&1; echo "exit $?" >> "$OUT/gpu-tests.log") &
    tests=$!
    say "bench on GPU 0"
    CUDA_VISIBLE_DEVICES=0 timeout 480 python3 bench/bench.py --out "$OUT/bench-a" --work /tmp/bench \
        --sections configs,wholerun,unsloth --only "seed as written;defaults, GC;defaults, bs 128" 2>&1 \
        | grep -v "it/s\]" | tee "$OUT/bench-a.log" | tail -40
    wait $tests; say "GPU tests:"; grep -E "PASSED|FAILED|ERROR|passed|failed|exit" "$OUT/gpu-tests.log" | tail -20
    ;;
B)
    say "throughput recipe, memory over 9,000 rows"
    CUDA_VISIBLE_DEVICES=0 timeout 300 python3 bench/bench.py --out "$OUT/bench-b" --work /tmp/bench \
        --sections throughput,memory 2>&1 | grep -v "it/s\]" | tee "$OUT/bench-b.log" | tail -12
    say "1 vs 2 GPUs"
    timeout 330 python3 bench/bench.py --out "$OUT/bench-m" --work /tmp/bench --sections multigpu 2>&1 \
        | grep -v "it/s\]" | tee "$OUT/bench-m.log" | tail -14
    say "SIGTERM and resume on 2 GPUs"
    OUT="$OUT/mgpu" timeout 200 bash scripts/multigpu-check.sh 2>&1 | tail -14
    ;;
C)
    say "GPU tests on GPU 1 (background)"
    (CUDA_VISIBLE_DEVICES=1 timeout 290 python3 -m pytest -m gpu -v -p no:cacheprovider tests/test_gpu.py \
        > "$OUT/gpu-tests.log" 2>&1; echo "exit $?" >> "$OUT/gpu-tests.log") &
    tests=$!
    say "bench on GPU 0: defaults, whole run with and without evaluation"
    CUDA_VISIBLE_DEVICES=0 timeout 290 python3 bench/bench.py --out "$OUT/bench-c" --work /tmp/bench \
        --sections configs,wholerun --only "saudial defaults" 2>&1 | grep -v "it/s\]" | tee "$OUT/bench-c.log" | tail -20
    wait $tests; say "GPU tests:"; grep -E "PASSED|FAILED|ERROR|passed|failed|exit" "$OUT/gpu-tests.log" | tail -20
    say "SIGTERM and resume on 2 GPUs"
    OUT="$OUT/mgpu" timeout 170 bash scripts/multigpu-check.sh 2>&1 | tail -14
    ;;
esac
say "done"
