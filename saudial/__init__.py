"""saudial: QLoRA fine-tuning of LiquidAI's LFM2-1.2B on the SauDial English -> Saudi-dialect data."""

__version__ = "0.1.0"
