"""Column tokenizer: one token per full-height vertical strip of the image.

Two architectures share one interface (`ColumnTokenizer`) and one top-level parameter layout
(`encoder.*`, `decoder.*`, `quant_layer.*`, `post_quant_layer.*`):

- "ldm": the paper's LDM-style conv stack (GroupNorm, reflect padding, 2D self-attention), in the
  official release's exact parameter names, so release checkpoints load without renaming.
- "fast": a CPU-first design for small images: pixel-unshuffle stem, depthwise + pointwise
  blocks with per-pixel LayerNorm, no attention, zero padding. Every op is local, so the decoder
  has a bounded horizontal receptive field (`decode_context`), and shifting an image by whole
  columns shifts its interior tokens exactly.

Both: 2D encoder -> columnize (B,C,h,w)->(B,w,C*h) -> Conv1d -> quant_layer (Conv1d) -> token
means (B, N, token_dim); decode inverts that (post_quant_layer, Conv1d, rasterize, 2D decoder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UsageError


@dataclass
class TokenizerConfig:
    arch: str = "ldm"                 # "ldm" (official layout) | "fast" (CPU design)
    height: int = 256                 # trained image height in px; a token covers the full height
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128                     # base channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)   # ldm only: heights (px) with 2D self-attention
    len_down_scale: int = 4           # how many of the downsamplings also halve the width
    z_channels: int = 256             # channels per row of the lowest-resolution map
    token_dim: int = 256              # the official `embed_dim`
    double_enc: bool = False          # ldm only (official option): encoder emits 2*z_channels
    dropout: float = 0.0
    noise_std: float = 2.5            # latent noise scale in training (official `std`)
    learned_logvar: bool = False      # quant_layer also predicts a per-element logvar (VAE style)
    stem: int = 4                     # fast only: pixel-unshuffle factor of the stem
    kernel: int = 5                   # fast only: depthwise kernel size
    mlp_ratio: int = 2                # fast only: pointwise expansion in each block
    tail_ch: int = 16                 # fast only: channels of the half-resolution output stage

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def width_downs(self) -> int:
        return min(self.len_down_scale, self.num_levels - 1)

    @property
    def column_width(self) -> int:
        base = self.stem if self.arch == "fast" else 1
        return base * 2 ** self.width_downs

    @property
    def low_height(self) -> int:
        """Rows of the lowest-resolution map (the column feature is z_channels * low_height)."""
        base = self.stem if self.arch == "fast" else 1
        return self.height // (base * 2 ** (self.num_levels - 1))

    @property
    def post_channels(self) -> int:
        return self.z_channels * self.low_height

    def validate(self) -> None:
        if self.arch not in ("ldm", "fast"):
            raise UsageError(f"unknown tokenizer arch {self.arch!r}: use 'ldm' or 'fast'")
        base = self.stem if self.arch == "fast" else 1
        div = base * 2 ** (self.num_levels - 1)
        if self.height % div or self.height < div:
            raise UsageError(f"tokenizer height {self.height} must be a positive multiple of {div} for this architecture")
        if self.arch == "fast" and (self.stem < 2 or self.stem % 2):
            raise UsageError("fast tokenizer: stem must be an even number >= 2")


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # The paper's tokenizer: 256 px, f=16 both ways, 16 tokens of 256 dims per 256x256 image.
    "paper": TokenizerConfig(),
    # CPU design: 128 px tall, 8-px columns (16 tokens per 128x128), 32-dim tokens.
    "tiny": TokenizerConfig(
        arch="fast", height=128, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(),
        len_down_scale=1, z_channels=32, token_dim=32, noise_std=0.5, stem=4, kernel=5, mlp_ratio=2, tail_ch=16,
    ),
}


# --------------------------------------------------------------------------------------------
# "ldm" architecture (official parameter names)

def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, 1, k // 2, padding_mode="reflect")


def _unshuffle(x: torch.Tensor, hf: int, wf: int) -> torch.Tensor:
    # (B,C,H,W) -> (B, C*hf*wf, H/hf, W/wf); channel order c*hf*wf + i*wf + j (as torch's)
    b, c, h, w = x.shape
    x = x.view(b, c, h // hf, hf, w // wf, wf).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * hf * wf, h // hf, w // wf)


def _shuffle(x: torch.Tensor, hf: int, wf: int) -> torch.Tensor:
    # inverse of _unshuffle
    b, c, h, w = x.shape
    x = x.view(b, c // (hf * wf), hf, wf, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (hf * wf), h * hf, w * wf)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), _conv(cin, cout)
        self.norm2, self.conv2 = _gn(cout), _conv(cout, cout)
        self.dropout = nn.Dropout(dropout)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a 2D map."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)  # (b,1,hw,c)
        return x + self.proj_out(y.transpose(2, 3).reshape(b, c, h, w))


class _ConvHolder(nn.Module):
    # keeps the official key nesting `downsample.conv.conv.*` / `upsample.conv.conv.*`
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv


class DownShuffle(nn.Module):
    """Learned residual + averaged space-to-depth shortcut; halves height (and width if wide)."""

    def __init__(self, c: int, wf: int):
        super().__init__()
        self.wf = wf
        self.conv = _ConvHolder(_conv(c, c // (2 * wf)))

    def forward(self, x):
        res = _unshuffle(self.conv.conv(x), 2, self.wf)
        s = _unshuffle(x, 2, self.wf)
        b, c, h, w = s.shape
        return res + s.view(b, c // (2 * self.wf), 2 * self.wf, h, w).mean(2)


class UpShuffle(nn.Module):
    """Learned depth-to-space residual + nearest-neighbour shortcut."""

    def __init__(self, c: int, wf: int):
        super().__init__()
        self.wf = wf
        self.conv = _ConvHolder(_conv(c, c * 2 * wf))

    def forward(self, x):
        res = _shuffle(self.conv.conv(x), 2, self.wf)
        return res + _shuffle(x.repeat_interleave(2 * self.wf, dim=1), 2, self.wf)


class LDMEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch, n = cfg.ch, cfg.num_levels
        self.conv_in = _conv(cfg.in_channels, ch)
        mult_in = (1,) + tuple(cfg.ch_mult)
        res, self.down = cfg.height, nn.ModuleList()
        for i in range(n):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            cin, cout = ch * mult_in[i], ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks):
                lvl.block.append(ResnetBlock(cin, cout, cfg.dropout))
                cin = cout
                if res in cfg.attn_resolutions:
                    lvl.attn.append(AttnBlock(cin))
            if i != n - 1:
                lvl.downsample = DownShuffle(cin, 2 if i < cfg.len_down_scale else 1)
                res //= 2
            self.down.append(lvl)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)
        self.norm_out = _gn(cin)
        zc = cfg.z_channels * (2 if cfg.double_enc else 1)
        self.conv_out = _conv(cin, zc)
        post = zc * res
        self.encoder1d = nn.Conv1d(post, post, 3, 1, 1, padding_mode="reflect")

    def forward(self, x):  # (B,3,H,W) -> (B, W/f, post)
        h = self.conv_in(x)
        for lvl in self.down:
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.conv_out(F.silu(self.norm_out(h)))
        b, c, hh, w = h.shape
        h = h.reshape(b, c * hh, w)  # columnize: feature index c*h + row
        return self.encoder1d(h).transpose(1, 2)


class LDMDecoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch, n = cfg.ch, cfg.num_levels
        self.z_channels = cfg.z_channels
        cin = ch * cfg.ch_mult[-1]
        res = cfg.height // 2 ** (n - 1)
        self.decoder1d = nn.Conv1d(cfg.post_channels, cfg.post_channels, 3, 1, 1, padding_mode="reflect")
        self.conv_in = _conv(cfg.z_channels, cin)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(cin, cin), AttnBlock(cin), ResnetBlock(cin, cin)
        ups = []
        for i in reversed(range(n)):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            cout = ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                lvl.block.append(ResnetBlock(cin, cout, cfg.dropout))
                cin = cout
                if res in cfg.attn_resolutions:
                    lvl.attn.append(AttnBlock(cin))
            if i != 0:
                lvl.upsample = UpShuffle(cin, 2 if i <= cfg.len_down_scale else 1)
                res *= 2
            ups.insert(0, lvl)
        self.up = nn.ModuleList(ups)
        self.norm_out = _gn(cin)
        self.conv_out = _conv(cin, cfg.out_channels)

    def forward(self, z):  # (B, N, post) -> (B, 3, H, N*f)
        h = self.decoder1d(z.transpose(1, 2))  # (B, post, N)
        b, _, n = h.shape
        h = h.view(b, self.z_channels, -1, n)   # rasterize: (B, z, h, N)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(h))))
        for lvl in reversed(self.up):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------------
# "fast" architecture (CPU design, local ops only)

class PixelNorm(nn.Module):
    """LayerNorm over channels at each pixel (local, unlike GroupNorm's image-wide statistics)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):  # (B,C,H,W)
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


class FastBlock(nn.Module):
    """ConvNeXt-like: depthwise kxk -> PixelNorm -> 1x1 expand -> GELU -> 1x1 -> scaled residual."""

    def __init__(self, c: int, k: int, ratio: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, k, 1, k // 2, groups=c)
        self.norm = PixelNorm(c)
        self.pw1, self.pw2 = nn.Conv2d(c, c * ratio, 1), nn.Conv2d(c * ratio, c, 1)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.1))

    def forward(self, x):
        return x + self.gamma * self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))


class FastEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        s, k, r = cfg.stem, cfg.kernel, cfg.mlp_ratio
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.stem, self.wdowns = s, cfg.width_downs
        self.conv_in = nn.Conv2d(cfg.in_channels * s * s, chans[0], 1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, c in enumerate(chans):
            self.levels.append(nn.Sequential(*[FastBlock(c, k, r) for _ in range(cfg.num_res_blocks)]))
            if i < len(chans) - 1:
                wf = 2 if i < cfg.len_down_scale else 1
                self.downs.append(nn.Conv2d(c * 2 * wf, chans[i + 1], 1))  # after space-to-depth
        self.norm_out = PixelNorm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], cfg.z_channels, 1)
        self.encoder1d = nn.Conv1d(cfg.post_channels, cfg.post_channels, 3, 1, 1)
        self.len_down_scale = cfg.len_down_scale

    def forward(self, x):  # (B,3,H,W) -> (B, W/cw, post)
        h = self.conv_in(_unshuffle(x, self.stem, self.stem))  # (B, ch, H/s, W/s)
        for i, lvl in enumerate(self.levels):
            h = lvl(h)
            if i < len(self.downs):
                h = self.downs[i](_unshuffle(h, 2, 2 if i < self.len_down_scale else 1))
        h = self.conv_out(self.norm_out(h))      # (B, z, h, N)
        b, c, hh, n = h.shape
        return self.encoder1d(h.reshape(b, c * hh, n)).transpose(1, 2)

    def radius_px(self, cfg: TokenizerConfig) -> int:
        """Horizontal receptive-field radius in input pixels, from the 2D part only."""
        rad, scale = 0, cfg.stem
        for i in range(cfg.num_levels):
            rad += cfg.num_res_blocks * (cfg.kernel // 2) * scale
            if i < cfg.len_down_scale and i < cfg.num_levels - 1:
                scale *= 2
        return rad


class FastDecoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        s, k, r = cfg.stem, cfg.kernel, cfg.mlp_ratio
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.stem, self.z_channels, self.len_down_scale = s, cfg.z_channels, cfg.len_down_scale
        self.decoder1d = nn.Conv1d(cfg.post_channels, cfg.post_channels, 3, 1, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, chans[-1], 1)
        self.levels = nn.ModuleList([nn.Sequential(*[FastBlock(c, k, r) for _ in range(cfg.num_res_blocks)]) for c in chans])
        # ups[i] maps level i+1 -> level i (1x1 conv, then depth-to-space)
        self.ups = nn.ModuleList([
            nn.Conv2d(chans[i + 1], chans[i] * 2 * (2 if i < cfg.len_down_scale else 1), 1) for i in range(len(chans) - 1)
        ])
        t = cfg.tail_ch
        self.norm_out = PixelNorm(chans[0])
        self.to_tail = nn.Conv2d(chans[0], t * (s // 2) ** 2, 1)
        self.tail = FastBlock(t, 3, r)
        self.conv_out = nn.Conv2d(t, cfg.out_channels * 4, 1)

    def forward(self, z):  # (B, N, post) -> (B, 3, H, N*cw)
        h = self.decoder1d(z.transpose(1, 2))
        b, _, n = h.shape
        h = self.conv_in(h.view(b, self.z_channels, -1, n))
        for i in reversed(range(len(self.levels))):
            h = self.levels[i](h)
            if i > 0:
                h = _shuffle(self.ups[i - 1](h), 2, 2 if i - 1 < self.len_down_scale else 1)
        h = _shuffle(self.to_tail(F.gelu(self.norm_out(h))), self.stem // 2, self.stem // 2)
        return _shuffle(self.conv_out(self.tail(h)), 2, 2)

    def radius_px(self, cfg: TokenizerConfig) -> int:
        rad, scale = 0, cfg.column_width
        for i in reversed(range(cfg.num_levels)):
            rad += cfg.num_res_blocks * (cfg.kernel // 2) * scale
            if i > 0 and i - 1 < cfg.len_down_scale:
                scale //= 2
        return rad + 1 * 2  # tail depthwise 3x3 at half resolution


# --------------------------------------------------------------------------------------------

class ColumnTokenizer(nn.Module):
    """Images (B,3,H,W) in [-1,1] <-> tokens (B, W/column_width, token_dim)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        config.validate()
        self.config = config
        fast = config.arch == "fast"
        self.encoder = FastEncoder(config) if fast else LDMEncoder(config)
        self.decoder = FastDecoder(config) if fast else LDMDecoder(config)
        pad = dict(padding_mode="zeros") if fast else dict(padding_mode="reflect")
        post_in = config.post_channels * (2 if config.double_enc and not fast else 1)
        qout = config.token_dim * (2 if config.learned_logvar else 1)
        self.quant_layer = nn.Conv1d(post_in, qout, 3, 1, 1, **pad)
        self.post_quant_layer = nn.Conv1d(config.token_dim, config.post_channels, 3, 1, 1, **pad)
        self.column_width = config.column_width
        self.token_dim = config.token_dim
        self.height = config.height
        # reflect padding needs >= 2 columns at the lowest resolution
        self.min_tokens = 1 if fast else 2
        if fast:
            # tokens of context per side: 2 Conv1d (k=3) + the 2D stack's horizontal reach
            self.decode_context = 2 + math.ceil(self.decoder.radius_px(config) / config.column_width)
            self.encode_context = 2 + math.ceil(self.encoder.radius_px(config) / config.column_width)
        else:
            self.decode_context = None  # global attention: every token sees every other
            self.encode_context = None
        self.fingerprint: str | None = None
        # set when the decoder was fine-tuned on a frozen encoder: the fingerprint of the tokenizer
        # whose latent space this one shares (see `latent_fingerprint`)
        self.inherited_latent_fingerprint: str | None = None

    @property
    def latent_fingerprint(self) -> str | None:
        """Identifies the latent space: equal for tokenizers whose encoders are the same, so latent
        files, sampled tokens and generators made with one stay valid with the other."""
        return self.inherited_latent_fingerprint or self.fingerprint

    def encoder_parameters(self):
        """The parameters that define the latents (encoder and quant layer); frozen by decoder fine-tuning."""
        return [*self.encoder.parameters(), *self.quant_layer.parameters()]

    # -- checks --------------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4:
            raise UsageError(f"images must be a (B, 3, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
        b, c, h, w = x.shape
        if c != self.config.in_channels:
            raise UsageError(f"images must have {self.config.in_channels} channels (RGB), got {c}")
        if h != self.height:
            raise UsageError(f"this tokenizer was trained on {self.height}-px-tall images, got height {h}; resize or crop to {self.height}")
        cw = self.column_width
        if w % cw or w // cw < self.min_tokens:
            lo = max(cw * self.min_tokens, (w // cw) * cw)
            raise UsageError(f"image width {w} is not a multiple of the column width {cw} px (at least {cw * self.min_tokens}); try {lo} or {lo + cw}")

    def _check_tokens(self, z: torch.Tensor) -> None:
        if not torch.is_tensor(z) or z.ndim != 3:
            raise UsageError(f"tokens must be a (B, N, {self.token_dim}) tensor, got shape {tuple(getattr(z, 'shape', ()))}")
        if z.shape[2] != self.token_dim:
            raise UsageError(f"tokens have {z.shape[2]} dims but this tokenizer uses {self.token_dim}")
        if z.shape[1] < self.min_tokens:
            raise UsageError(f"need at least {self.min_tokens} tokens to decode, got {z.shape[1]}")

    # -- API -----------------------------------------------------------------------------------
    def encode_distribution(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) -> (mean, logvar), each (B, N, token_dim). Without a learned logvar, the
        logvar is the constant log(noise_std^2): the largest noise the decoder was trained on."""
        self._check_images(images)
        m = self.quant_layer(self.encoder(images).transpose(1, 2)).transpose(1, 2)  # (B,N,C or 2C)
        if self.config.learned_logvar:
            mean, logvar = m.chunk(2, dim=-1)
            return mean, logvar.clamp(-30.0, 20.0)
        return m, torch.full_like(m, 2 * math.log(max(self.config.noise_std, 1e-12)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> posterior means (B, W/column_width, token_dim)."""
        return self.encode_distribution(images)[0]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,N,C) -> (B,3,H,N*column_width): raw decoder output (not clamped)."""
        self._check_tokens(tokens)
        z = self.post_quant_layer(tokens.transpose(1, 2)).transpose(1, 2)
        return self.decoder(z)

    def sample_latent(self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time noisy latent. Learned logvar: reparameterised sample. Otherwise (official
        scheme) each image gets its own noise scale |n|*std/0.8 clipped to std, so the decoder
        learns to handle a range of latent perturbations."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        if self.config.learned_logvar:
            return mean + torch.exp(0.5 * logvar) * eps
        std = self.config.noise_std
        scale = (torch.randn(mean.shape[0], generator=generator, device=mean.device, dtype=mean.dtype) * (std / 0.8)).clamp(-std, std)
        return mean + scale[:, None, None] * eps

    def forward(self, images: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        """Training pass: returns (reconstruction, mean, logvar)."""
        mean, logvar = self.encode_distribution(images)
        z = self.sample_latent(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar

    def decode_chunked(self, tokens: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Decode a long token sequence in windows of `chunk` tokens plus `decode_context` on each
        side; equal to `decode` (bounded receptive field) but with bounded memory."""
        if self.decode_context is None:
            return self.decode(tokens)
        self._check_tokens(tokens)
        n, c, cw = tokens.shape[1], self.decode_context, self.column_width
        outs = []
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            lo, hi = max(0, a - c), min(n, b + c)
            img = self.decode(tokens[:, lo:hi])
            outs.append(img[..., (a - lo) * cw:(b - lo) * cw])
        return torch.cat(outs, dim=-1)


def build_tokenizer(config: TokenizerConfig | str) -> ColumnTokenizer:
    """A fresh (randomly initialised) tokenizer from a config or a preset name."""
    if isinstance(config, str):
        if config not in TOKENIZER_PRESETS:
            raise UsageError(f"unknown tokenizer preset {config!r}; choose one of: {', '.join(TOKENIZER_PRESETS)}")
        import copy

        config = copy.deepcopy(TOKENIZER_PRESETS[config])
    return ColumnTokenizer(config)


def to_pixels(decoded: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) decoder output in ~[-1,1] -> uint8 numpy (B,H,W,3)."""
    x = ((decoded.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
