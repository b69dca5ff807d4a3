"""The one reading of a `device` setting (embed / rqvae / llm: "auto" | "cpu" | "cuda" | "cuda:1" ...).

`sidlib.models.train.pick_device` is not this: it also picks Apple's "mps" and follows an
`accelerate launch` (the baselines' training loop).
"""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(setting: str = "auto", key: str = "") -> str:
    """"auto" -> "cuda" when a CUDA device is available, else "cpu"; anything else as given.

    key: the config key the setting came from (e.g. "embed.device"); when given, "cuda" on a
    machine without CUDA is an error that names it, instead of a later failure inside torch."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if key and setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return setting
