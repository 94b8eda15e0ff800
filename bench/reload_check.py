"""Does a trained adapter load back onto a 4-bit base and change its output?

    python bench/reload_check.py MODEL_DIR ADAPTER_DIR      # prints one JSON line; exit 1 if not

Used by bench/bench.py after the 2-GPU run: the adapter rank 0 wrote must work on a fresh 4-bit base.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peft import PeftModel

from saudial.config.settings import Settings
from saudial.model.loading import load_model


def main() -> None:
    model_dir, adapter_dir = sys.argv[1], sys.argv[2]
    base = load_model(Settings(model_name_or_path=model_dir, quantization="4bit")).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70]], device="cuda")
    with torch.no_grad():
        before = base(input_ids=ids).logits.float()
        tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
        after = tuned(input_ids=ids).logits.float()
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    trained = len(lora_b) > 0 and all(bool(p.abs().sum() > 0) for p in lora_b)
    change = float((after - before).abs().max())
    result = {
        "quantized_base": type(base.model.layers[0].feed_forward.w1).__name__,
        "adapter_tensors": len(lora_b),
        "lora_B_nonzero": trained,
        "max_logit_change": change,
    }
    print(json.dumps(result))
    sys.exit(0 if trained and change > 1e-3 else 1)


if __name__ == "__main__":
    main()
