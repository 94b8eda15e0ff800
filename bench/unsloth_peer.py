"""Unsloth as a peer in the benchmark: same model directory, data, prompt and LoRA targets as saudial.

    PYTHONPATH=/tmp/unsloth_site:. python bench/unsloth_peer.py MODEL_DIR DATA.xlsx OUT_DIR

Run by bench/bench.py in Unsloth's own package folder (it pins older transformers/TRL/datasets than
saudial's lock). Its best measured setting: batch 64, gradient checkpointing off, 8-bit AdamW as in
its notebooks. It writes OUT_DIR/metrics.json with the same keys as saudial's metrics.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
import unsloth  # noqa: E402, F401  (must come before transformers/TRL)
from unsloth import FastLanguageModel  # noqa: E402

IMPORT_S = time.perf_counter() - T0

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from saudial.data.examples import split  # noqa: E402
from saudial.data.prompts import build_example  # noqa: E402
from saudial.data.workbook import iter_rows, load  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]
BATCH, STEPS = 64, 45  # ~3 epochs of 900 rows: one epoch gives the whole-run time, the rest the steady state


def main() -> None:
    model_dir, data_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_dir), max_seq_length=512, load_in_4bit=True, dtype=torch.bfloat16
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,  # Unsloth's fast path; saudial uses 0.05
        target_modules=TARGETS,
        use_gradient_checkpointing=False,
        random_state=42,
    )
    load_s = time.perf_counter() - tick
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    tick = time.perf_counter()
    rows = split(load(data_path).rows, 0.1, 42).train
    records = [build_example(r.dialect, r.english, r.translation, r.context or None) for r in iter_rows(rows)]
    train_ds = datasets.Dataset.from_list(records)
    data_s = time.perf_counter() - tick
    epoch_steps = -(-len(train_ds) // BATCH)

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (epoch_steps, 10, STEPS):
                torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()
                marks[-state.global_step] = float(state.num_input_tokens_seen)

    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=train_ds,
        args=SFTConfig(
            output_dir=str(out / "trainer"),
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            max_steps=STEPS,
            learning_rate=2e-4,
            bf16=True,
            logging_steps=5,
            report_to=[],
            save_strategy="no",
            max_length=512,
            completion_only_loss=True,
            include_num_input_tokens_seen="non_padding",
            optim="adamw_8bit",
            seed=42,
        ),
    )
    trainer.add_callback(Clock())
    # Pad fraction of what Unsloth computes: padded batches of BATCH examples (no padding-free for LFM2).
    real = padded = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        padded += int(batch["input_ids"].numel())
        if i >= epoch_steps:
            break
    torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    result = trainer.train()
    torch.cuda.synchronize()
    train_s = time.perf_counter() - tick
    tick = time.perf_counter()
    model.save_pretrained(str(out / "adapter"))
    save_s = time.perf_counter() - tick
    steady = (marks[-STEPS] - marks[-10]) / (marks[STEPS] - marks[10])
    first_epoch_train_s = marks[epoch_steps] - (marks[STEPS] - train_s)  # from train() start to step epoch_steps
    metrics = {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "steady_tokens_per_second": steady,
        "steady_step_time_s": (marks[STEPS] - marks[10]) / (STEPS - 10),
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "trainable_parameters": trainable,
        "pad_fraction": 1 - real / padded,
        "loss_curve": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
        # The whole 900-row run: process start to adapter saved, one epoch (measured inside this longer run).
        "whole_run_900_s": IMPORT_S + load_s + data_s + first_epoch_train_s + save_s,
        "timings": {
            "import_s": IMPORT_S,
            "load_s": load_s,
            "data_s": data_s,
            "train_first_epoch_s": first_epoch_train_s,
            "save_s": save_s,
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
