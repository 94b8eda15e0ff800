"""Publishing: the model card and all Hugging Face Hub I/O."""
