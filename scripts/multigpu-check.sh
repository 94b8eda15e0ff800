#!/usr/bin/env bash
# Manual check on a machine with 2+ GPUs (not run in CI): 4-bit QLoRA data-parallel through the
# launcher (SAUDIAL_NUM_PROCESSES defaults to every visible GPU), then SIGTERM mid-run (exit 75) and
# a resume. Run from the repo root with the stack installed; logs go to $OUT (default /tmp/saudial-mgpu).
OUT="${OUT:-/tmp/saudial-mgpu}"; mkdir -p "$OUT"
set -u
nvidia-smi -L; python3 -c "import torch,pandas,pyarrow;print(torch.__version__, pandas.__version__, torch.cuda.device_count())"
python3 -m saudial.devtools.tiny /tmp/tiny >/dev/null
python3 -c "from saudial import synthetic; from pathlib import Path; synthetic.write(synthetic.make_rows(200, seed=0), Path('/tmp/data.xlsx'))"
export SAUDIAL_DATA=/tmp/data.xlsx SAUDIAL_MODEL_NAME_OR_PATH=/tmp/tiny SAUDIAL_MAX_STEPS=6 SAUDIAL_SAVE_STEPS=1 SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE=2 SAUDIAL_GRADIENT_ACCUMULATION_STEPS=1 SAUDIAL_LOGGING_STEPS=1 SAUDIAL_REPORT_TO=none SAUDIAL_EVAL=loss HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
SAUDIAL_OUTPUT_DIR=/tmp/o1 timeout 240 python3 entrypoint.py > $OUT/run1.log 2>&1; echo rc1=$?
SAUDIAL_MAX_STEPS=60 SAUDIAL_OUTPUT_DIR=/tmp/o2 python3 entrypoint.py > $OUT/run2.log 2>&1 & pid=$!
for i in $(seq 1 300); do grep -q "checkpoint saved: checkpoint-3" $OUT/run2.log && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done
kill -TERM $pid; wait $pid; echo rc2=$?
SAUDIAL_MAX_STEPS=60 SAUDIAL_OUTPUT_DIR=/tmp/o2 timeout 240 python3 entrypoint.py > $OUT/run3.log 2>&1; echo rc3=$?
for f in run1 run2 run3; do echo "== $f"; tr '\r' '\n' < $OUT/$f.log | grep -E "saudial|error|Error|rank|Traceback" | grep -v '^  ' | cut -c1-220 | tail -25; done
ls /tmp/o1 /tmp/o1/checkpoint-6 /tmp/o2
python3 -c "import json;d=json.load(open('/tmp/o1/run_manifest.json'));print(d['status'],d['processes'],d['device'],d['determinism'],d['config']['quantization'])"
python3 -c "import json;d=json.load(open('/tmp/o2/run_manifest.json'));print(d['status'],d['attempts'])"
