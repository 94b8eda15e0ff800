"""Learning, measured: train the tiny LFM2 on a learnable synthetic task, evaluate, expect a gain.

The synthetic "translations" (saudial/devtools/synthetic.py) are a fixed word-by-word code per dialect over a
small vocabulary; held-out sentences are made of seen words. The whole path runs for real through
the entry point: SFTTrainer with the prompt/completion loss, the adapter saved, then evaluation
generating with the same prompt and scoring chrF++ for the base model (adapter switched off: exactly
the model before training, LoRA's B starts at zero) and with the adapter.

Calibration (2 shared CPU cores, OMP_NUM_THREADS=1; tiny LFM2 hidden 128, 4 layers; 400 short rows,
150 steps of batch 8, lr 2e-3 linear, LoRA r=16; 40 eval rows, greedy, 48 new tokens):

    seed 1: chrF++ base 0.0 -> adapter 11.8   (BLEU 0.9; eval loss 5.58; ~40-55 s training, ~10 s evaluation)
    seed 2: chrF++ base 0.0 -> adapter 9.2    (BLEU 0.6; eval loss 5.56)
    seed 3: chrF++ base 0.0 -> adapter 2.7    (BLEU 0.2; eval loss 5.54)

The random base model writes nothing usable (chrF++ ~0); in this budget the adapter learns the
target side (the pseudo-Arabic word forms, their spelling and the sentence shape) rather than the
full word-by-word mapping, which takes far more steps than a CI test can afford. The gain varies a lot
between seeds (2.7 to 11.8), so the test pins SAUDIAL_SEED=1 and asserts a gain of at least MARGIN=2
chrF++ points: below every calibrated seed (the weakest, 2.7, still passes) and clearly above the
exact 0 the base scores. It fails when the adapter is not applied at inference (gain 0), when
generation does not use the training prompt or stops wrongly (empty or prompt-like output scores ~0),
or when nothing is learned. A stronger test (the word mapping itself) needs a bigger tiny model or
many more steps than 2 shared CPU cores allow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saudial.devtools import synthetic, tiny
from tests.conftest import RunEntry, base_env

MARGIN = 2.0
CALIBRATION = {1: (0.0, 11.8), 2: (0.0, 9.2), 3: (0.0, 2.7)}  # seed -> chrF++ (base, adapter)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("learnable")
    model = tiny.build(root / "tiny-128", hidden_size=128)
    data = synthetic.write(synthetic.make_rows(400, seed=0, paragraph_share=0.0), root / "synthetic-short.csv")
    return model, data


@pytest.mark.slow
def test_training_improves_chrf(learnable: tuple[Path, Path], tmp_path: Path, run_entry: RunEntry) -> None:
    model, data = learnable
    out = tmp_path / "out"
    env = base_env(
        model,
        data,
        out,
        OMP_NUM_THREADS="1",  # 2 shared cores: competing OpenMP threads make every step ~10x slower
        SAUDIAL_SEED="1",
        SAUDIAL_MAX_STEPS="150",
        SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE="8",
        SAUDIAL_LEARNING_RATE="2e-3",
        SAUDIAL_WARMUP_RATIO="0.0",
        SAUDIAL_LORA_R="16",
        SAUDIAL_LORA_ALPHA="32",
        SAUDIAL_LORA_DROPOUT="0.0",
        SAUDIAL_GRADIENT_CHECKPOINTING="false",
        SAUDIAL_LOGGING_STEPS="25",
        SAUDIAL_EVAL="full",
        SAUDIAL_MAX_EVAL_SAMPLES="40",
        SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE="16",
        SAUDIAL_MAX_NEW_TOKENS="48",
        SAUDIAL_REPETITION_PENALTY="1.0",
    )
    result = run_entry(env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["eval_chrf++_base"], metrics["eval_chrf++_adapter"]
    assert after >= before + MARGIN, f"chrF++ {before} -> {after}: expected a gain of at least {MARGIN}"
    assert metrics["eval_loss"] < 6.0  # the untrained model's loss is ln(vocab) ~ 6.9
