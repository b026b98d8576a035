"""Choosing the torch device from a user's ``auto``/``cpu``/``cuda`` setting."""

from __future__ import annotations

import torch

from cocyclereg.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU. Asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA device is available; use --device cpu.")
    return torch.device(name)
