"""Learning-rate schedule: linear warmup, then constant or cosine decay; a pure function of step.

Being a function of the step alone (no scheduler object with hidden state) makes resume exact:
the checkpoint's step is all that is needed.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule of the official recipe: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def lr_at(step: int, *, peak: float, warmup: int, schedule: str = "constant", total: int | None = None, min_lr: float = 0.0) -> float:
    """lr for optimizer step `step` (0-based). Warmup ramps linearly to `peak` over `warmup` steps."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        if not total:
            raise ValueError("the cosine schedule needs the total number of steps")
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
