"""Held-out loss per token position (the paper's Fig. 3, left), at and beyond the training length.

An equivariant generator (windowed attention + RoPE) should have a flat per-position loss: every
position sees the same kind of context. A raster/absolute-position model does not. Running the
same measurement on sequences 2x..8x longer than the training length shows whether the loss holds
where the model extrapolates (positions it never saw in training).

Variance control, so positions are comparable:
  - the flow time t is not random: each token is scored at the same `t_draws` midpoint-rule
    values t_k = (k + 0.5) / t_draws (a quadrature of the same integral over t ~ U(0, 1));
  - the noise comes from a torch.Generator seeded per (seed, length, batch), independent of the
    global RNG; the model runs in eval mode (no label dropout, RoPE offset 0).

Long sequences come from held-out images (LatentDataset split "val"). Images at least L columns
wide give a crop at a seeded random start ("natural"). Narrower ones are, with fill="mirror",
extended by reflection: tokens of the image, then of its stored mirror image (encoded from the
flipped pixels, so the pixels are continuous at the seam), then the image again, ...; the report
says how many sequences of each kind were used. fill="require" uses wide-enough images only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, LatentFileError, UsageError
from ..progress import SILENT, Reporter


@dataclass
class PositionsConfig:
    lengths: tuple[int, ...] = (1, 2, 4, 8)  # sequence lengths as multiples of the training length
    num: int = 32             # sequences per length
    t_draws: int = 8          # flow times per token (midpoint rule on [0, 1])
    batch: int = 8            # sequences per forward pass
    seed: int = 0
    fill: str = "mirror"      # narrow images: "mirror" (reflect) | "require" (skip them)
    val_fraction: float = 0.05  # must match training to hold the same images out
    edge: int = 2             # "interior" numbers leave out tokens this close to an image edge (or mirror seam)


# ----------------------------------------------------------------------------- the measurement

def t_grid(draws: int, device=None) -> torch.Tensor:
    """(draws,) midpoint-rule flow times in (0, 1)."""
    return (torch.arange(draws, device=device, dtype=torch.float32) + 0.5) / draws


def per_position_loss(model, tokens: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      *, position_offset: int = 0) -> torch.Tensor:
    """Flow-matching loss of every token, differentiable: (B,N) averaged over the D draws.

    tokens (B,N,C) unscaled latents; noise (D,B,N,C); t (D,B,N) (or broadcastable). Same formula
    as model.loss / FlowHead.loss: x_t = t*noise + (1-t)*x0, target noise - x0, mean over C."""
    x = tokens * model.latent_scale
    B, N, C = x.shape
    D = noise.shape[0]
    z = model.forward_transformer(x, labels, position_offset=position_offset)      # (B,N,W)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(D, B, N)
    x0 = x.unsqueeze(0).expand(D, B, N, C)
    xt = t[..., None] * noise + (1 - t[..., None]) * x0
    v = model.head(xt.reshape(-1, C), t.reshape(-1), z.unsqueeze(0).expand(D, B, N, z.shape[-1]).reshape(D * B * N, -1))
    per = ((noise - x0) - v.view(D, B, N, C)).pow(2).mean(-1)                   # (D,B,N)
    return per.mean(0)


def noise_seed(*xs: int) -> int:
    """A 63-bit seed from integers (FNV-style mixing), stable across runs and platforms."""
    h = 0xCBF29CE484222325
    for x in xs:
        h = ((h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def fixed_noise(shape: tuple, seed: int, device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    return torch.randn(shape, generator=g).to(device)  # drawn on CPU: identical on every device


# ----------------------------------------------------------------------------- data

def build_sequences(ds, length: int, num: int, *, fill: str = "mirror", seed: int = 0, return_columns: bool = False):
    """`num` token sequences of `length` columns from the split's images (cycled).

    -> tokens (n, length, C), labels (n,), kinds list ("natural" | "mirror-tiled"); with
    `return_columns` also the distance in columns of every token from its source image's nearest
    edge (n, length) (mirror seams are image edges too). Deterministic."""
    if fill not in ("mirror", "require"):
        raise UsageError(f"fill must be 'mirror' or 'require', not {fill!r}")
    rng = np.random.default_rng([int(seed), int(length), 0x905])
    order = rng.permutation(ds.num_images)
    seqs, labels, kinds, dists = [], [], [], []
    for i in order:
        if len(seqs) == num:
            break
        w = ds.image_width(int(i))
        if w >= length:
            start = int(rng.integers(0, w - length + 1))
            seqs.append(ds.image_tokens(int(i))[start:start + length])
            cols = torch.arange(start, start + length)
            kinds.append("natural")
        elif fill == "mirror":
            parts, n, flip = [], 0, False
            while n < length:  # image, mirror image, image, ... (pixels continuous at each seam)
                parts.append(ds.image_tokens(int(i), mirrored=flip))
                n += w
                flip = not flip
            seqs.append(torch.cat(parts)[:length])
            cols = torch.arange(length) % w
            kinds.append("mirror-tiled")
        else:
            continue
        dists.append(torch.minimum(cols, w - 1 - cols))
        labels.append(ds.image_label(int(i)))
    if not seqs:
        return (None, None, [], None) if return_columns else (None, None, [])
    out = (torch.stack(seqs).float(), torch.tensor(labels, dtype=torch.long), kinds)
    return out + (torch.stack(dists),) if return_columns else out


def _summary(per: list, train_length: int, window: int | None, prefix: str = "") -> dict:
    """Mean / CV over positions (None entries = no data there are ignored)."""
    a = np.asarray([np.nan if v is None else v for v in per], dtype=np.float64)
    ctx = (window or 0) + 1  # positions before this lack a full attention window of image tokens
    inside, beyond = a[:train_length], a[train_length:]
    full = a[ctx:] if len(a) > ctx else a

    def cv(x):
        x = x[np.isfinite(x)]
        return float(x.std() / x.mean()) if len(x) > 1 and x.mean() else None

    def mean(x):
        x = x[np.isfinite(x)]
        return float(x.mean()) if len(x) else None

    within, out = mean(inside), mean(beyond)
    return {
        prefix + "mean": mean(a),
        prefix + "cv": cv(a),
        prefix + "cv_full_context": cv(full),
        prefix + "mean_within_train_length": within,
        prefix + "mean_beyond_train_length": out,
        prefix + "beyond_over_within": out / within if out is not None and within else None,
    }


# ----------------------------------------------------------------------------- entry point

@torch.no_grad()
def analyze_positions(generator, latents: str | os.PathLike, cfg: PositionsConfig = PositionsConfig(), *,
                      device: str | torch.device = "cpu", reporter: Reporter = SILENT) -> dict:
    """Per-position held-out loss of `generator` (a path or a loaded model) on `latents`, for
    sequences of each `cfg.lengths` multiple of the training length."""
    from ..generator import load_generator
    from ..latents import LatentDataset

    if not cfg.lengths or any(int(m) < 1 for m in cfg.lengths):
        raise UsageError(f"--lengths must be positive multiples of the training length, got {list(cfg.lengths)}")
    if cfg.num < 1 or cfg.t_draws < 1 or cfg.batch < 1:
        raise UsageError("--num, --t-draws and --batch must be at least 1")
    device = torch.device(device)
    if generator is None or isinstance(generator, (str, os.PathLike)):
        source = str(generator) if generator is not None else "bundled"
        model = load_generator(generator, device=device)
    else:
        source, model = type(generator).__name__, generator.to(device)
    model.eval()
    gc = model.config
    T = int(gc.train_length)
    ds = LatentDataset(latents, T, split="val", val_fraction=cfg.val_fraction, mirror=False, seed=cfg.seed)
    # another tokenizer's tokens give meaningless losses (even when the dims agree): refuse
    meta = getattr(model, "meta", None) or {}
    fp = meta.get("latent_fingerprint") or meta.get("tokenizer_fingerprint")
    if fp and ds.fingerprint and str(fp) != str(ds.fingerprint):
        raise LatentFileError(f"{Path(latents).name} was made by tokenizer {ds.fingerprint}, but the generator was trained on "
                              f"latents of tokenizer {fp}", hint="tokenize the data with the generator's tokenizer")
    if ds.token_dim != gc.token_dim:
        raise BadInputError(f"{Path(latents).name} holds {ds.token_dim}-dim tokens but the generator expects {gc.token_dim}")
    if ds.num_images == 0:
        raise BadInputError(f"{Path(latents).name} has no held-out images (val_fraction {cfg.val_fraction}); use a larger file or --val-fraction")
    warnings = []
    results = []
    multiples = sorted({int(m) for m in cfg.lengths})
    with reporter.task("per-position loss", total=len(multiples), unit="length") as task:
        for mult in multiples:
            L = mult * T
            if gc.position == "learned" and L > gc.max_length:
                results.append({"multiple": mult, "length": L, "skipped": f"learned absolute positions stop at {gc.max_length} columns"})
                task.advance(1)
                continue
            toks, labels, kinds, dist = build_sequences(ds, L, cfg.num, fill=cfg.fill, seed=cfg.seed, return_columns=True)
            if toks is None:
                results.append({"multiple": mult, "length": L, "skipped": f"no held-out image is {L} columns wide (use fill=mirror)"})
                task.advance(1)
                continue
            sums = torch.zeros(L, dtype=torch.float64)
            inner = dist >= cfg.edge                                                # (n,L) away from image edges
            isums = torch.zeros(L, dtype=torch.float64)
            for b0 in range(0, toks.shape[0], cfg.batch):
                x = toks[b0:b0 + cfg.batch].to(device)
                y = labels[b0:b0 + cfg.batch].to(device)
                B = x.shape[0]
                noise = fixed_noise((cfg.t_draws, B, L, x.shape[-1]), noise_seed(cfg.seed, L, b0), device)
                t = t_grid(cfg.t_draws, device)[:, None, None]
                per = per_position_loss(model, x, y, noise, t)                     # (B,L)
                sums += per.double().sum(0).cpu()
                isums += (per.double().cpu() * inner[b0:b0 + cfg.batch]).sum(0)
            per_pos = (sums / toks.shape[0]).tolist()
            counts = inner.sum(0)
            per_inner = [float(v / c) if c else None for v, c in zip(isums, counts)]
            results.append({"multiple": mult, "length": L, "sequences": int(toks.shape[0]),
                            "natural": kinds.count("natural"), "mirror_tiled": kinds.count("mirror-tiled"),
                            "per_position": per_pos, **_summary(per_pos, T, gc.window),
                            "per_position_interior": per_inner, **_summary(per_inner, T, gc.window, "interior_")})
            if toks.shape[0] < cfg.num:
                warnings.append(f"length {L}: only {toks.shape[0]} of {cfg.num} sequences available")
            task.advance(1)
    return {
        "generator": source,
        "latents": str(latents),
        "train_length": T,
        "window": gc.window,
        "position": gc.position,
        "held_out_images": ds.num_images,
        "t_draws": cfg.t_draws,
        "fill": cfg.fill,
        "edge_columns": cfg.edge,
        "seed": cfg.seed,
        "lengths": results,
        "warnings": warnings,
    }


def summary_rows(doc: dict) -> list[list]:
    rows = []
    for r in doc["lengths"]:
        if "skipped" in r:
            rows.append([f"{r['multiple']}x", r["length"], 0, "-", "-", "-", "-", "-", "-", r["skipped"]])
            continue
        d = lambda v: "-" if v is None else v  # noqa: E731
        rows.append([f"{r['multiple']}x", r["length"], r["sequences"], r["mean"], d(r["cv"]), d(r["interior_mean"]),
                     d(r["interior_cv_full_context"]), d(r["interior_mean_within_train_length"]),
                     d(r["interior_mean_beyond_train_length"]), f"{r['natural']} natural, {r['mirror_tiled']} mirror-tiled"])
    return rows


def plot_positions(doc: dict, path: str | os.PathLike) -> None:
    """Loss vs position, one curve per length; dashed line at the training length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for r in sorted(doc["lengths"], key=lambda r: -r["length"]):  # long first, short ones on top
        if "per_position" in r:
            line, = ax.plot(range(r["length"]), [np.nan if v is None else v for v in r["per_position_interior"]], lw=1.2,
                            label=f"{r['multiple']}x ({r['length']} tokens)")
            ax.plot(range(r["length"]), r["per_position"], lw=0.6, ls=":", color=line.get_color(), alpha=0.6)
    ax.axvline(doc["train_length"] - 0.5, color="k", ls="--", lw=0.8, label="training length")
    ax.set_xlabel("token position (column)")
    ax.set_ylabel("held-out flow-matching loss")
    kind = "windowed+RoPE" if doc["position"] == "rope" and doc["window"] is not None else f"window={doc['window']}, {doc['position']} positions"
    ax.set_title(f"Per-position loss ({kind}; {doc['t_draws']} t/token); solid: >= {doc['edge_columns']} cols from image edges, dotted: all", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
