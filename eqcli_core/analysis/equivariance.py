"""How shift-equivariant is a tokenizer? (encode and decode, interior vs border tokens)

Setup: each image is brought to the tokenizer's height and cut into a base window [0, W) and
shifted windows [s, s+W) of the same (wider) image, for s = k whole columns (k = 1..K) and for
sub-column pixel amounts. Cropping, not wrap-around: the shifted window really shows new content
at its right edge, like generating one more column.

- Encoding: tokens of the shifted window vs the base tokens moved by the shift,
  z_s[j] vs z_0[j + s/cw], on the overlap j in [0, L - ceil(s/cw)). For sub-column shifts the
  reference is the linear interpolation between the two neighbouring base tokens.
- Decoding: the token sequence moved by k positions (its tail filled with the shifted window's
  own tokens, so its length stays), decoded, vs the base decode moved by k*cw pixels, compared
  on the overlapping pixels.

Errors are relative L2: ||a - b|| / ||b|| over a set of tokens (or pixel columns). "Border" are
the `border` tokens at either end of the compared overlap (where padding/the image edge enters
the receptive field); "interior" is the rest. The profile gives the error by distance (in
tokens) to the nearest end.

Everything works on token SEQUENCES, so the same code measures the raster-order 2D baseline
(baseline_tokenizer.py), for which a column shift of the image is not a shift of the sequence.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import BadInputError, UsageError
from ..progress import SILENT, Reporter


@dataclass
class EquivarianceConfig:
    max_shift: int = 4                 # whole-column shifts 1..max_shift
    sub_shifts_px: tuple[int, ...] = ()  # sub-column shifts in px; () = cw/4, cw/2, 3cw/4
    width: int | None = None           # base window width in px; None = tokenizer height (square)
    border: int = 2                    # tokens at each end of the overlap counted as "border"
    num: int = 8                       # images used
    batch: int = 8


def _shift_list(cw: int, cfg: EquivarianceConfig) -> list[tuple[int, str]]:
    whole = [(k * cw, "whole") for k in range(1, cfg.max_shift + 1)]
    subs = cfg.sub_shifts_px or tuple(sorted({max(1, cw // 4), max(1, cw // 2), max(1, 3 * cw // 4)} - {cw}))
    for s in subs:
        if s <= 0 or s % cw == 0:
            raise UsageError(f"sub-column shift {s} px must be positive and not a multiple of the column width {cw}")
    return whole + [(int(s), "sub") for s in subs]


def prepare_images(items: Sequence, height: int, width: int) -> torch.Tensor:
    """Images (paths or uint8 HWC arrays) -> (N,3,height,width) in [-1,1]. Each image is scaled
    (aspect kept) so that it covers height x width, then centre-cropped: never squashed."""
    from PIL import Image

    from ..metrics import _as_uint8_hwc, _load_rgb

    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            try:
                arr = _as_uint8_hwc(_load_rgb(item))
            except Exception as exc:  # one clear error instead of a decoder traceback
                raise BadInputError(f"cannot read image {item}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}") from exc
        else:
            arr = _as_uint8_hwc(item)
        h, w = arr.shape[:2]
        scale = max(height / h, width / w)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        im = Image.fromarray(arr)
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.BICUBIC)
        top, left = (nh - height) // 2, (nw - width) // 2
        a = np.asarray(im)[top:top + height, left:left + width]
        out.append(torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


def _rel(diff2: np.ndarray, ref2: np.ndarray, mask: np.ndarray) -> float | None:
    """sqrt(sum diff^2 / sum ref^2) over positions where mask is True (None if empty)."""
    if not mask.any():
        return None
    return float(math.sqrt(diff2[mask].sum() / max(ref2[mask].sum(), 1e-30)))


def _summarise(diff2: np.ndarray, ref2: np.ndarray, border: int) -> dict:
    """diff2, ref2: (positions,) summed squared errors / references along the overlap."""
    n = diff2.shape[0]
    dist = np.minimum(np.arange(n), n - 1 - np.arange(n))  # tokens to the nearest end
    interior = dist >= border
    profile = [_rel(diff2, ref2, dist == d) for d in range(int(dist.max()) + 1)] if n else []
    return {
        "rel_error": _rel(diff2, ref2, np.ones(n, bool)),
        "rel_error_interior": _rel(diff2, ref2, interior),
        "rel_error_border": _rel(diff2, ref2, ~interior),
        "positions": int(n),
        "interior_positions": int(interior.sum()),
        "profile": profile,
    }


@torch.no_grad()
def _encode_errors(model, wide: torch.Tensor, W: int, shifts) -> list[tuple]:
    """[(shift px, kind, squared error per position, squared reference per position)]."""
    cw = model.column_width
    z0 = model.encode(wide[..., :W]).double()  # (B,L,C)
    L = z0.shape[1]
    rows = []
    for s, kind in shifts:
        zs = model.encode(wide[..., s:s + W]).double()
        q, f = divmod(s, cw)
        n = L - q - (1 if f else 0)  # overlap positions with a defined reference
        ref = z0[:, q:q + n]
        if f:
            ref = (1 - f / cw) * ref + (f / cw) * z0[:, q + 1:q + 1 + n]
        d2 = (zs[:, :n] - ref).square().sum(dim=(0, 2)).cpu().numpy()
        r2 = ref.square().sum(dim=(0, 2)).cpu().numpy()
        rows.append((s, kind, d2, r2))
    return rows


@torch.no_grad()
def _decode_errors(model, wide: torch.Tensor, W: int, shifts) -> list[tuple]:
    cw = model.column_width
    z0 = model.encode(wide[..., :W])
    x0 = model.decode(z0).double()  # (B,3,H,W)
    L = z0.shape[1]
    rows = []
    for s, kind in shifts:
        if kind != "whole":
            continue  # tokens are discrete columns: a sub-column token shift is undefined
        k = s // cw
        zs = model.encode(wide[..., s:s + W])
        moved = torch.cat([z0[:, k:], zs[:, L - k:]], dim=1)  # sequence shifted by k, same length
        xs = model.decode(moved).double()
        ncols = W - s  # overlapping pixel columns
        diff = (xs[..., :ncols] - x0[..., s:s + ncols]).square().sum(dim=(0, 1, 2))  # per pixel column
        ref = x0[..., s:s + ncols].square().sum(dim=(0, 1, 2))
        # aggregate pixel columns into column-width groups so "border" counts tokens' worth of pixels
        g = ncols // cw
        d2 = diff[:g * cw].reshape(g, cw).sum(-1).cpu().numpy()
        r2 = ref[:g * cw].reshape(g, cw).sum(-1).cpu().numpy()
        rows.append((s, kind, d2, r2))
    return rows


def measure(model, images: torch.Tensor, cfg: EquivarianceConfig, reporter: Reporter = SILENT) -> tuple[list[dict], list[dict]]:
    """Encode/decode shift errors of `model` on `images` (N,3,H,W_wide) in [-1,1], where
    W_wide >= window width + the largest shift. Batches are pooled into one sum per position."""
    cw = model.column_width
    W = cfg.width or model.height
    shifts = _shift_list(cw, cfg)
    need = W + max(s for s, _ in shifts) + cw
    if images.shape[-1] < need:
        raise UsageError(f"images must be at least {need} px wide for a {W}-px window and shifts up to {max(s for s, _ in shifts)} px")
    sums: dict = {"encode": {}, "decode": {}}  # shift -> [kind, sum d2, sum r2] over images
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    with reporter.task("equivariance", total=images.shape[0], unit="img") as task:
        for a in range(0, images.shape[0], cfg.batch):
            x = images[a:a + cfg.batch].to(device)
            for name, fn in (("encode", _encode_errors), ("decode", _decode_errors)):
                for s, kind, d2, r2 in fn(model, x, W, shifts):
                    acc = sums[name].setdefault(s, [kind, 0.0, 0.0])
                    acc[1] = acc[1] + d2
                    acc[2] = acc[2] + r2
            task.advance(x.shape[0])
    out = []
    for name in ("encode", "decode"):
        out.append([
            {"shift_px": s, "shift_columns": s / cw, "kind": kind, **_summarise(d2, r2, cfg.border)}
            for s, (kind, d2, r2) in sorted(sums[name].items(), key=lambda kv: (kv[1][0] != "whole", kv[0]))
        ])
    return out[0], out[1]


def analyze_equivariance(
    tokenizer,
    data: str | os.PathLike | Sequence,
    cfg: EquivarianceConfig = EquivarianceConfig(),
    *,
    baseline: bool = False,
    baseline_steps: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    reporter: Reporter = SILENT,
) -> dict:
    """Measure `tokenizer` (a checkpoint path, None for the bundled one, or a loaded model) on up to `cfg.num` images from
    `data` (a directory, or a list of paths/arrays); optionally the raster-order 2D baseline too."""
    from ..metrics import list_images

    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        from ..tokenizer import load_tokenizer

        source = str(tokenizer) if tokenizer is not None else "bundled"
        model = load_tokenizer(tokenizer, device=device)
    else:
        source, model = type(tokenizer).__name__, tokenizer.to(device)
    model.eval()
    if cfg.num < 1 or cfg.max_shift < 1 or cfg.border < 0 or cfg.batch < 1:
        raise UsageError("--num, --max-shift and --batch must be at least 1, --border at least 0")
    cw, H = model.column_width, model.height
    W = cfg.width or H
    if W % cw or W <= cfg.max_shift * cw:
        raise UsageError(f"window width {W} must be a multiple of the column width {cw} and wider than the largest shift ({cfg.max_shift * cw} px)")
    items = list_images(data)[: cfg.num] if isinstance(data, (str, os.PathLike)) else list(data)[: cfg.num]
    if not items:
        raise BadInputError("no images to analyse")
    shifts = _shift_list(cw, cfg)
    wide_w = W + max(s for s, _ in shifts) + cw
    images = prepare_images(items, H, wide_w)
    enc, dec = measure(model, images, cfg, reporter)
    doc = {
        "tokenizer": source,
        "column_width": cw,
        "height": H,
        "window_width": W,
        "tokens_per_window": W // cw,
        "images": int(images.shape[0]),
        "border_tokens": cfg.border,
        "encode": enc,
        "decode": dec,
    }
    if baseline:
        from .baseline_tokenizer import build_baseline

        base = build_baseline(H, cw, token_dim=getattr(model, "token_dim", 32), seed=seed).to(device)
        g = torch.Generator().manual_seed(seed)
        crops = images[..., :W].to(device)
        with torch.enable_grad():
            losses = base.fit(crops, steps=baseline_steps, generator=g)
        b_enc, b_dec = measure(base, images, cfg, reporter)
        doc["baseline"] = {
            "name": "2D patch grid, raster order",
            "patch": cw,
            "tokens_per_window": (H // cw) * (W // cw),
            "train_steps": baseline_steps,
            "final_mse": losses[-1] if losses else None,
            "encode": b_enc,
            "decode": b_dec,
            "note": "the baseline's decoder is a 2D conv and is shift-equivariant on its own grid; its raster-order "
                    "wrap-around lands in the excluded right-hand columns, so its failure shows in the encode (sequence) rows",
        }
    return doc


def summary_rows(doc: dict) -> list[list]:
    """Flat rows (model, stage, shift, kind, all, interior, border) for a table."""
    rows = []
    models = [("tokenizer", doc)] + ([("baseline", doc["baseline"])] if "baseline" in doc else [])
    for name, d in models:
        for stage in ("encode", "decode"):
            for r in d[stage]:
                rows.append([name, stage, r["shift_px"], r["kind"], r["rel_error"], r["rel_error_interior"], r["rel_error_border"]])
    return rows


def plot_equivariance(doc: dict, path: str | os.PathLike) -> None:
    """Two panels: relative error vs shift (encode: interior/border; decode), and the error
    profile by distance to the nearest end (whole-column shifts, encode), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    models = [("column tokenizer", doc, "C0")] + ([("2D raster baseline", doc["baseline"], "C3")] if "baseline" in doc else [])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    floor = 1e-9  # log axes: show exact zeros at a floor
    for label, d, color in models:
        for stage, ax in (("encode", axes[0]), ("decode", axes[1])):
            rows = d[stage]
            for part, style in (("rel_error_interior", "-o"), ("rel_error_border", "--x")):
                for kind in ("whole", "sub"):  # sub-column shifts: separate, unconnected markers
                    pts = [(r["shift_px"], max(r[part], floor)) for r in rows if r[part] is not None and r["kind"] == kind]
                    if pts:
                        xs, ys = zip(*sorted(pts))
                        fmt = style if kind == "whole" else style[-1]
                        ax.plot(xs, ys, fmt, color=color, mfc="none" if kind == "sub" else None,
                                label=f"{label} ({part.split('_')[-1]}{', sub-column' if kind == 'sub' else ''})")
        whole = [r for r in d["encode"] if r["kind"] == "whole"]
        if whole:
            n = max(len(r["profile"]) for r in whole)
            prof = [np.mean([r["profile"][i] for r in whole if i < len(r["profile"]) and r["profile"][i] is not None] or [np.nan]) for i in range(n)]
            axes[2].plot(range(n), np.maximum(prof, floor), "-o", color=color, label=label)
    for ax, title, xl in ((axes[0], "encode: z(shifted) vs shifted z", "shift (px)"),
                          (axes[1], "decode: dec(shifted z) vs shifted dec", "shift (px)"),
                          (axes[2], "encode error vs distance to edge", "tokens from nearest end")):
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel("relative L2 error")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
