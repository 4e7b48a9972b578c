"""Sample quality against horizontal position: does a wide image degrade far from its left edge?

Wide images are generated with the streaming pipeline (constant memory: rolling KV cache,
chunked decode), cut into square height x height tiles, and each tile is assigned to a distance
bucket by its left edge. Per bucket we compute the Frechet distance (and KID) between its tiles
and real tiles, in EfficientNet-Lite0 feature space (offline; NOT comparable with published FID).

Fair comparison across buckets: FD is biased upward by small sample counts, and log-spaced
buckets hold very different numbers of tiles. So `fd` uses the same number of tiles in every
bucket (the mean over seeded random subsets of size `equal_n` = the smallest bucket's count), against one fixed real
reference set; `fd_all_tiles` uses every tile of the bucket. `real_floor_fd` is the FD of
`equal_n` held-out real tiles against the same reference: what a perfect generator would score.
KID (unbiased) is given when a bucket has at least `kid_min` tiles.

Real tiles: a folder of images (scaled to the generator's height, aspect kept, cut into squares),
or for the procedural landscapes, fresh wide renders of the same classes (`render_landscape`,
seeds outside the range the datasets use), which exist at any width.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, UsageError
from ..progress import SILENT, Reporter

REAL_SEED_BASE = 0x5EA1_0000  # landscape seeds for real references (datasets use small seeds)


@dataclass
class LongConfig:
    width: int = 4096               # px of every generated image
    num: int = 8                    # generated images
    buckets: int = 6                # distance buckets (fewer when they would be empty)
    spacing: str = "log"            # "log" (1, 2, 4, ... tiles) | "linear"
    class_name: str | None = None   # one class for all images; None = the classes in turn
    cfg: float = 3.0
    cfg_schedule: str = "auto"
    temperature: float = 1.0
    steps: int | None = None        # flow steps per token (None: the generator's default)
    batch: int | None = None        # images sampled together (None: all of one class)
    real_tiles: int = 512           # real reference tiles (at most)
    kid_min: int = 10               # KID only for buckets with at least this many tiles
    fd_subsets: int = 20            # equal-n FD: mean over this many random subsets of a larger bucket
    feature_batch: int = 32
    seed: int = 0
    max_width: int = 262_144        # refuse wider requests up front (time grows linearly: hours to days)


def bucket_edges(n_tiles: int, buckets: int, spacing: str = "log") -> list[tuple[int, int]]:
    """Partition tile indices [0, n_tiles) into at most `buckets` contiguous ranges [a, b).
    log: edges 0, 1, then geometric up to n_tiles (so with square training the first bucket is
    exactly the training width, and later ones double in reach)."""
    if n_tiles < 1 or buckets < 1:
        raise UsageError(f"need at least one tile and one bucket (got {n_tiles} tiles, {buckets} buckets)")
    if spacing == "log":
        inner = np.geomspace(1, n_tiles, buckets) if buckets > 1 else np.array([n_tiles])
        edges = [0] + [int(round(e)) for e in inner]
    elif spacing == "linear":
        edges = [int(round(e)) for e in np.linspace(0, n_tiles, buckets + 1)]
    else:
        raise UsageError(f"unknown bucket spacing {spacing!r}: use log or linear")
    edges = sorted(set(min(max(e, 0), n_tiles) for e in edges) | {0, n_tiles})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ----------------------------------------------------------------------------- real tiles

def real_tiles_from_dir(directory, height: int, column_width: int, limit: int, reporter: Reporter = SILENT) -> list[np.ndarray]:
    from ..metrics import list_images, square_tiles
    from ..pipeline import load_image, prepare_image

    tiles, skipped = [], 0
    for path in list_images(directory):
        if len(tiles) >= limit:
            break
        try:
            img = prepare_image(load_image(path), height, column_width)
        except BadInputError as exc:
            skipped += 1
            reporter.warn(f"skipping {path}: {exc.message}")
            continue
        tiles.extend(t for t in square_tiles(img) if t.shape[1] == height)
    if skipped:
        reporter.warn(f"{skipped} real images could not be used")
    if len(tiles) < 2:
        raise BadInputError(f"{directory} gives {len(tiles)} square {height}x{height} tiles; need at least 2 (images must be at least as wide as tall after scaling)")
    return tiles[:limit]


def real_tiles_from_landscapes(class_names: list[str], height: int, limit: int, seed: int, tiles_per_image: int = 8) -> list[np.ndarray]:
    """Fresh renders (height x tiles_per_image*height) of the classes in turn, cut into squares."""
    from ..data.landscapes import LANDSCAPE_CLASSES, image_seed, render_landscape

    bad = [c for c in class_names if c not in LANDSCAPE_CLASSES]
    if bad:
        raise UsageError(f"--real-landscapes needs landscape classes, but the generator's classes include {', '.join(bad)}",
                         hint="pass --real DIR with real images instead")
    tiles, i = [], 0
    while len(tiles) < limit:
        cls = class_names[i % len(class_names)]
        img = render_landscape(cls, height, tiles_per_image * height, image_seed(REAL_SEED_BASE + seed, cls, i // len(class_names)))
        tiles.extend(img[:, k * height:(k + 1) * height] for k in range(tiles_per_image))
        i += 1
    return tiles[:limit]


# ----------------------------------------------------------------------------- Frechet distance

class FrechetReference:
    """Frechet distance of many small sets against one fixed reference, fast.

    The same quantity as eqcli_core.metrics.frechet_distance, with the reference's matrix square
    root A = S_r^(1/2) computed once. For a set of n < D features X (centred), S = X^T X / (n-1),
    and tr((S_r S)^(1/2)) = sum sqrt(eig(A S A)) = sum sqrt(eig(Y Y^T / (n-1))), Y = X A: an
    n x n eigenproblem instead of two D x D ones (D = 1280)."""

    def __init__(self, features: np.ndarray):
        from ..metrics import _psd_sqrt, feature_statistics

        self.mu, s = feature_statistics(features)
        self.trace = float(np.trace(s))
        self.sqrt = _psd_sqrt(s)

    def __call__(self, features: np.ndarray) -> float:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise BadInputError(f"need at least 2 feature vectors for a Frechet distance, got shape {f.shape}")
        n = f.shape[0]
        mu = f.mean(0)
        y = (f - mu) @ self.sqrt                                    # (n, D)
        gram = (y @ y.T if n <= y.shape[1] else y.T @ y) / (n - 1)
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0, None)).sum()
        tr_s = float(((f - mu) ** 2).sum() / (n - 1))
        d = mu - self.mu
        return float(max(d @ d + tr_s + self.trace - 2 * tr_covmean, 0.0))


# ----------------------------------------------------------------------------- generation

def generated_tile_features(gen, tok, cfg: LongConfig, extractor, device, reporter: Reporter = SILENT):
    """Stream `cfg.num` wide images, tile by tile, into features. -> (features (M, D), tile index (M,),
    class per image, seconds of sampling+decoding)."""
    from ..pipeline import SampleConfig, generate_stream

    H = int(tok.height)
    names = list(getattr(gen, "class_names", None) or [str(i) for i in range(gen.config.num_classes)])
    if cfg.class_name is not None:
        if cfg.class_name not in names:
            raise UsageError(f"unknown class {cfg.class_name!r}; this generator has: {', '.join(names)}")
        plan = [(cfg.class_name, cfg.num)]
    else:  # the classes in turn: image i has class i % K
        counts = [len(range(k, cfg.num, len(names))) for k in range(len(names))]
        plan = [(n, c) for n, c in zip(names, counts) if c > 0]
    feats, index, classes = [], [], []
    pending, pending_idx = [], []
    gen_seconds = 0.0

    def flush():
        if pending:
            feats.append(extractor(pending))
            index.extend(pending_idx)
            pending.clear()
            pending_idx.clear()

    for g, (name, count) in enumerate(plan):
        sc = SampleConfig(width=cfg.width, num=count, seed=cfg.seed + 7919 * g, classes=name, cfg=cfg.cfg,
                          cfg_schedule=cfg.cfg_schedule, temperature=cfg.temperature, steps=cfg.steps,
                          batch=cfg.batch, tile_width=H)
        classes.extend([name] * count)
        k = 0
        t0 = time.perf_counter()
        for strip in generate_stream(gen, tok, sc, device=device, reporter=reporter):  # (count*H, H, 3)
            gen_seconds += time.perf_counter() - t0
            if strip.shape[1] == H:  # a narrower last strip (width % H) is not a square tile
                for j in range(count):
                    pending.append(strip[j * H:(j + 1) * H])
                    pending_idx.append(k)
                    if len(pending) >= cfg.feature_batch:
                        flush()
            k += 1
            t0 = time.perf_counter()
    flush()
    return np.concatenate(feats), np.asarray(index), classes, gen_seconds


# ----------------------------------------------------------------------------- entry point

def evaluate_long(generator, tokenizer, cfg: LongConfig, *, real: str | os.PathLike | None = None, real_landscapes: bool = False,
                  device: str | torch.device = "cpu", reporter: Reporter = SILENT) -> dict:
    """Per-bucket Frechet distance / KID of wide generated images against real tiles."""
    from ..io import require_multiple
    from ..metrics import kernel_inception_distance, make_extractor

    if (real is None) == (not real_landscapes):
        raise UsageError("give exactly one real reference: --real DIR or --real-landscapes")
    if cfg.num < 1 or cfg.buckets < 1 or cfg.real_tiles < 4 or cfg.feature_batch < 1:
        raise UsageError("--num and --buckets must be >= 1, --real-tiles >= 4")
    if cfg.width > cfg.max_width:  # streaming keeps memory flat, but time is linear in the width: refuse before loading anything
        raise UsageError(f"--width {cfg.width:,} px is over the --max-width limit of {cfg.max_width:,} px: {cfg.num} image(s) of "
                         f"{cfg.width // cfg.max_width:,}x the limit would take a very long time to generate",
                         hint=f"use a smaller --width, or raise the limit with --max-width {cfg.width} if you mean it")
    device = torch.device(device)
    gen, tok = _load_mixed(generator, tokenizer, device)
    H, cw = int(tok.height), int(tok.column_width)
    require_multiple(cfg.width, cw, "width")
    if cfg.width < H:
        raise UsageError(f"width {cfg.width} is narrower than one square {H}x{H} tile")
    train_px = int(gen.config.train_length) * cw
    n_tiles = cfg.width // H
    spans = bucket_edges(n_tiles, cfg.buckets, cfg.spacing)
    extractor = make_extractor("efficientnet-lite0", None, device)

    t0 = time.perf_counter()
    fake, tile_idx, classes, gen_s = generated_tile_features(gen, tok, cfg, extractor, device, reporter)
    names = sorted(set(classes), key=classes.index)
    if real_landscapes:
        rt = real_tiles_from_landscapes(names, H, cfg.real_tiles, cfg.seed)
        real_desc = f"landscape renders ({', '.join(names)}), {8 * H} px wide"
    else:
        rt = real_tiles_from_dir(real, H, cw, cfg.real_tiles, reporter)
        real_desc = str(real)
    real_feats = np.concatenate([extractor(rt[i:i + cfg.feature_batch]) for i in range(0, len(rt), cfg.feature_batch)])

    counts = [int(((tile_idx >= a) & (tile_idx < b)).sum()) for a, b in spans]
    equal_n = min(counts)
    rng = np.random.default_rng([cfg.seed, 0xB0C])
    # hold out equal_n real tiles for the floor when the reference stays large enough
    perm = rng.permutation(len(real_feats))
    floor = None
    if len(real_feats) >= 2 * equal_n and equal_n >= 2:
        held, ref = real_feats[perm[:equal_n]], real_feats[perm[equal_n:]]
        fd_ref = FrechetReference(ref)
        floor = fd_ref(held)
    else:
        ref = real_feats
        fd_ref = FrechetReference(ref)
    rows = []
    for (a, b), n in zip(spans, counts):
        sel = np.nonzero((tile_idx >= a) & (tile_idx < b))[0]
        f = fake[sel]
        # equal-n FD: average over random subsets (one when the bucket has exactly equal_n tiles)
        reps = 1 if n == equal_n else cfg.fd_subsets
        fds = [fd_ref(f[rng.choice(n, equal_n, replace=False)]) for _ in range(reps)] if equal_n >= 2 else []
        end_px = b * H if b < n_tiles else cfg.width
        row = {
            "start_px": a * H, "end_px": end_px,
            "start_x_train": a * H / train_px, "end_x_train": end_px / train_px,
            "tiles": n,
            "fd": float(np.mean(fds)) if fds else None,
            "fd_subset_std": float(np.std(fds)) if fds else None,
            "fd_all_tiles": fd_ref(f) if n >= 2 else None,
            "kid_mean": None, "kid_std": None,
        }
        if n >= cfg.kid_min:
            row["kid_mean"], row["kid_std"] = kernel_inception_distance(f, ref, subsets=50, subset_size=min(n, len(ref), 1000), seed=cfg.seed)
        rows.append(row)
    return {
        "width": cfg.width, "height": H, "column_width": cw, "train_width_px": train_px,
        "width_x_train": cfg.width / train_px, "images": len(classes), "classes": names,
        "tiles_per_image": n_tiles, "spacing": cfg.spacing, "equal_n": equal_n,
        "real": real_desc, "real_tiles": int(len(real_feats)), "reference_tiles": int(len(ref)),
        "real_floor_fd": floor, "buckets": rows,
        "feature_space": extractor.name, "comparable_with_published_fid": False,
        "note": "Frechet distance / KID in EfficientNet-Lite0 feature space: NOT comparable with published (Inception) FID/KID; "
                "`fd` uses equal_n tiles per bucket so buckets are comparable with each other and with real_floor_fd",
        "cfg": cfg.cfg, "seed": cfg.seed, "sampling_seconds": gen_s, "seconds": time.perf_counter() - t0,
        "columns_per_s": len(classes) * (cfg.width // cw) / max(gen_s, 1e-9),
    }


def _load_mixed(generator, tokenizer, device):
    """Each of generator/tokenizer: a loaded model, a checkpoint path, or None (the bundled one)."""
    from ..generator import load_generator
    from ..pipeline import check_pair
    from ..tokenizer import load_tokenizer

    gen = generator.to(device).eval() if hasattr(generator, "config") else load_generator(generator, device=device)
    tok = tokenizer.to(device).eval() if hasattr(tokenizer, "decode") else load_tokenizer(tokenizer, device=device)
    check_pair(gen, tok)
    return gen, tok


def summary_rows(doc: dict) -> list[list]:
    rows = []
    for i, r in enumerate(doc["buckets"]):
        rows.append([i, r["start_px"], r["end_px"], f"{r['start_x_train']:.3g}-{r['end_x_train']:.3g}x", r["tiles"],
                     r["fd"] if r["fd"] is not None else "-", r["fd_all_tiles"] if r["fd_all_tiles"] is not None else "-",
                     f"{r['kid_mean']:.4g} ± {r['kid_std']:.2g}" if r["kid_mean"] is not None else "-"])
    return rows


def plot_long(doc: dict, path: str | os.PathLike) -> None:
    """FD (equal n) and KID per bucket against distance (in training widths, log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    b = doc["buckets"]
    # geometric bucket centre; the first bucket starts at 0, so use half its end as its lower end
    mids = [math.sqrt((r["start_x_train"] or 0.5 * r["end_x_train"]) * r["end_x_train"]) for r in b]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ax.plot(mids, [r["fd"] if r["fd"] is not None else np.nan for r in b], "-o", label=f"generated (n={doc['equal_n']} tiles/bucket)")
    ax.plot(mids, [r["fd_all_tiles"] if r["fd_all_tiles"] is not None else np.nan for r in b], ":x", color="gray", label="generated (all tiles of bucket)")
    if doc.get("real_floor_fd") is not None:
        ax.axhline(doc["real_floor_fd"], color="k", ls="--", lw=0.8, label="real vs real (same n)")
    ax.set_ylabel("Frechet distance (EfficientNet-Lite0)")
    ax = axes[1]
    ks = [(m, r["kid_mean"], r["kid_std"]) for m, r in zip(mids, b) if r["kid_mean"] is not None]
    if ks:
        ax.errorbar([k[0] for k in ks], [k[1] for k in ks], yerr=[k[2] for k in ks], fmt="-o", color="C2", capsize=3)
    ax.set_ylabel("KID (EfficientNet-Lite0)")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("distance from the left edge (training widths, bucket centre)")
        ax.grid(True, alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Quality vs position: {doc['images']} images x {doc['width']} px ({doc['width_x_train']:.0f}x training width)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
