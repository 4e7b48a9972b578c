"""Tokenizer training losses: reconstruction, latent penalty, perceptual, hinge GAN, feature alignment."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, l1: float = 1.0, l2: float = 1.0) -> torch.Tensor:
    d = recon - target
    return l1 * d.abs().mean() + l2 * d.pow(2).mean()


def latent_penalty(mean: torch.Tensor, logvar: torch.Tensor, learned_logvar: bool) -> torch.Tensor:
    """Per-element KL to N(0,1). Without a learned logvar (official scheme) only the mean term
    0.5*mu^2 remains: it keeps the latent scale bounded against the training noise."""
    if learned_logvar:
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return 0.5 * mean.pow(2).mean()


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)


class PerceptualLoss(nn.Module):
    """LPIPS-like distance on a frozen pretrained network's feature maps (unit-normalised
    channels, squared difference, averaged). Images are downscaled to `size` px tall first:
    most of the perceptual signal survives and the cost on a CPU drops ~4x per halving."""

    def __init__(self, net: nn.Module, size: int | None = 64, maps: int = 3):
        super().__init__()
        self.net, self.size, self.maps = net, size, maps

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and x.shape[-2] > self.size:
            f = self.size / x.shape[-2]
            x = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ft = self.net.feature_maps(self._prep(target))[: self.maps]
        fr = self.net.feature_maps(self._prep(recon))[: self.maps]
        return sum((_unit(a) - _unit(b)).pow(2).sum(1).mean() for a, b in zip(fr, ft)) / len(fr)


class PatchDiscriminator(nn.Module):
    """Small PatchGAN: three stride-2 4x4 convs and a 3x3 logit map (one logit per ~30 px patch)."""

    def __init__(self, ch: int = 32):
        super().__init__()
        layers, c = [], 3
        for i, co in enumerate((ch, ch * 2, ch * 4)):
            layers += [nn.Conv2d(c, co, 4, 2, 1), nn.GroupNorm(8, co) if i else nn.Identity(), nn.LeakyReLU(0.2)]
            c = co
        layers.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


class FeatureAligner(nn.Module):
    """Aligns decoder features (B,C,h,w) with a pretrained network's map: a 1x1 projection, then
    1 - cosine similarity per position (the target map is resized to the decoder's grid)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cin, 1), nn.GELU(), nn.Conv2d(cin, cout, 1))

    def forward(self, dec_feat: torch.Tensor, target_feat: torch.Tensor) -> torch.Tensor:
        target = F.interpolate(target_feat, size=dec_feat.shape[-2:], mode="bilinear", align_corners=False)
        return (1 - F.cosine_similarity(self.proj(dec_feat), target.detach(), dim=1)).mean()
