"""The equivariant column-wise generator (Dong et al. 2025), nanoGPT style.

Sequence: K learned class tokens ("buffer") followed by N image tokens, one per column.
  - image tokens attend causally to the last `window` tokens and themselves (windowed mask), with
    RoPE on q/k (adjacent channel pairs). Translation equivariance comes from the window plus
    RoPE (attention only sees relative offsets), trained with a random global position offset.
  - image tokens cross-attend to the class tokens (query rotated, class keys not rotated);
  - class tokens never attend: they only pass through each block's MLP.
The output that conditions image token i is taken from slot i-1 (slot "-1" is the last class
token), so token 0 depends on the class alone. A small flow-matching head (flow_head.py) turns
each conditioning vector into a token.

Streaming: `class_context` + `new_caches` + `forward_step` run one column at a time with a rolling
key/value cache of `window` positions per layer (see sampling.py); `forward_transformer` runs a
whole sequence at once (training, the reference sampler).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .errors import CheckpointError, UsageError
from .flow_head import FlowHead
from .io import config_from_dict, load_checkpoint, save_checkpoint

BUNDLED_GENERATOR = Path(__file__).parent / "bundled" / "generator.pt"


@dataclass
class GeneratorConfig:
    token_dim: int = 32            # C: tokenizer latent channels per column
    width: int = 256               # D
    depth: int = 4                 # transformer blocks
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    class_tokens: int = 4          # K: learned class-token buffer
    window: int | None = 3         # query j sees tokens j-window..j; None = full causal (baseline)
    position: str = "rope"         # "rope" | "learned" (baseline: absolute positions, <= max_length)
    max_length: int = 64           # only for position="learned"
    train_length: int = 16         # columns per training crop
    shift_range: int = 16          # RoPE offset drawn from [0, shift_range) per training step
    head_width: int = 256
    head_depth: int = 3
    sampling_steps: int = 25       # Euler steps of the flow head
    diffusion_batch_mul: int = 4   # head copies per token in training (MAR trick)
    label_drop: float = 0.1        # prob. of the null class in training (for guidance)
    latent_scale: float = 1.0      # generator works on tokenizer latents * latent_scale
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    grad_checkpointing: bool = False
    norm_eps: float = 1e-6         # block/in/out norms; the cross-attention norms use 1e-5 (official)
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.width % self.num_heads:
            raise UsageError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.position not in ("rope", "learned"):
            raise UsageError(f"position must be 'rope' or 'learned', not {self.position!r}")
        if self.position == "rope" and (self.width // self.num_heads) % 2:
            raise UsageError("RoPE needs an even head dimension (width / num_heads)")
        if self.window is not None and self.window < 0:
            raise UsageError(f"window must be >= 0 or None, not {self.window}")
        for name in ("token_dim", "depth", "num_classes", "class_tokens", "train_length", "head_width", "head_depth", "sampling_steps", "diffusion_batch_mul"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, not {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


_PAPER = dict(class_tokens=16, window=3, token_dim=16, train_length=16, shift_range=16, sampling_steps=100,
              label_drop=0.1, attn_dropout=0.1, proj_dropout=0.1, diffusion_batch_mul=4)
GENERATOR_PRESETS: dict[str, dict] = {
    "paper-S": dict(_PAPER, depth=16, width=512, num_heads=8, head_width=960, head_depth=12),
    "paper-B": dict(_PAPER, depth=24, width=768, num_heads=12, head_width=1024, head_depth=12),
    "paper-L": dict(_PAPER, depth=32, width=1024, num_heads=16, head_width=1280, head_depth=12),
    "paper-H": dict(_PAPER, depth=40, width=1280, num_heads=16, head_width=1536, head_depth=12),
    # CPU-sized: 4.2M transformer + 1.3M head parameters (token_dim 32); trains on 2 cores in ~30 min.
    "tiny": dict(depth=4, width=256, num_heads=4, head_width=256, head_depth=3, class_tokens=4, window=3,
                 token_dim=32, train_length=16, shift_range=16, sampling_steps=25, diffusion_batch_mul=4,
                 label_drop=0.1, attn_dropout=0.0, proj_dropout=0.0),
}


def make_config(preset: str = "tiny", **overrides) -> GeneratorConfig:
    """A preset's config with some fields replaced (e.g. token_dim, num_classes, train_length)."""
    if preset not in GENERATOR_PRESETS:
        raise UsageError(f"unknown generator preset {preset!r}; choose one of {', '.join(GENERATOR_PRESETS)}")
    names = {f.name for f in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown generator setting(s): {', '.join(unknown)}")
    return GeneratorConfig(**{**GENERATOR_PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------- RoPE

def rope_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0):
    """positions (T,) int -> cos, sin (T, head_dim/2) float32. Angles in float64 so that positions
    far out in an endless image keep full precision."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.double()[:, None] * freqs.double()[None]
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2i], x[2i+1]) of x (B,H,T,hd) by the angles (T, hd/2)."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return out.type_as(x)


def window_mask(n: int, window: int | None, device=None) -> torch.Tensor:
    """(n, n) bool, True = may attend: key j for query i iff i - window <= j <= i."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j >= i - window
    return allowed


# ----------------------------------------------------------------------------- blocks

class KVCache:
    """Rolling keys/values of one layer: keeps the last `window` positions (all if None)."""

    def __init__(self, window: int | None):
        self.window = window
        self.k: torch.Tensor | None = None  # (B,H,L,hd), rotated keys
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Append this step's k, v (B,H,T,hd); return the keys/values the new queries attend to."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        # the next query (position p+1) needs positions p+1-window..p: the last `window` ones
        start = 0 if self.window is None else max(0, k.shape[2] - self.window)
        self.k, self.v = k[:, :, start:], v[:, :, start:]
        return k, v

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class SelfAttention(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.h, self.attn_dropout = cfg.num_heads, cfg.attn_dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.drop = nn.Dropout(cfg.proj_dropout)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)  # (B,H,T,hd) each
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class CrossAttention(nn.Module):
    """Image tokens (queries, rotated) attend to the class tokens (keys/values, not rotated)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.h, self.attn_dropout = cfg.num_heads, cfg.attn_dropout
        self.q = nn.Linear(cfg.width, cfg.width)
        self.k = nn.Linear(cfg.width, cfg.width)
        self.v = nn.Linear(cfg.width, cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.drop = nn.Dropout(cfg.proj_dropout)

    def kv(self, cond):  # (B,K,D) -> k, v (B,H,K,hd)
        B, K, D = cond.shape
        return (self.k(cond).view(B, K, self.h, D // self.h).transpose(1, 2),
                self.v(cond).view(B, K, self.h, D // self.h).transpose(1, 2))

    def forward(self, x, cos, sin, k, v):
        B, T, D = x.shape
        q = self.q(x).view(B, T, self.h, D // self.h).transpose(1, 2)
        if cos is not None:
            q = apply_rope(q, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class MLP(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.width, hidden)
        self.fc2 = nn.Linear(hidden, cfg.width)
        self.drop = nn.Dropout(cfg.proj_dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.cross_norm = nn.LayerNorm(cfg.width)       # default eps 1e-5, as in the release
        self.cond_norm = nn.LayerNorm(cfg.width)        # idem
        self.cross = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def class_kv(self, cls):  # (B,K,D) -> cross-attention k, v for this layer
        return self.cross.kv(self.cond_norm(cls))

    def class_update(self, cls):  # class tokens only go through the MLP
        return cls + self.mlp(self.norm2(cls))

    def forward(self, x, class_kv, cos, sin, mask=None, cache: KVCache | None = None):
        x = x + self.attn(self.norm1(x), cos, sin, mask, cache)
        x = x + self.cross(self.cross_norm(x), cos, sin, *class_kv)
        return x + self.mlp(self.norm2(x))

    def forward_both(self, cls, x, cos, sin, mask):  # one unit for gradient checkpointing
        return self.class_update(cls), self(x, self.class_kv(cls), cos, sin, mask)


@dataclass
class ClassContext:
    """Per-layer cross-attention keys/values of the class tokens, and the output for token 0."""
    kv: list = field(default_factory=list)  # [(k, v) (B,H,K,hd)] per layer
    z_first: torch.Tensor | None = None     # (B,D): conditions column 0


# ----------------------------------------------------------------------------- model

class EquivariantGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = cfg = config
        self.class_names: list[str] = [str(i) for i in range(cfg.num_classes)]
        self.class_emb = nn.Embedding(cfg.num_classes, cfg.width)
        self.null_class = nn.Parameter(torch.zeros(1, cfg.width))         # guidance / label dropout
        self.class_pos = nn.Parameter(torch.zeros(1, cfg.class_tokens, cfg.width))
        self.token_proj = nn.Linear(cfg.token_dim, cfg.width)
        if cfg.position == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_length, cfg.width))
        self.in_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.out_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head = FlowHead(cfg.token_dim, cfg.width, cfg.head_width, cfg.head_depth, cfg.grad_checkpointing)
        self._init_weights()

    def _init_weights(self):
        for name, m in self.named_modules():
            if name.startswith("head"):
                continue  # the head initialises itself
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.class_emb.weight, std=0.02)
        nn.init.normal_(self.null_class, std=0.02)
        nn.init.normal_(self.class_pos, std=0.02)
        if self.config.position == "learned":
            nn.init.normal_(self.pos_embed, std=0.02)

    @property
    def latent_scale(self) -> float:
        return self.config.latent_scale

    @property
    def device(self) -> torch.device:
        return self.null_class.device

    # -- pieces shared by the whole-sequence and the streaming paths
    def class_embedding(self, class_ids: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B,) long (negative = null class) or None (all null) -> (B,D)."""
        if class_ids is None:
            return self.null_class.expand(batch, -1)
        class_ids = torch.as_tensor(class_ids, device=self.device).long().view(-1)
        if class_ids.numel() != batch:
            raise UsageError(f"got {class_ids.numel()} class labels for a batch of {batch}")
        if batch and int(class_ids.max()) >= self.config.num_classes:
            raise UsageError(f"class id {int(class_ids.max())} is out of range: this generator has {self.config.num_classes} classes (0..{self.config.num_classes - 1})")
        emb = self.class_emb(class_ids.clamp(min=0))
        return torch.where((class_ids < 0)[:, None], self.null_class.expand(batch, -1), emb)

    def _class_tokens(self, class_ids, batch):  # (B,K,D), normalised like image tokens
        return self.in_norm(self.class_embedding(class_ids, batch)[:, None] + self.class_pos)

    def _embed_tokens(self, tokens_scaled, offset: int):  # (B,T,C) -> (B,T,D)
        x = self.token_proj(tokens_scaled)
        if self.config.position == "learned":
            T = x.shape[1]
            if offset < 0 or offset + T > self.config.max_length:
                raise UsageError(f"this generator uses learned absolute positions and supports at most {self.config.max_length} columns; {offset + T} requested",
                                 hint="RoPE generators (position='rope') have no length limit")
            x = x + self.pos_embed[:, offset:offset + T]
        return self.in_norm(x)

    def _rope(self, start: int, length: int):
        if self.config.position != "rope":
            return None, None
        pos = torch.arange(start, start + length, device=self.device)
        return rope_tables(pos, self.config.head_dim, self.config.rope_base)

    # -- whole sequence
    def forward_transformer(self, tokens_scaled: torch.Tensor, class_ids: torch.Tensor | None, *, position_offset: int = 0) -> torch.Tensor:
        """tokens_scaled (B,N,C) (already * latent_scale) -> z (B,N,D); z[:, i] conditions token i
        (it has seen the class and tokens < i only)."""
        if tokens_scaled.ndim != 3:
            raise UsageError(f"tokens must have shape (batch, columns, {self.config.token_dim}), not {tuple(tokens_scaled.shape)}")
        B, N, C = tokens_scaled.shape
        if C != self.config.token_dim:
            raise UsageError(f"tokens have {C} channels but this generator expects {self.config.token_dim}")
        cls = self._class_tokens(class_ids, B)                    # (B,K,D)
        x = self._embed_tokens(tokens_scaled, position_offset)    # (B,N,D)
        cos, sin = self._rope(position_offset, N)
        mask = window_mask(N, self.config.window, x.device)
        for block in self.blocks:
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                cls, x = checkpoint(block.forward_both, cls, x, cos, sin, mask, use_reentrant=False)
            else:
                cls, x = block.forward_both(cls, x, cos, sin, mask)
        out = torch.cat([cls[:, -1:], x[:, :-1]], dim=1)          # slot i-1 conditions token i
        return self.out_norm(out)

    # -- streaming, one column at a time
    def class_context(self, class_ids: torch.Tensor | None, batch: int) -> ClassContext:
        """Run the class tokens through all blocks once; cross-attention K/V for every layer."""
        cls = self._class_tokens(class_ids, batch)
        ctx = ClassContext()
        for block in self.blocks:
            ctx.kv.append(block.class_kv(cls))
            cls = block.class_update(cls)
        ctx.z_first = self.out_norm(cls[:, -1])
        return ctx

    def new_caches(self) -> list[KVCache]:
        return [KVCache(self.config.window) for _ in self.blocks]

    def forward_step(self, token_scaled: torch.Tensor, position: int, ctx: ClassContext, caches: list[KVCache]) -> torch.Tensor:
        """Feed the token at `position` (B,C); returns z (B,D) conditioning token position+1.
        Positions must be fed in order 0, 1, 2, ... with the same caches."""
        x = self._embed_tokens(token_scaled[:, None], position)   # (B,1,D)
        cos, sin = self._rope(position, 1)
        for block, kv, cache in zip(self.blocks, ctx.kv, caches):
            x = block(x, kv, cos, sin, None, cache)               # cache holds only in-window keys
        return self.out_norm(x[:, 0])

    # -- training
    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, *, loss_mask: torch.Tensor | None = None) -> dict:
        """Flow-matching loss on tokens (B,N,C) in the tokenizer's latent space (unscaled).

        Train mode: labels replaced by the null class with prob. label_drop, one random RoPE offset
        in [0, shift_range) per call (global torch RNG). loss_mask (N,) or (B,N) bool limits which
        positions are trained; per_position (N,) is the unmasked batch mean per position."""
        cfg = self.config
        if tokens.ndim != 3 or tokens.shape[-1] != cfg.token_dim:
            raise UsageError(f"tokens must have shape (batch, columns, {cfg.token_dim}), not {tuple(tokens.shape)}")
        x = tokens * cfg.latent_scale
        B, N, C = x.shape
        ids = torch.as_tensor(labels, device=x.device).long().view(-1)
        if self.training and cfg.label_drop > 0:
            drop = torch.rand(B, device=x.device) < cfg.label_drop
            ids = torch.where(drop, torch.full_like(ids, -1), ids)
        offset = 0
        if self.training and cfg.position == "rope" and cfg.shift_range > 1:
            offset = int(torch.randint(0, cfg.shift_range, (1,)))
        z = self.forward_transformer(x, ids, position_offset=offset)     # (B,N,D)
        m = cfg.diffusion_batch_mul
        per = self.head.loss(x.reshape(B * N, C).repeat(m, 1), z.reshape(B * N, -1).repeat(m, 1))
        per = per.view(m, B, N).mean(0)                                   # (B,N)
        if loss_mask is not None:
            mask = torch.as_tensor(loss_mask, device=x.device).bool()
            if mask.shape not in ((N,), (B, N)):
                raise UsageError(f"loss_mask must have shape ({N},) or ({B}, {N}), not {tuple(mask.shape)}")
            w = mask.expand(B, N).float()
            loss = (per * w).sum() / w.sum().clamp_min(1.0)
        else:
            loss = per.mean()
        return {"loss": loss, "per_position": per.detach().mean(0)}

    def num_params(self) -> dict:
        head = sum(p.numel() for p in self.head.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"transformer": total - head, "head": head, "total": total}


# ----------------------------------------------------------------------------- files

def save_generator(model: EquivariantGenerator, path: str | os.PathLike, *, class_names: list[str], meta: dict | None = None) -> None:
    """Save weights + config + class names as an eqimg "generator" checkpoint (atomic)."""
    class_names = [str(c) for c in class_names]
    if len(class_names) != model.config.num_classes:
        raise UsageError(f"{len(class_names)} class names given for a generator with {model.config.num_classes} classes")
    payload = {
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "class_names": class_names,
        "meta": dict(meta or {}),
    }
    save_checkpoint(payload, path, kind="generator")


_WEIGHT_KEYS = ("ema_state_dict", "ema", "model_ema", "state_dict", "model")


def load_generator(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> EquivariantGenerator:
    """Load a "generator" checkpoint, or the EMA weights of a "generator-train-state" one.
    path None -> the bundled generator (eqcli_core/bundled/generator.pt) if present."""
    if path is None:
        if not BUNDLED_GENERATOR.exists():
            raise CheckpointError("no generator checkpoint given and no bundled generator is installed",
                                  hint="pass a generator file (train one with `eqimg train`, or convert the official release with `eqimg convert official`)")
        path = BUNDLED_GENERATOR
    doc = load_checkpoint(path, kind=("generator", "generator-train-state"))
    cfg_dict = doc.get("generator_config") or doc.get("config")
    if isinstance(cfg_dict, dict) and isinstance(cfg_dict.get("generator"), dict):
        cfg_dict = cfg_dict["generator"]
    if not isinstance(cfg_dict, dict):
        raise CheckpointError(f"{path} has no generator config")
    keys = _WEIGHT_KEYS if doc.get("kind") == "generator-train-state" else ("state_dict",)
    state = next((doc[k] for k in keys if isinstance(doc.get(k), dict) and doc[k]), None)
    if state is None:
        raise CheckpointError(f"{path} holds no generator weights (looked for {', '.join(keys)})")
    try:
        config = config_from_dict(GeneratorConfig, cfg_dict)
    except (TypeError, UsageError) as exc:
        raise CheckpointError(f"{path} has an invalid generator config: {exc}") from exc
    model = EquivariantGenerator(config)
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config: {str(exc).splitlines()[0][:300]}") from exc
    names = doc.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == config.num_classes:
        model.class_names = [str(n) for n in names]
    model.meta = dict(doc.get("meta") or {})
    return model.to(device).eval()
