#!/usr/bin/env bash
# Manual check on a machine with 2+ GPUs (not run in CI): 4-bit QLoRA data-parallel through saudial's own
# launcher (SAUDIAL_NUM_PROCESSES defaults to every visible GPU): an uninterrupted run, then the same run
# stopped by SIGTERM after a checkpoint (exit 75, one checkpoint) and resumed; it prints both loss curves
# and the largest difference between the two adapters. Run from the repo root with the stack installed;
# logs go to $OUT (default /tmp/saudial-mgpu).
OUT="${OUT:-/tmp/saudial-mgpu}"; mkdir -p "$OUT"
set -u
W=$(mktemp -d)
nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.device_count())"
python3 -m saudial.devtools.tiny "$W/tiny" >/dev/null
python3 -m saudial.devtools.synthetic "$W/data.xlsx" --rows 200 >/dev/null
export SAUDIAL_DATA="$W/data.xlsx" SAUDIAL_MODEL_NAME_OR_PATH="$W/tiny" SAUDIAL_MAX_STEPS=12 SAUDIAL_SAVE_STEPS=3 \
  SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE=4 SAUDIAL_LOGGING_STEPS=1 SAUDIAL_REPORT_TO=none SAUDIAL_EVAL=none \
  HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
SAUDIAL_OUTPUT_DIR="$W/whole" timeout 240 python3 entrypoint.py > "$OUT/whole.log" 2>&1; echo "uninterrupted: exit $?"
SAUDIAL_OUTPUT_DIR="$W/stopped" python3 entrypoint.py > "$OUT/stopped.log" 2>&1 & pid=$!
for _ in $(seq 1 480); do grep -q "checkpoint saved: checkpoint-6" "$OUT/stopped.log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.25; done
kill -TERM $pid; wait $pid; echo "SIGTERM to the launcher: exit $? (75 expected)"
grep -E "error:|stopped by" "$OUT/stopped.log" | tail -2
SAUDIAL_OUTPUT_DIR="$W/stopped" timeout 240 python3 entrypoint.py > "$OUT/resumed.log" 2>&1; echo "resumed: exit $?"
python3 - "$W/whole" "$W/stopped" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
a, b = (Path(p) for p in sys.argv[1:])
for p in (a, b):
    m = json.loads((p / "run_manifest.json").read_text())
    print(p.name, m["status"], "processes", m["processes"], "attempts", [x.get("resumed_from_step") for x in m["attempts"]])
    print("  loss", [round(l, 4) for _, l in json.loads((p / "metrics.json").read_text())["loss_curve"]])
x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
print("adapter max |difference| whole vs stopped+resumed:", max(float((x[k] - y[k]).abs().max()) for k in x))
PY
