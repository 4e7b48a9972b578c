"""Exponential moving average of a model's weights (the weights that generator.pt ships).

ema = rate * ema + (1 - rate) * param after every optimizer step, as in the official training.
With `warmup` the effective rate is min(rate, (1 + n) / (10 + n)) after n updates, so that short
runs (tests, the conflict analysis) do not ship weights that are still mostly the random init.
Buffers are copied, not averaged.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rate: float = 0.9999, *, warmup: bool = True):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.rate, self.warmup, self.updates = rate, warmup, 0
        # float32 shadow copies on the model's device, keyed like the model's state_dict
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}
        self._param_names = [n for n, _ in model.named_parameters()]

    def current_rate(self) -> float:
        if not self.warmup:
            return self.rate
        return min(self.rate, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        r = self.current_rate()
        params = dict(model.named_parameters())
        for name in self._param_names:
            self.shadow[name].lerp_(params[name].detach().float(), 1.0 - r)
        for name, buf in model.named_buffers():
            if name in self.shadow:
                self.shadow[name].copy_(buf)
        self.updates += 1

    def state_dict(self) -> dict:
        """The averaged weights alone (a model state_dict: loadable into the model)."""
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, shadow: dict, updates: int | None = None) -> None:
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        if updates is not None:
            self.updates = int(updates)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (cast to the model's dtypes)."""
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
