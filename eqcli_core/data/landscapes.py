"""Procedural landscape panoramas: horizontally stationary random processes, any width.

Every class is built from pieces whose statistics do not depend on x: value noise on a grid with
a random offset, sums of random-phase waves, and objects (suns, trees, buildings) placed by a
Poisson process with uniform density. So a crop at any x looks like a crop at any other x, which
is exactly what a column-wise, translation-equivariant generator should learn, and a 16384-wide
render is valid ground truth for long generated images.

All sizes scale with the height H (one "unit" = H pixels); the width only sets how much of the
process is shown. Rendering is vectorised numpy on float32 (H, W, 3) in [0, 1].

Determinism: `render_landscape(cls, H, W, seed)` depends only on its arguments. Datasets derive
the per-image seed from (dataset seed, class, index) with `image_seed`, so image i never depends
on how many others are rendered.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from ..progress import SILENT, Reporter

GENERATOR_VERSION = 1
LANDSCAPE_CLASSES: tuple[str, ...] = ("mountains", "desert", "coast", "forest", "snowfield", "city_night", "lake")
MAX_PIXELS = 1 << 28  # ~268 MP of float32 RGB is ~3 GB; refuse before allocating


# ---------------------------------------------------------------------------------------------
# stationary building blocks


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _noise1d(rng: np.random.Generator, w: int, period: float, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Fractal value noise along x, (W,) roughly in [-1, 1]. Random grid offset -> stationary."""
    x = np.arange(w, dtype=np.float64)
    out = np.zeros(w, np.float32)
    amp, norm, p = 1.0, 0.0, float(period)
    for _ in range(octaves):
        g = x / p + rng.uniform(0, 1)
        i = np.floor(g).astype(np.int64)
        f = _smooth((g - i).astype(np.float32))
        vals = rng.uniform(-1, 1, int(i[-1]) + 2).astype(np.float32)
        out += amp * (vals[i] * (1 - f) + vals[i + 1] * f)
        norm += amp
        amp *= gain
        p = max(p / 2.0, 1.0)
    return out / norm


def _ridged1d(rng: np.random.Generator, w: int, period: float, octaves: int = 5) -> np.ndarray:
    """Ridged noise (sharp peaks, rounded valleys), (W,) in [0, 1]."""
    x = np.arange(w, dtype=np.float64)
    out = np.zeros(w, np.float32)
    amp, norm, p = 1.0, 0.0, float(period)
    for _ in range(octaves):
        g = x / p + rng.uniform(0, 1)
        i = np.floor(g).astype(np.int64)
        f = _smooth((g - i).astype(np.float32))
        vals = rng.uniform(-1, 1, int(i[-1]) + 2).astype(np.float32)
        v = 1.0 - np.abs(vals[i] * (1 - f) + vals[i + 1] * f)
        out += amp * v * v
        norm += amp
        amp *= 0.5
        p = max(p / 2.1, 1.0)
    return out / norm


