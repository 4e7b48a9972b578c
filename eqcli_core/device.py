"""Device choice and mixed precision, in one place, so no module hard-codes a CUDA device."""
from __future__ import annotations

import contextlib

import torch

from .errors import UsageError


def pick_device(name: str | None = None) -> torch.device:
    """`None`/"auto": CUDA when present, else MPS, else CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available on this machine")
    return dev


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay float32 and exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
