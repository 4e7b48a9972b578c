"""Zero-shot subtask experiment (the paper's Table 1) and the gradient-conflict matrix, at small scale.

Two generators are trained on the same latents, for the same number of steps, with the loss
masked to a subset of positions (e.g. even positions, or the first half):
  (a) equivariant: windowed causal attention + RoPE with a random position shift;
  (b) baseline: full causal attention + learned absolute positions.
Then, on held-out crops with fixed noise and fixed flow times, we compare the loss on trained and
untrained positions. An equivariant model shares one "task" across positions, so the untrained
positions come for free (gap ratio ~1); the baseline must learn each position separately.

Gradient conflict: for position i let g_i be the gradient of its held-out loss w.r.t. the shared
parameters (all but the learned position table, which is per-position by construction). The
matrix C_ij = cos(g_i, g_j), averaged over batches, shows whether positions pull the weights the
same way (C ~ 1: one task) or against each other (C small or negative: competing tasks).

Position 0 sees only the class (no image context), so it is a different task for both models;
it is left out of the trained/untrained means (it is still in `per_position` and the matrix).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError, UsageError
from ..progress import SILENT, Reporter
from .positions import fixed_noise, noise_seed, per_position_loss, t_grid

# Small enough to train for a few minutes on 2 CPU cores; --quick: seconds (tests).
SMALL_MODEL = dict(depth=2, width=64, num_heads=4, head_width=96, head_depth=2, class_tokens=2,
                   diffusion_batch_mul=2, train_length=16, shift_range=16, mlp_ratio=2.0)
QUICK_MODEL = dict(depth=1, width=32, num_heads=2, head_width=32, head_depth=1, class_tokens=2,
                   diffusion_batch_mul=1, train_length=8, shift_range=8, mlp_ratio=2.0)
VARIANTS = {
    "equivariant": dict(window=3, position="rope"),
    "baseline": dict(window=None, position="learned"),  # max_length = train_length (set below)
}


@dataclass
class ConflictConfig:
    mask: str = "even"               # positions with a loss: even | odd | first-half | second-half | "0,2,5"
    steps: int | None = None         # optimizer steps per model
    minutes: float | None = None     # total budget: (a) trains for half of it, (b) for as many steps as (a) did
    quick: bool = False              # tiny model and few evaluations (seconds; for tests)
    model: dict = field(default_factory=dict)  # GeneratorConfig overrides on top of SMALL/QUICK_MODEL
    batch: int = 32
    lr: float = 1e-3
    eval_num: int = 64               # held-out crops for the per-position loss
    t_draws: int = 4                 # flow times per token (midpoint rule)
    conflict_batches: int = 4        # held-out batches averaged in the conflict matrix
    conflict_batch: int = 8
    seed: int = 0
    val_fraction: float = 0.05
    device: str = "auto"
    out: str | None = None           # keep both runs here (default: a temporary directory)


def _model_overrides(cfg: ConflictConfig, variant: str) -> dict:
    base = dict(QUICK_MODEL if cfg.quick else SMALL_MODEL, **cfg.model)
    base.update(VARIANTS[variant])
    if variant == "baseline":
        base["max_length"] = base["train_length"]
    return base


def _train(cfg: ConflictConfig, latents, variant: str, out: Path, steps: int | None, minutes: float | None, reporter: Reporter) -> dict:
    from ..training import TrainConfig, train_generator

    tc = TrainConfig(latents=str(latents), out=str(out / variant), preset="tiny", model_overrides=_model_overrides(cfg, variant),
                     steps=steps, minutes=minutes, batch=cfg.batch, micro_batch=cfg.batch, lr=cfg.lr, ema=0.0,
                     loss_mask=cfg.mask, seed=cfg.seed, val_fraction=cfg.val_fraction, val_every=0, val_batches=1,
                     ckpt_every=10**9, ckpt_minutes=1e9, log_every=10, device=cfg.device)
    return train_generator(tc, reporter=reporter)


# ----------------------------------------------------------------------------- measurements

def heldout_crops(latents, length: int, num: int, *, val_fraction: float, seed: int):
    """Up to `num` held-out crops (tokens (n, length, C), labels (n,)); more epochs = other crops."""
    from ..latents import LatentDataset

    ds = LatentDataset(latents, length, split="val", val_fraction=val_fraction, mirror=False, seed=seed)
    if len(ds) == 0:
        raise BadInputError(f"{Path(latents).name} has no held-out image at least {length} columns wide; "
                            "use a larger latent file or a larger val fraction")
    xs, ys, epoch = [], [], 0
    while len(xs) < num and epoch < max(1, -(-num // len(ds))):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            if len(xs) == num:
                break
            x, y = ds[i]
            xs.append(torch.as_tensor(x, dtype=torch.float32))
            ys.append(int(y))
        epoch += 1
    ds.close()
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


@torch.no_grad()
def heldout_per_position(model, tokens, labels, *, t_draws: int, batch: int, seed: int) -> list[float]:
    """Mean held-out loss per position with fixed noise (same draws for every model)."""
    model.eval()
    dev = model.device
    N = tokens.shape[1]
    sums = torch.zeros(N, dtype=torch.float64)
    for b0 in range(0, tokens.shape[0], batch):
        x, y = tokens[b0:b0 + batch].to(dev), labels[b0:b0 + batch].to(dev)
        noise = fixed_noise((t_draws, x.shape[0], N, x.shape[-1]), noise_seed(seed, N, b0, 0xE7A1), dev)
        sums += per_position_loss(model, x, y, noise, t_grid(t_draws, dev)[:, None, None]).double().sum(0).cpu()
    return (sums / tokens.shape[0]).tolist()


def shared_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters every position uses (the learned absolute position table is per-position)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and n != "pos_embed"]


def gradient_conflict(model, tokens, labels, *, batches: int, batch: int, t_draws: int, seed: int) -> np.ndarray:
    """(N,N) cosine similarity between per-position loss gradients, averaged over batches."""
    model.eval()  # no dropout, no label dropout, RoPE offset 0: the gradients of the measured loss
    dev = model.device
    params = [p for _, p in shared_parameters(model)]
    N = tokens.shape[1]
    total = np.zeros((N, N))
    used = 0
    for k in range(batches):
        b0 = (k * batch) % max(1, tokens.shape[0])
        x, y = tokens[b0:b0 + batch].to(dev), labels[b0:b0 + batch].to(dev)
        if x.shape[0] == 0:
            break
        noise = fixed_noise((t_draws, x.shape[0], N, x.shape[-1]), noise_seed(seed, N, k, 0xC0F1), dev)
        with torch.enable_grad():
            losses = per_position_loss(model, x, y, noise, t_grid(t_draws, dev)[:, None, None]).mean(0)  # (N,)
            rows = []
            for i in range(N):
                grads = torch.autograd.grad(losses[i], params, retain_graph=i < N - 1, allow_unused=True)
                rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                                       for g, p in zip(grads, params)]))
        G = torch.stack(rows)                                          # (N,P)
        G = G / G.norm(dim=1, keepdim=True).clamp_min(1e-300)
        total += (G @ G.T).cpu().numpy()
        used += 1
    return total / max(used, 1)


def _offdiag(m: np.ndarray) -> float:
    n = m.shape[0]
    return float((m.sum() - np.trace(m)) / (n * n - n)) if n > 1 else float("nan")


def _side(per: list[float], mask: torch.Tensor) -> dict:
    a = np.asarray(per)
    keep = np.arange(len(a)) > 0  # position 0 (class only) is its own task: see the module doc
    tr, un = a[mask.numpy() & keep], a[~mask.numpy() & keep]
    out = {"trained_loss": float(tr.mean()) if len(tr) else None, "untrained_loss": float(un.mean()) if len(un) else None}
    out["gap_ratio"] = out["untrained_loss"] / out["trained_loss"] if len(tr) and len(un) else None
    return out


# ----------------------------------------------------------------------------- entry point

def analyze_conflict(latents: str | os.PathLike, cfg: ConflictConfig = ConflictConfig(), *, reporter: Reporter = SILENT) -> dict:
    """Train both models with the masked loss and measure them; returns one JSON-able document."""
    from ..device import pick_device
    from ..generator import load_generator, make_config
    from ..training import parse_loss_mask

    cfg = replace(cfg, model=dict(cfg.model))  # settled values are filled in below; the caller's object stays as given
    if not Path(latents).is_file():
        raise BadInputError(f"latent file not found: {latents}")
    if cfg.steps is None and cfg.minutes is None:
        if not cfg.quick:
            raise UsageError("say how long to train: --steps N or --minutes M (or --quick)")
        cfg.steps = 15
    if cfg.steps is not None and cfg.steps < 1 or cfg.minutes is not None and cfg.minutes <= 0:
        raise UsageError("--steps must be >= 1 and --minutes > 0")
    if min(cfg.batch, cfg.eval_num, cfg.t_draws, cfg.conflict_batches, cfg.conflict_batch) < 1:
        raise UsageError("--batch, --eval-num, --t-draws and the conflict batch sizes must be at least 1")
    if cfg.quick:
        cfg.eval_num, cfg.t_draws, cfg.conflict_batches = min(cfg.eval_num, 16), min(cfg.t_draws, 2), min(cfg.conflict_batches, 2)
        cfg.batch = min(cfg.batch, 8)
    probe = make_config("tiny", **_model_overrides(cfg, "equivariant"))  # validates the overrides early
    T = probe.train_length
    mask = parse_loss_mask(cfg.mask, T)
    if mask is None or bool(mask.all()):
        raise UsageError(f"--mask {cfg.mask!r} trains every position; choose a subset (even, first-half, ...)")
    device = pick_device(cfg.device)
    cfg.device = str(device)

    tmp = None
    if cfg.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="eqimg-conflict-")
        out = Path(tmp.name)
    else:
        out = Path(cfg.out)
    try:
        runs, models = {}, {}
        t0 = time.monotonic()
        eq = _train(cfg, latents, "equivariant", out, cfg.steps, cfg.minutes / 2 if cfg.minutes else None, reporter)
        steps = int(eq["step"])  # the baseline gets exactly as many steps
        base = _train(cfg, latents, "baseline", out, steps, None, reporter)
        for name, summ in (("equivariant", eq), ("baseline", base)):
            if not summ.get("generator"):
                raise UsageError(f"training of the {name} model stopped early ({summ.get('stopped')}); nothing to measure")
            runs[name] = {"steps": summ["step"], "train_loss": summ["loss"], "seconds": summ["elapsed_s"],
                          "params": summ["params"], "dir": str(out / name) if tmp is None else None}
            models[name] = load_generator(summ["generator"], device=device)
        train_seconds = time.monotonic() - t0

        toks, labels = heldout_crops(latents, T, cfg.eval_num, val_fraction=cfg.val_fraction, seed=cfg.seed)
        doc_models = {}
        with reporter.task("held-out loss and gradient conflict", total=2, unit="model") as task:
            for name, model in models.items():
                per = heldout_per_position(model, toks, labels, t_draws=cfg.t_draws, batch=cfg.batch, seed=cfg.seed)
                C = gradient_conflict(model, toks, labels, batches=cfg.conflict_batches, batch=cfg.conflict_batch,
                                      t_draws=cfg.t_draws, seed=cfg.seed)
                m = mask.numpy()
                tr_idx, un_idx = np.nonzero(m)[0], np.nonzero(~m)[0]
                doc_models[name] = {
                    "window": model.config.window, "position": model.config.position, **runs[name],
                    "per_position": per, **_side(per, mask),
                    "conflict_matrix": C.tolist(), "conflict_mean_offdiag": _offdiag(C),
                    "conflict_trained_untrained": float(C[np.ix_(tr_idx, un_idx)].mean()),
                }
                task.advance(1)
        return {
            "latents": str(latents), "mask": cfg.mask, "trained_positions": np.nonzero(mask.numpy())[0].tolist(),
            "train_length": T, "steps": steps, "batch": cfg.batch, "lr": cfg.lr, "quick": cfg.quick,
            "heldout_crops": int(toks.shape[0]), "t_draws": cfg.t_draws, "conflict_batches": cfg.conflict_batches,
            "train_seconds": train_seconds, "device": str(device), "models": doc_models,
            "note": "position 0 (class only, no image context) is excluded from trained/untrained means",
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def summary_rows(doc: dict) -> list[list]:
    rows = []
    for name, m in doc["models"].items():
        kind = f"window {m['window']}, {m['position']}"
        rows.append([name, kind, m["steps"], m["trained_loss"], m["untrained_loss"], m["gap_ratio"], m["conflict_mean_offdiag"]])
    return rows


def plot_conflict(doc: dict, path: str | os.PathLike) -> None:
    """Per-position held-out loss of both models (trained positions filled) and the two heatmaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    trained = set(doc["trained_positions"])
    for (name, m), color in zip(doc["models"].items(), ("C0", "C3")):
        per = m["per_position"]
        xs = np.arange(len(per))
        axes[0].plot(xs, per, "-", color=color, lw=1, label=f"{name} (gap {m['gap_ratio']:.2f}x)" if m["gap_ratio"] else name)
        tr = [i for i in xs if i in trained]
        un = [i for i in xs if i not in trained]
        axes[0].plot(tr, [per[i] for i in tr], "o", color=color, ms=5)
        axes[0].plot(un, [per[i] for i in un], "o", color=color, mfc="white", ms=5)
    axes[0].set_title(f"held-out loss (filled: trained positions, mask={doc['mask']})")
    axes[0].set_xlabel("position")
    axes[0].set_ylabel("flow-matching loss")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    im = None
    for ax, (name, m) in zip(axes[1:], doc["models"].items()):
        im = ax.imshow(np.asarray(m["conflict_matrix"]), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{name}: gradient cosine (mean off-diag {m['conflict_mean_offdiag']:.2f})", fontsize=9)
        ax.set_xlabel("position j")
        ax.set_ylabel("position i")
    if im is not None:
        fig.colorbar(im, ax=axes[1:].tolist(), shrink=0.8)
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