def _noise2d(rng: np.random.Generator, h: int, w: int, px: float, py: float, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Fractal 2D value noise, (h, w) roughly in [-1, 1]; separable bilinear gather per octave."""
    out = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    for _ in range(octaves):
        gx, gy = xs / px + rng.uniform(0, 1), ys / py + rng.uniform(0, 1)
        ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
        fx, fy = _smooth((gx - ix).astype(np.float32)), _smooth((gy - iy).astype(np.float32))[:, None]
        grid = rng.uniform(-1, 1, (int(iy[-1]) + 2, int(ix[-1]) + 2)).astype(np.float32)
        rows = grid[iy] * (1 - fy) + grid[iy + 1] * fy  # (h, nx)
        out += amp * (rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx)
        norm += amp
        amp *= gain
        px, py = max(px / 2.0, 1.0), max(py / 2.0, 1.0)
    return out / norm


def _poisson_x(rng: np.random.Generator, w: int, mean_gap: float, margin: float = 0.0) -> np.ndarray:
    """Sorted positions of a Poisson process with density 1/mean_gap on [-margin, w + margin)."""
    span = w + 2 * margin
    n = rng.poisson(span / mean_gap)
    return np.sort(rng.uniform(-margin, w + margin, n))


def _thin(xs: np.ndarray, min_gap: float) -> np.ndarray:
    """Drop points closer than min_gap to the previous kept one (no overlapping suns)."""
    keep, last = [], -np.inf
    for x in xs:
        if x - last >= min_gap:
            keep.append(x)
            last = x
    return np.asarray(keep, dtype=np.float64)


def _envelope(w: int, centers: np.ndarray, half: np.ndarray, heights: np.ndarray, shape: Callable) -> np.ndarray:
    """Upper envelope (W,) of objects `heights * shape(|x - c| / half)`; vectorised with maximum.at."""
    prof = np.zeros(w, np.float32)
    if len(centers) == 0:
        return prof
    k = int(np.ceil(half.max())) + 1
    xs = np.round(centers)[:, None] + np.arange(-k, k + 1)[None, :]  # (N, 2k+1)
    t = np.abs(xs - centers[:, None]) / half[:, None]
    v = heights[:, None] * shape(np.minimum(t, 1.0))
    ok = (xs >= 0) & (xs < w) & (t < 1.0)
    np.maximum.at(prof, xs[ok].astype(np.int64), v[ok].astype(np.float32))
    return prof


def _conifer(t: np.ndarray) -> np.ndarray:
    # cone with drooping branch tiers: a sawtooth on the slope
    return np.clip((1.0 - t) - 0.10 * ((t * 4.0) % 1.0), 0.0, None)


def _dome(t: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))


def _blur1d(x: np.ndarray, r: int) -> np.ndarray:
    """Box blur of a (W,) line with edge padding (keeps the length)."""
    r = max(int(r), 0)
    if r == 0:
        return x
    c = np.cumsum(np.pad(x.astype(np.float64), (r + 1, r), mode="edge"))
    return ((c[2 * r + 1:] - c[:-2 * r - 1]) / (2 * r + 1)).astype(np.float32)


def _rows(h: int) -> np.ndarray:
    return np.arange(h, dtype=np.float32)[:, None]  # (H, 1)


def _below(profile: np.ndarray, h: int) -> np.ndarray:
    """Anti-aliased coverage (H, W) of the region below a per-column top line."""
    return np.clip(_rows(h) + 1.0 - profile[None, :], 0.0, 1.0)


def _over(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """In-place 'alpha over': img <- img + alpha * (color - img)."""
    img += alpha[..., None] * (np.asarray(color, np.float32) - img)


def _jitter(rng: np.random.Generator, color, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def _mix(a, b, t: float) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * np.float32(t)


# ---------------------------------------------------------------------------------------------
# scene pieces


def _sky(h: int, w: int, top, horizon, horizon_y: float) -> np.ndarray:
    t = np.clip(_rows(h) / max(horizon_y, 1.0), 0, 1) ** 0.9  # (H, 1)
    col = np.asarray(top, np.float32) + (np.asarray(horizon, np.float32) - np.asarray(top, np.float32)) * t[..., None]  # (H,1,3)
    return np.broadcast_to(col, (h, w, 3)).astype(np.float32)  # astype copies: writable


def _suns(img: np.ndarray, rng: np.random.Generator, h: int, y_range, radius: float, color, glow, glow_r: float,
          mean_gap: float, halo: float = 0.35) -> np.ndarray:
    """Discs with an additive glow at Poisson x positions (min gap ~2 units): stationary in x."""
    w = img.shape[1]
    xs = _thin(_poisson_x(rng, w, mean_gap * h, margin=glow_r * 2), 2.0 * h)
    for cx in xs:
        cy = rng.uniform(*y_range) * h
        x0, x1 = max(0, int(cx - 2.5 * glow_r)), min(w, int(cx + 2.5 * glow_r) + 1)
        if x1 <= x0:
            continue
        y1 = min(h, int(cy + 2.5 * glow_r) + 1)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        yy = np.arange(0, y1, dtype=np.float32)[:, None] - cy
        d = np.sqrt(xx * xx + yy * yy)
        patch = img[:y1, x0:x1]
        patch += (halo * np.exp(-(d / glow_r) ** 2))[..., None] * np.asarray(glow, np.float32)
        _over(patch, np.clip(radius - d + 0.5, 0, 1), color)
    return xs


def _clouds(img: np.ndarray, rng: np.random.Generator, band: int, cover: float, light, shade, stretch: float = 5.0) -> None:
    """Soft clouds in rows [0, band): thresholded 2D noise, lighter on top, fading to the horizon."""
    h, w = img.shape[:2]
    band = max(2, min(band, h))
    n = _noise2d(rng, band, w, px=0.55 * h, py=0.55 * h / stretch, octaves=4)
    thr = 0.35 - 0.5 * cover
    a = np.clip((n - thr) * 3.0, 0, 1) * np.clip(1.15 - _rows(band) / band, 0, 1) ** 0.7
    lit = np.clip(0.5 + (n - np.roll(n, 2, axis=0)) * 6.0, 0, 1)[..., None]  # brighter where cloud tops
    col = np.asarray(shade, np.float32) + lit * (np.asarray(light, np.float32) - np.asarray(shade, np.float32))
    _over(img[:band], a * 0.9, col)


def _stars(img: np.ndarray, rng: np.random.Generator, band: int, density: float) -> None:
    h, w = img.shape[:2]
    n = rng.poisson(density * band * w)
    ys, xs = rng.integers(0, max(band, 1), n), rng.integers(0, w, n)
    b = rng.uniform(0.2, 1.0, n).astype(np.float32) ** 2
    img[ys, xs] += b[:, None] * np.float32(0.9)


def _ridge_layer(img, rng, base_y: float, amp: float, period: float, color, haze_color, haze: float,
                 ridged: bool = True, fog: float = 0.0, shade: float = 0.0, octaves: int = 5) -> np.ndarray:
    """A mountain/hill silhouette, atmospheric haze mixed in, optional valley fog and slope shading."""
    h, w = img.shape[:2]
    prof = _ridged1d(rng, w, period, octaves) if ridged else 0.5 + 0.5 * _noise1d(rng, w, period, octaves)
    top = base_y - amp * prof  # (W,)
    col = _mix(color, haze_color, haze)
    body = np.broadcast_to(col, (h, w, 3)).astype(np.float32)
    if shade:
        # Flat-colour layers read best (column-wise slope shading streaks): add a lit rim just
        # below the ridge and a faint rock texture instead.
        rim = np.exp(-np.clip(_rows(h) - top[None, :], 0, None) / (0.03 * h + 0.5))
        rock = _noise2d(rng, h, w, px=0.1 * h + 1, py=0.04 * h + 1, octaves=2)
        body = body * (1.0 + shade * (0.35 * rim + 0.25 * rock))[..., None]
    if fog:  # valley fog thickens with absolute height, so it does not streak along the ridge
        low = np.clip((_rows(h) - (base_y - amp)) / max(amp, 1.0), 0, 1) ** 2
        body = body + (fog * low)[..., None] * (np.asarray(haze_color, np.float32) - body)
    _over(img, _below(top, h), body)
    return top


def _treeline(img, rng, ground: np.ndarray, spacing: float, height: float, color, haze_color, haze: float,
              conifer_frac: float = 0.85, snow: float = 0.0, fill: bool = True) -> np.ndarray:
    """A band of trees (Poisson positions) standing on the ground line `ground` (W,)."""
    h, w = img.shape[:2]
    xs = _poisson_x(rng, w, spacing, margin=height)
    n = len(xs)
    is_con = rng.uniform(size=n) < conifer_frac
    hts = height * rng.uniform(0.6, 1.25, n)
    half = np.where(is_con, hts * rng.uniform(0.18, 0.28, n), hts * rng.uniform(0.35, 0.5, n))
    hts = np.where(is_con, hts, hts * 0.7)
    prof = np.maximum(_envelope(w, xs[is_con], half[is_con], hts[is_con], _conifer),
                      _envelope(w, xs[~is_con], half[~is_con], hts[~is_con], _dome))
    top = ground - prof
    col = _mix(color, haze_color, haze)
    tex = _noise2d(rng, h, w, px=max(height * 0.25, 1.5), py=max(height * 0.2, 1.5), octaves=2)
    body = col[None, None, :] * (1.0 + 0.25 * (1 - haze) * tex[..., None])
    if snow:
        s = np.clip(tex * 3.0 - (1.0 - snow) * 2.0, 0, 1)[..., None] * (1 - haze * 0.5)
        body = body + s * (np.float32(0.95) - body)
    alpha = _below(top, h)
    if not fill:  # only the trees, not the ground band below their base line
        alpha = np.clip(alpha - _below(ground, h), 0.0, 1.0)
    _over(img, alpha, body)
    return top


def _reflect(img: np.ndarray, rng: np.random.Generator, water_y: float, tint, strength: float, ripple: float) -> None:
    """Mirror everything above water_y into the rows below it, with ripple and tint."""
    h, w = img.shape[:2]
    y0 = int(np.ceil(water_y))
    if y0 >= h:
        return
    ys = np.arange(y0, h)
    src_y = np.clip(np.round(2 * water_y - ys - 1).astype(np.int64), 0, h - 1)
    depth = (ys - water_y) / max(h - water_y, 1.0)
    wob = _noise2d(rng, h - y0, w, px=0.6 * h, py=max(0.015 * h, 1.0), octaves=2)
    dx = np.round(wob * ripple * h * (0.3 + depth[:, None])).astype(np.int64)
    src_x = np.clip(np.arange(w)[None, :] + dx, 0, w - 1)
    refl = img[src_y[:, None], src_x]  # (h - y0, W, 3)
    a = (strength * (1.0 - 0.5 * depth))[:, None, None]
    streak = 1.0 + 0.12 * _noise2d(rng, h - y0, w, px=0.5 * h, py=max(0.01 * h, 1.0), octaves=2)[..., None]
    img[y0:] = (a * refl + (1 - a) * np.asarray(tint, np.float32)) * streak


# ---------------------------------------------------------------------------------------------
# classes (each: rng, H, W -> float32 (H, W, 3))


def _mountains(rng, h, w):
    golden = rng.uniform() < 0.3
    top = _jitter(rng, (0.30, 0.48, 0.78) if not golden else (0.35, 0.42, 0.68))
    hor = _jitter(rng, (0.78, 0.86, 0.93) if not golden else (0.98, 0.80, 0.60))
    horizon = rng.uniform(0.55, 0.7) * h
    img = _sky(h, w, top, hor, horizon)
    _suns(img, rng, h, (0.12, 0.4), 0.05 * h, (1.0, 0.97, 0.85), (1.0, 0.9, 0.7), 0.25 * h, mean_gap=4.0)
    _clouds(img, rng, int(0.55 * h), rng.uniform(0.0, 0.6), (1.0, 0.98, 0.96), _mix(hor, (0.5, 0.5, 0.6), 0.5))
    rock = _jitter(rng, (0.30, 0.29, 0.35), 0.05)
    layers = rng.integers(3, 5)
    for k in range(layers):
        f = k / (layers - 1)  # 0 far -> 1 near
        base = (0.45 + 0.45 * f + rng.uniform(-0.03, 0.03)) * h
        amp = (0.42 - 0.18 * f) * h * rng.uniform(0.8, 1.2)
        col = _mix(rock, (0.16, 0.26, 0.14), f * f * 0.8)  # near layers greener
        top_line = _ridge_layer(img, rng, base, amp, (1.3 - 0.5 * f) * h, col, hor, 0.62 * (1 - f) ** 1.2,
                                fog=0.18 * (1 - f), shade=0.4 * f)
        if f < 0.9:  # snow caps on the high parts: everything above a noisy snow line
            line = base - amp * rng.uniform(0.35, 0.6) + 0.04 * h * _noise1d(rng, w, 0.08 * h, 3)
            snow = np.clip(line[None, :] - _rows(h), 0, 1) * (_rows(h) >= top_line[None, :] - 1)
            _over(img, snow * (1 - 0.6 * (1 - f) ** 2), _mix((0.96, 0.97, 1.0), hor, 0.5 * (1 - f)))
    return img


def _desert(rng, h, w):
    top = _jitter(rng, (0.40, 0.60, 0.85))
    hor = _jitter(rng, (0.96, 0.88, 0.72))
    img = _sky(h, w, top, hor, rng.uniform(0.45, 0.6) * h)
    _suns(img, rng, h, (0.08, 0.3), 0.06 * h, (1.0, 1.0, 0.92), (1.0, 0.85, 0.5), 0.35 * h, mean_gap=3.0, halo=0.5)
    _clouds(img, rng, int(0.35 * h), rng.uniform(-0.3, 0.2), (1.0, 0.97, 0.92), (0.9, 0.82, 0.75), stretch=8.0)
    sand = _jitter(rng, (0.86, 0.60, 0.33), 0.05)
    layers = rng.integers(3, 5)
    for k in range(layers):
        f = k / (layers - 1)
        base = (0.55 + 0.4 * f) * h
        amp = (0.06 + 0.14 * f) * h
        period = (0.5 + 0.6 * f) * h
        # dunes: asymmetric waves (gentle windward slope, steep slip face) on a warped phase
        u = np.arange(w) / period + 0.6 * _noise1d(rng, w, 2.0 * period, 2) + rng.uniform(0, 1)
        ph = u % 1.0
        a = 0.68
        falling = ph >= a
        wave = np.where(falling, (1.0 - (ph - a) / (1 - a)) ** 1.6, 0.5 - 0.5 * np.cos(np.pi * ph / a))
        top = base - amp * (0.6 + 0.4 * _noise1d(rng, w, 3 * period, 2)) * wave
        depth = np.clip((_rows(h) - top[None, :]) / (amp + 1.0), 0, 1)
        # slip faces (falling side) in shadow, windward sides lit; both fade below the crest
        lit = np.where(falling, -0.38, 0.12 * np.sin(np.pi * ph / a))[None, :] * np.exp(-depth * 2.5)
        col = _mix(sand, hor, 0.6 * (1 - f) ** 1.5)
        body = col[None, None, :] * (1.0 + lit[..., None])
        if f > 0.5:  # wind ripples on near dunes
            body = body * (1.0 + 0.04 * np.sin(_rows(h) * (2.6 / max(h / 128, 0.5)) + 3 * _noise1d(rng, w, 0.2 * h, 2)[None, :]))[..., None]
        _over(img, _below(top, h), body)
    return img


def _coast(rng, h, w):
    top = _jitter(rng, (0.25, 0.52, 0.85))
    hor = _jitter(rng, (0.80, 0.90, 0.97))
    horizon = rng.uniform(0.4, 0.55) * h
    img = _sky(h, w, top, hor, horizon)
    suns = _suns(img, rng, h, (0.1, 0.3), 0.045 * h, (1.0, 0.98, 0.88), (1.0, 0.9, 0.7), 0.25 * h, mean_gap=3.5)
    _clouds(img, rng, int(horizon), rng.uniform(0.0, 0.7), (1.0, 1.0, 1.0), (0.72, 0.78, 0.86))
    # distant headlands: only where the noise pokes above zero
    hill = np.clip(_noise1d(rng, w, 0.9 * h, 4) + rng.uniform(-0.3, 0.1), 0, None) * 0.25 * h
    _over(img, _below(horizon - hill, h), _mix((0.25, 0.38, 0.35), hor, 0.55))
    sea_far, sea_near = _jitter(rng, (0.45, 0.65, 0.78), 0.05), _jitter(rng, (0.05, 0.30, 0.50), 0.05)
    shore = (rng.uniform(0.72, 0.85) * h) + 0.05 * h * _noise1d(rng, w, 0.8 * h, 3)
    y = _rows(h)
    t = np.clip((y - horizon) / (h - horizon), 0, 1)
    sea = sea_far + (sea_near - sea_far) * t[..., None] ** 0.6  # (H,1,3)
    waves = _noise2d(rng, h, w, px=0.35 * h, py=max(0.012 * h, 1.0), octaves=2)
    sea = sea * (1.0 + 0.18 * waves[..., None] * (0.3 + t[..., None]))
    sea = np.broadcast_to(sea, (h, w, 3)).copy()
    for cx in suns:  # glitter path under each sun (local window: cheap at any width)
        x0, x1 = max(0, int(cx - 0.5 * h)), min(w, int(cx + 0.5 * h) + 1)
        if x1 <= x0:
            continue
        gl = np.exp(-((np.arange(x0, x1) - cx) / (0.04 * h + 0.12 * h * t)) ** 2) * np.clip(waves[:, x0:x1] * 2 + 0.4, 0, 1)
        sea[:, x0:x1] += (0.7 * gl)[..., None] * np.float32([1.0, 0.9, 0.7])
    _over(img, np.clip(y + 1 - horizon, 0, 1) * np.ones((1, w), np.float32), sea)
    sand = _jitter(rng, (0.90, 0.80, 0.62), 0.04)
    wet = sand * 0.75
    beach = np.where((y < shore[None, :] + 0.03 * h)[..., None], wet[None, None, :], sand[None, None, :])
    beach = beach * (1.0 + 0.05 * _noise2d(rng, h, w, 3, 3, 2)[..., None])
    _over(img, _below(shore, h), beach)
    foam = np.clip(1.0 - np.abs(y - shore[None, :] + 0.3) / (0.012 * h + 0.5), 0, 1) * np.clip(0.6 + _noise1d(rng, w, 0.1 * h, 2), 0, 1)
    _over(img, foam, (0.97, 0.98, 1.0))
    return img


def _forest(rng, h, w):
    top = _jitter(rng, (0.38, 0.58, 0.82))
    hor = _jitter(rng, (0.80, 0.88, 0.88))
    img = _sky(h, w, top, hor, rng.uniform(0.5, 0.65) * h)
    _suns(img, rng, h, (0.1, 0.3), 0.045 * h, (1.0, 0.98, 0.88), (1.0, 0.92, 0.75), 0.22 * h, mean_gap=4.0)
    _clouds(img, rng, int(0.5 * h), rng.uniform(0.0, 0.7), (1.0, 1.0, 0.98), (0.7, 0.75, 0.8))
    _ridge_layer(img, rng, 0.55 * h, 0.18 * h, 1.2 * h, (0.25, 0.35, 0.35), hor, 0.6, ridged=False)
    green = _jitter(rng, (0.10, 0.28, 0.12), 0.04)
    layers = 3
    for k in range(layers):
        f = k / (layers - 1)
        ground = (0.58 + 0.22 * f) * h + 0.04 * h * _noise1d(rng, w, 1.0 * h, 3)
        _treeline(img, rng, ground, spacing=(0.03 + 0.05 * f) * h, height=(0.10 + 0.22 * f) * h,
                  color=_mix(green, (0.03, 0.10, 0.05), f), haze_color=hor, haze=0.65 * (1 - f) ** 1.2)
    ground = 0.88 * h + 0.03 * h * _noise1d(rng, w, 0.6 * h, 3)
    grass = _jitter(rng, (0.20, 0.38, 0.12), 0.04)
    body = grass[None, None, :] * (1.0 + 0.2 * _noise2d(rng, h, w, 0.05 * h + 1, 0.02 * h + 1, 2)[..., None])
    _over(img, _below(ground, h), body)
    return img


def _snowfield(rng, h, w):
    overcast = rng.uniform() < 0.4
    top = _jitter(rng, (0.45, 0.62, 0.85) if not overcast else (0.68, 0.72, 0.78), 0.04)
    hor = _jitter(rng, (0.88, 0.92, 0.97) if not overcast else (0.86, 0.87, 0.9), 0.03)
    img = _sky(h, w, top, hor, rng.uniform(0.45, 0.6) * h)
    if not overcast:
        _suns(img, rng, h, (0.1, 0.3), 0.04 * h, (1.0, 1.0, 0.95), (1.0, 0.95, 0.85), 0.2 * h, mean_gap=4.0)
    _clouds(img, rng, int(0.5 * h), 0.9 if overcast else rng.uniform(0.0, 0.4), (0.98, 0.98, 1.0), (0.75, 0.78, 0.85))
    snow = np.float32([0.95, 0.97, 1.0])
    shadow = _jitter(rng, (0.70, 0.78, 0.92), 0.03)
    _ridge_layer(img, rng, 0.55 * h, 0.25 * h, 1.2 * h, (0.80, 0.85, 0.95), hor, 0.5, shade=0.3)
    for k in range(3):
        f = k / 2
        base = (0.62 + 0.25 * f) * h
        top_line = _ridge_layer(img, rng, base, (0.08 + 0.1 * f) * h, (0.8 + 0.5 * f) * h, snow, hor, 0.2 * (1 - f), ridged=False)
        slope = np.gradient(_blur1d(top_line, 0.06 * h)) if w > 1 else np.zeros(w, np.float32)
        depth = np.clip((_rows(h) - top_line[None, :]) / (0.06 * h), 0, None)
        sh = np.clip(slope * 4.0, 0, 0.8)[None, :] * np.exp(-depth)  # blue shadows just below lee crests
        _over(img, sh * (_rows(h) >= top_line[None, :]), shadow)
        if k < 2:
            _treeline(img, rng, top_line + 0.01 * h, spacing=(0.2 + 0.3 * f) * h, height=(0.08 + 0.14 * f) * h,
                      color=(0.08, 0.2, 0.14), haze_color=hor, haze=0.5 * (1 - f), conifer_frac=1.0, snow=0.35, fill=False)
    if rng.uniform() < 0.5:  # falling snow
        n = rng.poisson(0.004 * h * w)
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        img[ys, xs] = img[ys, xs] * 0.3 + 0.7
    return img


def _buildings(img, rng, ground: float, spacing: float, height: float, width: float, color, lights: float, win: float):
    """A skyline band: flat-topped blocks at Poisson positions, lit windows on a grid."""
    h, w = img.shape[:2]
    lefts = _poisson_x(rng, w, spacing, margin=width * 2)
    n = len(lefts)
    if n == 0:
        return
    widths = np.maximum(2.0, width * rng.uniform(0.5, 1.5, n))
    hts = np.round(height * rng.uniform(0.35, 1.0, n) ** 1.5 * rng.choice([1.0, 1.0, 1.0, 1.8], n))
    p_lit = lights * rng.uniform(0.1, 1.0, n)
    # key = height * m + id: maximum.at keeps the tallest block per column and remembers which
    m = n + 1
    key = np.full(w, -1, np.int64)
    k = int(np.ceil(widths.max())) + 1
    xs = np.floor(lefts)[:, None] + np.arange(k)[None, :]
    ok = (xs >= 0) & (xs < w) & (xs < (lefts + widths)[:, None])
    ids = np.broadcast_to(np.arange(n)[:, None], xs.shape)
    np.maximum.at(key, xs[ok].astype(np.int64), (hts[:, None].astype(np.int64) * m + ids)[ok].astype(np.int64))
    has = key >= 0
    bid = np.where(has, key % m, 0)
    top = np.where(has, ground - key // m, h + 1.0).astype(np.float32)
    mask = _below(top, h)
    body = np.broadcast_to(np.asarray(color, np.float32), (h, w, 3)).copy()
    if lights > 0 and win >= 1:
        pitch = max(2, int(round(win * 2)))
        rel_x = (np.arange(w) - np.floor(lefts[bid]).astype(np.int64))  # window grid per building
        col_i, row_i = rel_x // pitch, (np.arange(h) // pitch)
        in_win = ((rel_x % pitch) < max(1, pitch // 2))[None, :] & ((np.arange(h) % pitch) < max(1, pitch // 2))[:, None]
        cell = (row_i[:, None] * 7919 + col_i[None, :] * 104729 + bid[None, :] * 1299709 + rng.integers(1 << 30)) % 1000003
        lit = in_win & ((cell % 1000) / 1000.0 < p_lit[bid][None, :]) & (_rows(h) > top[None, :] + pitch)
        warm = np.float32([1.0, 0.82, 0.45]) * (0.7 + 0.3 * ((cell % 97) / 97.0))[..., None]
        body = np.where(lit[..., None], warm, body)
    _over(img, mask, body)


def _city_night(rng, h, w):
    top = _jitter(rng, (0.02, 0.03, 0.10), 0.02)
    hor = _jitter(rng, (0.22, 0.14, 0.30), 0.05)
    water = rng.uniform() < 0.5
    ground = (rng.uniform(0.72, 0.8) if water else rng.uniform(0.85, 0.95)) * h
    img = _sky(h, w, top, hor, ground)
    _stars(img, rng, int(0.6 * h), 0.004)
    _suns(img, rng, h, (0.08, 0.3), 0.035 * h, (0.95, 0.95, 0.88), (0.6, 0.6, 0.7), 0.12 * h, mean_gap=5.0, halo=0.25)
    _clouds(img, rng, int(0.5 * h), rng.uniform(-0.2, 0.4), (0.25, 0.22, 0.35), (0.08, 0.07, 0.14))
    _buildings(img, rng, ground, 0.05 * h, 0.45 * h, 0.07 * h, _mix((0.10, 0.10, 0.22), hor, 0.3), 0.15, 0.012 * h)
    _buildings(img, rng, ground, 0.09 * h, 0.55 * h, 0.12 * h, (0.03, 0.03, 0.06), 0.5, 0.018 * h)
    if water:
        _reflect(img, rng, ground, (0.02, 0.03, 0.07), 0.6, 0.02)
    else:
        img[int(ground):] = np.float32([0.04, 0.04, 0.05])
    return img


def _lake(rng, h, w):
    dusk = rng.uniform() < 0.5
    top = _jitter(rng, (0.20, 0.35, 0.65) if not dusk else (0.25, 0.22, 0.50), 0.04)
    hor = _jitter(rng, (0.75, 0.85, 0.90) if not dusk else (0.98, 0.62, 0.42), 0.04)
    water_y = rng.uniform(0.55, 0.68) * h
    img = _sky(h, w, top, hor, water_y)
    _suns(img, rng, h, (0.15, 0.4), 0.05 * h, (1.0, 0.95, 0.8), (1.0, 0.75, 0.5), 0.3 * h, mean_gap=3.5, halo=0.5)
    _clouds(img, rng, int(water_y), rng.uniform(0.0, 0.7), _mix((1.0, 0.95, 0.9), hor, 0.3), _mix(top, hor, 0.4), stretch=7)
    _ridge_layer(img, rng, water_y - 0.05 * h, 0.3 * h, 1.3 * h, (0.25, 0.25, 0.40), hor, 0.55, shade=0.3, fog=0.4)
    ground = water_y - 0.01 * h + 0.01 * h * _noise1d(rng, w, 0.5 * h, 2)
    _treeline(img, rng, ground, spacing=0.04 * h, height=0.13 * h, color=(0.05, 0.16, 0.10), haze_color=hor, haze=0.2)
    _reflect(img, rng, water_y, _mix(top, (0.05, 0.15, 0.2), 0.5), 0.75, 0.01)
    return img


_RENDERERS: dict[str, Callable] = {
    "mountains": _mountains, "desert": _desert, "coast": _coast, "forest": _forest,
    "snowfield": _snowfield, "city_night": _city_night, "lake": _lake,
}


# ---------------------------------------------------------------------------------------------
# public API


def image_seed(seed: int, class_name: str, index: int) -> int:
    """Per-image seed from (dataset seed, class, index): image i never depends on the count."""
    cls = _class_index(class_name)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, cls, int(index)]).generate_state(1, np.uint64)[0] >> 1)


def _class_index(class_name: str) -> int:
    try:
        return LANDSCAPE_CLASSES.index(class_name)
    except ValueError:
        raise UsageError(f"unknown landscape class {class_name!r}; choose from {', '.join(LANDSCAPE_CLASSES)}") from None


def _check_size(height: int, width: int) -> None:
    if height < 8 or width < 1:
        raise UsageError(f"landscape size {height}x{width} is too small; height must be >= 8 and width >= 1")
    if height * width > MAX_PIXELS:
        raise UsageError(f"landscape size {height}x{width} is too large ({height * width / 1e6:.0f} MP > {MAX_PIXELS / 1e6:.0f} MP)")


def render_landscape(class_name: str, height: int, width: int, seed: int) -> np.ndarray:
    """Render one landscape of the given class: uint8 (H, W, 3), deterministic in its arguments."""
    height, width = int(height), int(width)
    _check_size(height, width)
    _class_index(class_name)
    rng = np.random.default_rng(int(seed))
    img = _RENDERERS[class_name](rng, height, width)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def parse_classes(classes) -> tuple[str, ...]:
    """None -> all classes; 'a,b' or a sequence -> those (validated, in the given order, no repeats)."""
    if classes is None or classes == "" or classes == []:
        return LANDSCAPE_CLASSES
    items = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c).strip() for c in classes]
    items = [c for c in items if c]
    for c in items:
        _class_index(c)
    if len(set(items)) != len(items):
        raise UsageError(f"--classes lists a class twice: {','.join(items)}")
    return tuple(items)


def write_png_fast(arr: np.ndarray, target: Path) -> None:
    """Temp file + rename (never a half-written PNG under the final name), but no fsync per
    image: thousands of fsyncs cost more than rendering. The manifest, written last through
    io.atomic_path (fsynced), marks a complete dataset."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        from ..errors import WriteError

        raise WriteError(f"could not write {target}: {exc.strerror or exc}") from exc


def _render_job(job) -> tuple[str, str]:
    cls, idx, seed, h, w, out = job
    target = Path(out) / cls / f"{cls}_{idx:05d}.png"
    write_png_fast(render_landscape(cls, h, w, image_seed(seed, cls, idx)), target)
    return cls, str(target)


def prepare_output(out: Path, n_images: int, height: int, width: int, bytes_per_pixel: float) -> None:
    """Create the output folder and refuse up front if the PNGs clearly will not fit on disk."""
    import shutil

    from ..errors import ResourceError, WriteError

    base = out.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent  # nearest existing folder: check before creating anything
    need = n_images * height * width * bytes_per_pixel
    free = shutil.disk_usage(base).free
    if need > free:
        raise ResourceError(f"{n_images} images of {height}x{width} need about {need / 2**30:.1f} GiB but {base} has "
                            f"{free / 2**30:.1f} GiB free; lower --count or the size")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc


def _warn_if_other_dataset(out: Path, settings: dict, reporter: Reporter) -> None:
    """Writing into a folder made with other settings mixes two datasets: say so."""
    try:
        prev = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    diff = [k for k, v in settings.items() if isinstance(prev, dict) and prev.get(k) != v]
    if diff:
        reporter.warn(f"{out} already holds a dataset made with other settings ({', '.join(diff)} differ); "
                      "its files are overwritten where names match and any others stay: prefer a fresh folder")


def make_landscapes(out_dir, count: int, height: int, width: int, seed: int = 0, classes=None,
                    reporter: Reporter = SILENT, workers: int = 1) -> dict:
    """Write an ImageFolder tree `out_dir/<class>/<class>_<index>.png` (`count` images PER CLASS)
    plus `out_dir/manifest.json`; returns the manifest."""
    from ..io import OutputLock, atomic_path

    names = parse_classes(classes)
    if count < 1:
        raise UsageError(f"--count must be >= 1 (images per class), got {count}")
    _check_size(int(height), int(width))
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    n_total = len(names) * count
    prepare_output(out, n_total, int(height), int(width), bytes_per_pixel=1.0)  # PNGs here: ~0.7 B/px
    jobs = ((c, i, int(seed), int(height), int(width), str(out)) for c in names for i in range(count))  # lazy
    _warn_if_other_dataset(out, {"kind": "landscapes", "generator_version": GENERATOR_VERSION, "seed": int(seed),
                                 "height": int(height), "width": int(width)}, reporter)
    with OutputLock(out):
        with reporter.task("rendering landscapes", total=n_total, unit="img") as task:
            if workers == 1:
                for job in jobs:
                    _render_job(job)
                    task.advance(1)
            else:
                import multiprocessing as mp

                # spawn, not fork: the caller may run threads (progress bars, torch) that fork would copy mid-lock
                with mp.get_context("spawn").Pool(workers) as pool:
                    for _ in pool.imap_unordered(_render_job, jobs, chunksize=8):
                        task.advance(1)
        manifest = {
            "kind": "landscapes",
            "generator": "eqimg.landscapes",
            "generator_version": GENERATOR_VERSION,
            "classes": list(names),
            "counts": {c: count for c in names},
            "total": n_total,
            "seed": int(seed),
            "height": int(height),
            "width": int(width),
            "layout": "<class>/<class>_<index:05d>.png",
            "out_dir": str(out),
        }
        with atomic_path(out / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
