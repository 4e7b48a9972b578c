"""Helpers for the latent-file tests: a tiny image folder, a tiny tokenizer, a loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from eqcli_core.errors import BadInputError
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


def fallback_scan(root):
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples, skipped = [], []
    for y, c in enumerate(classes):
        for p in sorted((root / c).iterdir()):
            samples.append((str(p), y))
    return samples, classes, skipped


def fallback_load(path, height, column_width, max_width=None):
    try:
        im = Image.open(path).convert("RGB")
    except Exception as exc:
        raise BadInputError(f"cannot decode {path}: {exc}") from exc
    w = max(column_width, round(im.width * height / im.height / column_width) * column_width)
    arr = np.asarray(im.resize((w, height), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def scan_and_load():
    """The project's ImageFolder reader when it exists, else the fallbacks above."""
    try:
        from eqcli_core.data.images import load_for_tokenize, scan_image_folder
        return scan_image_folder, load_for_tokenize
    except ImportError:
        return fallback_scan, fallback_load


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
