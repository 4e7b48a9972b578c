"""The per-token flow-matching head (MAR's "diffusion loss", here a rectified flow).

A small MLP with AdaLN residual blocks predicts the velocity v(x_t, t | c) for one token x (C,)
given the transformer output c (D,) that conditions it. Rectified flow:
    x_t = t * noise + (1 - t) * x0,   target v = noise - x0,   t ~ U(0, 1)
Sampling integrates dx/dt = v with Euler steps from t = 1 (noise) to t = 0 (data).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

FREQ_DIM = 256  # size of the sinusoidal time embedding before its MLP (as in DiT/MAR)


def timestep_embedding(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """t (M,) in [0, 1] -> (M, dim): [cos(t*f_k), sin(t*f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x))): shift/scale/gate come from y = emb(t) + proj(c)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.ada = nn.Linear(width, 3 * width)

    def forward(self, x, cond):  # x: (M, W); cond = silu(emb(t) + proj(c)): (M or 1, W)
        shift, scale, gate = self.ada(cond).chunk(3, dim=-1)
        h = self.fc2(F.silu(self.fc1(modulate(self.norm(x), shift, scale))))
        return x + gate * h


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x, cond):
        shift, scale = self.ada(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class FlowHead(nn.Module):
    """Velocity MLP v(x (M,C), t (M,), c (M,D)) -> (M,C), plus its training loss and Euler sampler."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, grad_checkpointing: bool = False):
        super().__init__()
        self.token_dim = token_dim
        self.grad_checkpointing = grad_checkpointing
        self.time_fc1 = nn.Linear(FREQ_DIM, width)
        self.time_fc2 = nn.Linear(width, width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.in_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final = FinalLayer(width, token_dim)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_fc1.weight, std=0.02)
        nn.init.normal_(self.time_fc2.weight, std=0.02)
        # zero-init modulation and output: every block starts as the identity, output as 0
        for lin in [b.ada for b in self.blocks] + [self.final.ada, self.final.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, W)
        return self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t))))

    def velocity(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        """x (M,C); t_emb (M or 1, W); c_emb (M,W) = cond_proj(c), precomputed once per column."""
        h = self.in_proj(x)
        cond = F.silu(t_emb + c_emb)  # every AdaLN modulation starts with this SiLU: do it once
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, cond, use_reentrant=False)
            else:
                h = block(h, cond)
        return self.final(h, cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """v(x_t, t | c): x (M,C), t (M,) in [0,1], c (M,D) -> (M,C)."""
        return self.velocity(x, self.embed_time(t), self.cond_proj(c))

    def loss(self, x0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Rectified-flow loss per sample: x0 (M,C) clean tokens, c (M,D) -> (M,) mean over channels."""
        noise = torch.randn_like(x0)
        t = torch.rand(x0.shape[0], device=x0.device) * (1 - 1e-5) + 1e-5  # avoid t = 0 exactly
        x_t = t[:, None] * noise + (1 - t[:, None]) * x0
        v = self(x_t, t, c)
        return ((noise - x0) - v).pow(2).mean(dim=-1)

    @torch.no_grad()
    def time_table(self, steps: int, device=None) -> torch.Tensor:
        """Embeddings of the Euler grid t = steps/steps, ..., 1/steps: (steps, W). The grid is the
        same for every column, so a sampling run computes it once."""
        t = torch.arange(steps, 0, -1, device=device or self.time_fc1.weight.device) / steps
        return self.embed_time(t)

    @torch.no_grad()
    def sample(self, c: torch.Tensor, noise: torch.Tensor, steps: int, cfg: float | None = None,
               t_table: torch.Tensor | None = None) -> torch.Tensor:
        """Euler from t=1 to t=0, returning x0 (B,C).

        noise (B,C) is x at t=1. Without guidance (cfg None) c is (B,D). With guidance c is (2B,D):
        rows [:B] conditional, [B:] null class; both halves start from the same noise and the update
        uses v_u + cfg * (v_c - v_u), so the pair stays identical (the official scheme).
        t_table: time_table(steps), if the caller keeps it across columns."""
        guided = cfg is not None
        x = noise
        c_emb = self.cond_proj(c)
        dt = -1.0 / steps
        if t_table is None:
            t_table = self.time_table(steps, c.device)
        for k in range(steps):  # t = (steps - k) / steps
            t_emb = t_table[k:k + 1]  # same t for every row: (1, W), broadcast
            if guided:
                v_c, v_u = self.velocity(torch.cat([x, x]), t_emb, c_emb).chunk(2)
                v = v_u + cfg * (v_c - v_u)
            else:
                v = self.velocity(x, t_emb, c_emb)
            x = x + v * dt
        return x
