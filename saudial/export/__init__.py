"""GGUF export: LFM2 + tokenizer to GGUF (convert.py), llama.cpp's quantize and runtime (llama.py), the checks against
transformers (checks.py), the Ollama Modelfile and README (modelfile.py). Above inference, below publish."""
