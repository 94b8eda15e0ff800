"""Hugging Face's own environment (HF_HUB_OFFLINE, HF_ENDPOINT), read once, through huggingface_hub.

huggingface_hub parses these variables when it is imported (`huggingface_hub.constants`); saudial asks
its constants instead of parsing them a second time, so "offline" means exactly what it means to the
library that does the downloads and uploads.
"""

from __future__ import annotations


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)
