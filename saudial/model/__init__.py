"""The model: hardware checks, loading (4-bit quantization), the LoRA adapter, and the speed patches."""
