#!/usr/bin/env bash
# One H100 call for issue 28's kernels (model/kernels.py, model/fast_lfm2.py), run from a copy of this tree that
# sits inside the checkout the device receives (BEFORE: that checkout's root, the tree without the change):
#   the wheels; the GPU tests of the kernels; the defaults before (BEFORE), this tree with the kernels off (the
#   packed-sequence check's sync gone only), this tree; the loss head against TRL's (a copy whose
#   lm_head.supported() answers False); the step profile; the whole run with and without evaluation; the seed
#   as written and Unsloth with what time is left. Results merge into $OUT/results.json as they come.
#   `bash bench/kernels-run.sh B`: the GPU tests of per-example losses with the kernels, and the kernels on, off
#   and on again in one bench run (a second, short call).
set -uo pipefail
BEFORE=${BEFORE:-../..}
OUT=${OUT:-/tmp/kernels-out}; mkdir -p "$OUT"
export BENCH_REUSE_MODEL=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=0
t0=$SECONDS; say() { echo "[$((SECONDS - t0))s] $*"; }
HERE=$(pwd)
merge() {  # every bench results.json so far into one file
    python3 - "$OUT/results.json" /tmp/r-*/results.json <<'PY'
import json, sys
rows = []
for path in sys.argv[2:]:
    report = json.load(open(path))
    for row in report.get("results", []):
        rows.append({"run": path.split("/")[2], **{k: v for k, v in row.items() if k not in ("loss_curve", "log")}})
    if report.get("ratios"):
        rows.append({"run": path.split("/")[2], "ratios": report["ratios"]})
    rows.append({"run": path.split("/")[2], "device": report.get("device"), "tflops": report.get("bf16_matmul_tflops")})
json.dump(rows, open(sys.argv[1], "w"), indent=1, default=str)
PY
}
bench() {  # NAME LIMIT DIR bench.py arguments...
    local name=$1 limit=$2 dir=$3; shift 3
    say "bench $name"
    (cd "$dir" && timeout "$limit" python3 bench/bench.py --out "/tmp/r-$name" --work /tmp/bench "$@" 2>&1) \
        | grep -v "it/s\]" | grep -E "exit|tok/s|configuration|^-|^[a-zA-Z].*[0-9]$|x$|Error" | tail -12
    merge
}
say "installing the project's wheels"
bash .gpuwheels/install.sh > /tmp/install.log 2>&1 || tail -5 /tmp/install.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, triton, transformers, trl, peft, bitsandbytes as b; print("versions:", torch.__version__, "triton", triton.__version__, transformers.__version__, trl.__version__, peft.__version__, b.__version__)'
if [ "${1:-}" = B ]; then
    # The second, shorter call: the per-example losses against padded batches with the kernels (tests/test_gpu.py),
    # then the kernels on, off and on again in one bench run.
    say "GPU tests: kernels, and padding-free against padded"
    timeout -k 10 70 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels.py tests/test_gpu.py \
        -k "kernels or padding_free_equals_padded" > "$OUT/gpu-tests.log" 2>&1; tail -3 "$OUT/gpu-tests.log"
    say "kernels on, off, on (results written as they come)"
    timeout 150 python3 bench/bench.py --out "$OUT/onoff" --work /tmp/bench --sections levers --only "levers: defaults" \
        --skip "levers: defaults, foreach;levers: defaults, 2 data;levers: defaults, bs;levers: defaults, logging;levers: defaults, GC" \
        2>&1 | grep --line-buffered -E "exit [0-9-]+, wall"
    say "done"; exit 0
fi
say "GPU tests of the kernels"
timeout -k 10 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels.py tests/test_fused_norm.py \
    > "$OUT/gpu-tests.log" 2>&1; tail -3 "$OUT/gpu-tests.log"
skip="levers: defaults,"
bench before 150 "$BEFORE" --sections levers --only "levers: defaults" --skip "$skip"
bench kernels-off 90 "$HERE" --sections levers --only "levers: defaults, kernels off"
bench after 90 "$HERE" --sections levers --only "levers: defaults" --skip "$skip"
rm -rf /tmp/trlhead; cp -r "$HERE" /tmp/trlhead
sed -i 's/^def supported(model: Any) -> bool:$/&\n    return False  # kernels-run: TRL'"'"'s head/' /tmp/trlhead/saudial/model/lm_head.py
bench trl-head 90 /tmp/trlhead --sections levers --only "levers: defaults" --skip "$skip"
say "step profile (this tree)"
(timeout 150 python3 bench/bench.py --out /tmp/r-prof --work /tmp/bench --sections profile --only "profile: defaults" 2>&1 | tail -4)
head -60 /tmp/r-prof/profile-defaults.txt > "$OUT/profile-defaults.txt" 2>/dev/null
cp /tmp/r-prof/profile-defaults.txt "$OUT/profile-full.txt" 2>/dev/null; head -30 "$OUT/profile-defaults.txt"
bench whole 130 "$HERE" --sections wholerun
bench before2 60 "$BEFORE" --sections levers --only "levers: defaults" --skip "$skip"
bench after2 60 "$HERE" --sections levers --only "levers: defaults" --skip "$skip"
left=$((570 - SECONDS))
if [ "$left" -gt 50 ]; then bench seed "$left" "$HERE" --sections configs --only "seed as written (bs 1x8)"; fi
left=$((575 - SECONDS))
if [ "$left" -gt 110 ] && [ -d .unsloth-wheels ]; then
    bash .unsloth-wheels/install.sh > /tmp/install-unsloth.log 2>&1 || tail -3 /tmp/install-unsloth.log
    bench unsloth $((575 - SECONDS)) "$HERE" --sections unsloth
fi
say "done"
