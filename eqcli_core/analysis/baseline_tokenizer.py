"""A non-equivariant reference: a 2D patch-grid tokenizer read in raster order.

This is what most image tokenizers do (VQGAN, MAR's KL-16): cut the image into p x p patches,
encode them on a 2D grid, and flatten the grid row by row into one sequence. Shifting the image
by one patch-width column moves each row's tokens by one grid cell, but in the raster SEQUENCE
the tokens that cross a row end jump to another row, so a column shift of the image is not a
shift of the sequence. The equivariance analysis contrasts it with the column tokenizer, whose
sequence position is the image's x position.

Same interface as the column tokenizer: `encode(images) -> (B, L, C)`, `decode(tokens)`,
`column_width` (= p, the shift unit), `height`, `token_dim`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError


@dataclass
class BaselineConfig:
    height: int = 128
    patch: int = 8          # patch side in px (use the column tokenizer's column width)
    token_dim: int = 32
    hidden: int = 64


class PatchGridTokenizer(nn.Module):
    """p x p patches -> 2D token grid (Hg, Wg) -> raster sequence (B, Hg*Wg, C)."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        if config.height % config.patch:
            raise UsageError(f"baseline height {config.height} must be a multiple of its patch size {config.patch}")
        self.config = config
        p, h, c = config.patch, config.hidden, config.token_dim
        # 3x3 convs on the grid mix neighbouring patches in 2D (zero padding), like a real encoder.
        self.enc = nn.Sequential(nn.Conv2d(3, h, p, stride=p), nn.GELU(), nn.Conv2d(h, h, 3, padding=1), nn.GELU(), nn.Conv2d(h, c, 1))
        self.dec = nn.Sequential(nn.Conv2d(c, h, 3, padding=1), nn.GELU(), nn.ConvTranspose2d(h, 3, p, stride=p))
        self.column_width = p
        self.height = config.height
        self.token_dim = c
        self.grid_height = config.height // p

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> raster-order tokens (B, (H/p)*(W/p), C)."""
        b, _, h, w = images.shape
        if h != self.height or w % self.column_width:
            raise UsageError(f"baseline tokenizer needs {self.height}-px-tall images with a width that is a multiple of {self.column_width}, got {h}x{w}")
        g = self.enc(images)  # (B,C,Hg,Wg)
        return g.flatten(2).transpose(1, 2)  # row 0 left->right, then row 1, ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, Hg*Wg, C) raster tokens -> (B,3,H,Wg*p)."""
        b, n, c = tokens.shape
        if n % self.grid_height:
            raise UsageError(f"a raster sequence must hold whole rows of {self.grid_height}-row grids, got {n} tokens")
        g = tokens.transpose(1, 2).reshape(b, c, self.grid_height, n // self.grid_height)
        return self.dec(g)

    def fit(self, images: torch.Tensor, steps: int = 100, lr: float = 2e-3, generator: torch.Generator | None = None) -> list[float]:
        """Briefly train as a plain autoencoder on `images` (B,3,H,W) (random crops of one grid
        width); returns the losses. Makes the decoder meaningful; equivariance is not trained."""
        if steps <= 0:
            return []
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        losses = []
        self.train()
        for _ in range(steps):
            idx = torch.randint(0, images.shape[0], (min(8, images.shape[0]),), generator=generator)
            x = images[idx]
            loss = F.mse_loss(self.decode(self.encode(x)), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.eval()
        return losses


def build_baseline(height: int, patch: int, token_dim: int = 32, hidden: int = 64, seed: int = 0) -> PatchGridTokenizer:
    """A freshly initialised baseline with a fixed seed (reproducible without global seeding)."""
    g = torch.Generator().manual_seed(seed)
    model = PatchGridTokenizer(BaselineConfig(height=height, patch=patch, token_dim=token_dim, hidden=hidden))
    with torch.no_grad():
        for p in model.parameters():  # re-draw the default init from our own generator
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
            else:
                p.zero_()
    return model.eval()
