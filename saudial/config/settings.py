"""Every setting of a run, typed and documented in one place: the variable ``SAUDIAL_<NAME>``, the flag ``--<name>``
(`sources.py` resolves them). Names follow TRL's `SFTConfig`, PEFT's `LoraConfig` and transformers' `TrainingArguments`,
so their documentation applies. Hugging Face's own variables (`HF_TOKEN`, `HF_HOME`, ...) are never copied in here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SAUDIAL_"
# LFM2's linear layers: attention (q/k/v/out_proj, 6 of 16 layers), the short-conv blocks' in_proj/out_proj
# (the other 10) and every layer's SwiGLU MLP (w1/w2/w3). The original recipe's (recipes/seed.yaml)
# `q_proj,v_proj` reaches only the 6 attention layers; LiquidAI's own SFT recipe targets all. (No `o_proj`:
# PEFT matches `out_proj` in both.)
LFM2_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]

# Variables with the SAUDIAL_ prefix that are not settings but are allowed in the environment:
# the image records its source revision, compose passes the host user's ids, the multi-process
# launcher (process/distributed.py) marks the processes it started; SAUDIAL_DEBUG=1 prints tracebacks (cli/main.py).
NON_SETTING_VARIABLES = {f"SAUDIAL_{name}" for name in ("IMAGE_REVISION", "UID", "GID", "LAUNCHER_PID", "DEBUG")}

CommaList = Annotated[list[str], NoDecode]
EXPORT_HELP = "After training, write the merged model as GGUF in these llama.cpp types, e.g. 'gguf:q4_k_m,q8_0'."


class Settings(BaseSettings):
    """The resolved configuration of one run. Defaults start from the original recipe (recipes/seed.yaml),
    corrected where it was wrong and retuned for speed (docs/benchmarks.md)."""

    # allow_inf_nan=False: NaN, inf and 1e309 are refused for every float (they pass every gt/le check, then crash).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, allow_inf_nan=False)

    # --- data -------------------------------------------------------------------------------------
    data: Path | None = Field(
        None, description="SauDial data file: .xlsx (as published), .csv, .jsonl or .parquet. Required."
    )
    task: Literal["translate", "chat", "auto"] = Field(
        "translate",  # the workbook's job, as before; chat and auto read conversations (data/conversations.py)
        description="translate (SauDial rows), chat (conversations: a 'messages' column in .jsonl/.parquet, "
        "TRL's format; trains a chat adapter), or auto (chat if the file holds conversations; it says which).",
    )
    sheet_name: str | None = Field(
        None, description="Excel sheet to read (default: 'SADGLD' if present, else the first sheet)."
    )
    dialects: CommaList | None = Field(
        None, description="Comma-separated dialects to keep, e.g. 'Najdi,Hijazi' (default: all)."
    )
    max_data_file_mb: int = Field(
        # The published workbook is under 1 MB; 200 MB is ~1M rows of text, far beyond any SauDial-shaped
        # file, yet small enough to refuse /dev/zero-like inputs and zip bombs before they exhaust memory.
        # The file is read into memory once, so the upper bound (16 GiB) is what a rented host can hold.
        200,
        ge=1,
        le=16384,
        description="Largest data file read, in MB (for .xlsx/.xlsm also its unpacked size); larger files "
        "are refused (data, translate and chat --input).",
    )
    eval_size: float = Field(
        0.1,  # 10% held out, stratified by dialect, no English sentence on both sides (see data/examples.split)
        ge=0.0,
        lt=1.0,
        description="Fraction of rows held out for evaluation (0 disables the split).",
    )

    # --- model ------------------------------------------------------------------------------------
    model_name_or_path: str = Field(
        "LiquidAI/LFM2-1.2B", description="Base model: a Hugging Face Hub id or a local directory."
    )
    model_revision: str = Field("main", description="Hub revision (branch, tag or commit) of the base model.")
    tokenizer_name_or_path: str | None = Field(None, description="Tokenizer to use (default: the base model's).")
    quantization: Literal["4bit", "8bit", "none"] = Field(
        "4bit",
        description="Base-model weights: 4bit (QLoRA, NF4 + double quant), 8bit, or none (bf16/fp32 LoRA).",
    )
    # A bare `load_in_4bit=True` (the original recipe's) silently gives FP4 without double quantization (bitsandbytes'
    # defaults); QLoRA's NF4 + double quant is both more accurate and smaller.
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the 4-bit scales too.")
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        # auto: bf16 where the GPU supports it, fp16 (with fp32 trainable weights) on older GPUs, fp32 on
        # the CPU. fp16=True (the original recipe's) crashes with a 4-bit model on the current stack: TRL casts LoRA
        # weights to bf16 and the fp16 grad scaler cannot unscale bf16 gradients.
        description="Compute dtype: auto, bfloat16, float16 or float32.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel: auto = PyTorch's flash varlen kernel for padding-free training on a GPU "
        "(each example attends only to itself), SDPA otherwise; sdpa = SDPA with a block-diagonal mask.",
    )
    fused_rms_norm: bool = Field(True, description="LFM2's RMSNorms through torch's fused rms_norm (model/patches.py).")
    fused_kernels: bool = Field(True, description="Triton kernels for LFM2's element-wise work (model/fast_lfm2.py).")

    # --- LoRA (PEFT LoraConfig names) ----------------------------------------------------------------
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    # Upper bounds on numbers below: generous limits far past any sensible run, so that a typo such as
    # 1e30 is refused here (exit 2, one line) rather than overflowing inside torch or the scheduler hours later.
    lora_alpha: int = Field(16, ge=1, le=8192, description="LoRA scaling numerator (scale = alpha / r).")
    # 0, not the original recipe's 0.05: it learns as well (bench/learning.py), keeps no dropout mask or
    # per-layer copy of the input (less memory, docs/benchmarks.md), and the fused 4-bit LoRA step needs it.
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (fused_lora needs 0).")
    fused_lora: bool = Field(True, description="Each 4-bit LoRA linear as one autograd step (model/fused_lora.py).")
    # Unset: on where nothing is checkpointed, or where checkpointing fitted to each step leaves room even in the
    # largest step (model/activation_memory.py): speed is worth 2 bytes a weight where memory is not short.
    dequantize_once: bool | None = Field(None, description="Keep weights dequantized (unset: where memory is ample).")
    target_modules: CommaList = Field(
        default_factory=lambda: list(LFM2_LINEAR_MODULES),
        description="Module names to adapt, comma-separated, each must exist (default: all LFM2 linear layers).",
    )

    # --- training (TRL SFTConfig / transformers TrainingArguments names) ----------------------------
    output_dir: Path = Field(Path("outputs"), description="Where the adapter, logs and manifest go.")
    overwrite_output_dir: bool = Field(
        False, description="Allow writing into a non-empty output directory from an earlier run."
    )
    # 1e-3 for 3 epochs: batches of 64 make few, large steps (45 on the 900-row workbook), and at this rate
    # they learn better than the original recipe's 2e-4 for one epoch at batch 8 (bench/learning.py).
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Peak learning rate (AdamW).")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0.0, le=10.0, description="AdamW weight decay.")
    num_train_epochs: float = Field(3.0, gt=0.0, le=10_000, description="Passes over the training split.")
    # Up to 10M steps: at one step a second, four months of training.
    max_steps: int = Field(-1, ge=-1, le=10_000_000, description="Stop after this many optimizer steps (-1: epochs).")
    # Each micro-batch costs the host a roughly fixed time to launch its kernels, so more examples per
    # micro-batch (one padding-free row) is what makes QLoRA fast (docs/benchmarks.md).
    # Batch bounds (65,536 examples) are far past what any GPU holds even at 16 tokens an example.
    per_device_train_batch_size: int = Field(64, ge=1, le=65_536, description="Examples per micro-batch per GPU.")
    # Generation is bound by a fixed cost per decode step, so its rate grows with the batch; 128 generates the
    # 900-row workbook's 99 held-out rows in one batch.
    per_device_eval_batch_size: int = Field(
        128, ge=1, le=65_536, description="Examples per evaluation and generation batch per GPU."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=65_536, description="Micro-batches per optimizer step.")
    max_length: int = Field(
        512,  # at most 131,072 tokens: 4x LFM2's context window, room for longer-context base models
        ge=16,
        le=131_072,
        description="Tokens per example; longer examples are truncated (the summary counts them).",
    )
    padding_free: bool = Field(
        True,
        # No compute on padding; per-example losses equal padded batches' thanks to the boundary-aware short
        # conv (model/short_conv.py; tests/test_padding_free.py).
        description="Flatten each micro-batch into one row without padding (TRL padding_free).",
    )
    pad_to_multiple_of: int = Field(
        256, ge=1, le=65_536, description="Pad each padding-free row to a multiple of this many tokens (few shapes)."
    )
    torch_compile: bool = Field(
        False,
        # Off: the eager step, with the fused LoRA step, the Triton kernels and the fused norms (which compiled
        # layers replace by their own fusions), was faster than the compiled layers at the same batch in the
        # same bench run, and compiling costs a warm-up of about a minute and a half per run
        # (docs/benchmarks.md, Decisions). On: for trying it on another card or stack.
        description="torch.compile each decoder layer (a warm-up of ~80 s per run; off: the eager step was faster).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute every layer's activations in the backward pass: less memory, slower (left unset on "
        "a GPU: none where the data's largest step fits, else the fewest layers each step needs; docs/benchmarks.md).",
    )
    optim: str = Field("adamw_torch_fused", description="Optimizer (transformers' name and default).")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6, description="Gradient clipping norm.")  # 1e6: no clipping
    logging_steps: int = Field(10, ge=1, le=10_000_000, description="Log the loss every this many optimizer steps.")
    seed: int = Field(
        42,  # numpy's generators (seeded by transformers' set_seed) take at most 2**32 - 1
        ge=0,
        le=2**32 - 1,
        description="Seed for the split, LoRA init, dropout and data order.",
    )
    report_to: Literal["tensorboard", "none"] = Field(
        "tensorboard", description="Where training logs go besides the console (logs/ in the output dir)."
    )
    dataloader_num_workers: int | None = Field(
        None, ge=0, le=256, description="Data loader worker processes (unset: 1 on a GPU, 0 on the CPU)."
    )

    # --- checkpoints and resume (scheduled / preemptible jobs) --------------------------------------
    save_steps: int = Field(50, ge=1, le=10_000_000, description="Write a checkpoint every this many optimizer steps.")
    save_total_limit: int = Field(2, ge=1, le=1000, description="Checkpoints kept (the newest).")
    resume: Literal["auto", "never"] = Field(
        "auto",
        description="auto: continue from the newest valid checkpoint of the same run; never: start fresh.",
    )
    num_processes: int | None = Field(
        None,  # 64: more GPUs than any single machine has
        ge=1,
        le=64,
        description="Data-parallel processes on this machine (default: all visible GPUs, 1 on CPU).",
    )

    # --- evaluation ----------------------------------------------------------------------------------
    eval: Literal["full", "loss", "none"] = Field(
        "full",
        description="After training: full (eval loss + chrF++/BLEU of base and adapter), loss, or none.",
    )
    max_eval_samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Cap on evaluated examples for quick runs (default: all of them)."
    )
    max_new_tokens: int = Field(256, ge=1, le=131_072, description="Generation limit per translation or reply.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(0.3, gt=0.0, le=100.0, description="Sampling temperature (with do_sample).")
    min_p: float = Field(0.15, ge=0.0, le=1.0, description="Sampling min_p (with do_sample).")
    repetition_penalty: float = Field(1.05, ge=1.0, le=10.0, description="Generation repetition penalty.")

    # --- Hugging Face Hub ------------------------------------------------------------------------------
    push_to_hub: bool = Field(False, description="Upload the adapter and model card after training.")
    hub_model_id: str | None = Field(None, description="Target repo 'owner/name' (needed with push_to_hub).")
    hub_private: bool = Field(True, description="Create the Hub repo as private.")
    hub_strategy: Literal["end", "checkpoint"] = Field(
        "end", description="end: upload once at the end; checkpoint: also upload each checkpoint."
    )
    export: str | None = Field(None, pattern=r"^gguf:[\w,]+$", description=EXPORT_HELP)  # default: the adapter only

    @field_validator("dialects", "target_modules", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = [item.strip() for item in value.split(",") if item.strip()]
            return items or None
        return value

    @field_validator("data", "output_dir", mode="before")
    @classmethod
    def _nonempty_path(cls, value: Any) -> Any:
        # Path("") is Path("."): an empty or blank SAUDIAL_OUTPUT_DIR= would silently mean the current directory.
        if isinstance(value, str) and not value.strip():
            raise ValueError("it is empty (an empty path would mean the current directory): set a path")
        return value

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:  # transformers reads 0 as "use epochs", which would silently train for num_train_epochs
            raise ValueError("0 steps trains nothing: use -1 to train for num_train_epochs, or a positive count")
        return value

    @field_validator("target_modules")
    @classmethod
    def _nonempty_modules(cls, value: list[str] | None) -> list[str]:
        if not value:
            raise ValueError("needs at least one module name, e.g. q_proj,v_proj")
        return value

    @field_validator("hub_model_id")
    @classmethod
    def _repo_id_shape(cls, value: str | None) -> str | None:
        if value is not None:
            check_repo_id(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id: set SAUDIAL_HUB_MODEL_ID=owner/name")
        if self.torch_compile is True and self.gradient_checkpointing:
            # torch 2.11's inductor fails on checkpointed compiled layers ("Node add_345 was invalid, but is
            # output" in min_cut_rematerialization_partition), seen on an H100 with the full-size model.
            raise ValueError(
                "torch_compile=true does not work with gradient_checkpointing=true: set one of "
                "SAUDIAL_TORCH_COMPILE / SAUDIAL_GRADIENT_CHECKPOINTING to false"
            )
        if self.quantization != "none" and self.torch_dtype == "float32":
            raise ValueError(
                "torch_dtype=float32 cannot be the compute dtype of a quantized model: "
                "use auto/bfloat16/float16, or SAUDIAL_QUANTIZATION=none"
            )
        return self

    def redacted(self) -> dict[str, Any]:
        """JSON-ready settings. Holds no secret by construction: tokens are never settings."""
        return self.model_dump(mode="json")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_repo_id(repo_id: str) -> str:
    """'owner/name' by the Hub's own rules (huggingface_hub's validator); ValueError says what is wrong."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise ValueError("it is not a valid Hub repo id: it must be 'owner/name' (the Hub repo to create or update)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:  # huggingface_hub's reason, without the value it repeats at the end
        reason = str(exc).split(": '")[0]
        raise ValueError(f"it is not a valid Hub repo id: {reason}") from None
    return repo_id
