"""Helpers for the latent-file tests: a tiny image folder and a tiny (fake) tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from eqcli_core.io import state_dict_hash

HEIGHT, CW = 8, 4
# (class, name, width px at height 8); widths differ so batching by width and offsets are exercised
IMAGES = [("forest", "a.png", 16), ("forest", "b.png", 24), ("forest", "c.png", 16), ("forest", "d.png", 8),
          ("lake", "e.png", 32), ("lake", "f.png", 24), ("lake", "g.png", 16), ("lake", "h.png", 40)]


def make_folder(root: Path, images=IMAGES, broken: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for cls, name, w in images:
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (HEIGHT * 2, w * 2, 3), dtype=np.uint8)).save(d / name)
    if broken:  # an undecodable file in the last class folder
        (root / images[-1][0] / "zz_broken.png").write_bytes(b"not a png")
    return root


@dataclass
class FakeConfig:
    column_width: int = CW
    height: int = HEIGHT
    token_dim: int = 6
    seed: int = 0


class FakeTokenizer(nn.Module):
    """Columns -> tokens with a left-looking Conv1d: deliberately not mirror-equivariant."""

    def __init__(self, config: FakeConfig = FakeConfig()):
        super().__init__()
        self.config = config
        self.column_width, self.height, self.token_dim = config.column_width, config.height, config.token_dim
        g = torch.Generator().manual_seed(config.seed)
        self.proj = nn.Linear(3 * config.height * config.column_width, config.token_dim)
        self.mix = nn.Conv1d(config.token_dim, config.token_dim, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.fingerprint = state_dict_hash(self.state_dict())

    def encode(self, x):  # (B,3,H,W) -> (B, W/cw, C)
        B, _, H, W = x.shape
        cols = x.reshape(B, 3, H, W // self.column_width, self.column_width).permute(0, 3, 1, 2, 4).reshape(B, W // self.column_width, -1)
        z = self.proj(cols).transpose(1, 2)  # (B, C, N)
        return (z + self.mix(nn.functional.pad(z, (1, 0)))).transpose(1, 2)


def real_tiny_tokenizer():
    """The project's tiny tokenizer preset when available (random weights), else None."""
    try:
        from eqcli_core.tokenizer import TOKENIZER_PRESETS, build_tokenizer
    except ImportError:
        return None
    return build_tokenizer(TOKENIZER_PRESETS["tiny"]).eval()
