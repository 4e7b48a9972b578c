"""Photo-texture crops: random square crops of the real photographs that ship inside
scikit-image (skimage.data; all local files, nothing is downloaded), one class per photo.

A crop of side c (uniform in [size, min(2 * size, shorter side)], or the shorter side when the
photo is smaller than `size`) at a uniform random position, resized to size x size, flipped
left-right with probability 1/2. Crop i of a class depends only on (seed, class, i).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..progress import SILENT, Reporter

TEXTURES_VERSION = 1
# class name -> skimage.data function; all bundled with the wheel (checked offline)
TEXTURE_SOURCES: dict[str, str] = {
    "brick": "brick", "grass": "grass", "gravel": "gravel", "coffee": "coffee", "chelsea": "chelsea",
    "astronaut": "astronaut", "rocket": "rocket", "immunohistochemistry": "immunohistochemistry",
    "hubble": "hubble_deep_field", "camera": "camera",
}
TEXTURE_CLASSES: tuple[str, ...] = tuple(TEXTURE_SOURCES)


@lru_cache(maxsize=None)
def source_image(class_name: str) -> np.ndarray:
    """The full source photo as uint8 (H, W, 3) (grey photos are replicated to RGB)."""
    if class_name not in TEXTURE_SOURCES:
        raise UsageError(f"unknown texture class {class_name!r}; choose from {', '.join(TEXTURE_CLASSES)}")
    import skimage.data

    try:
        a = np.asarray(getattr(skimage.data, TEXTURE_SOURCES[class_name])())
    except Exception as exc:  # a stripped-down scikit-image install
        raise UsageError(f"scikit-image's bundled photo {TEXTURE_SOURCES[class_name]!r} is unavailable: {str(exc).splitlines()[0][:120]}") from exc
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def crop_texture(class_name: str, size: int, seed: int) -> np.ndarray:
    """One random crop, uint8 (size, size, 3); deterministic in its arguments."""
    from PIL import Image

    if size < 1:
        raise UsageError(f"--size must be >= 1, got {size}")
    src = source_image(class_name)
    h, w = src.shape[:2]
    m = min(h, w)
    rng = np.random.default_rng(int(seed))
    c = int(rng.integers(size, min(2 * size, m) + 1)) if size <= m else m
    y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    patch = src[y:y + c, x:x + c]
    if rng.uniform() < 0.5:
        patch = patch[:, ::-1]
    if c != size:
        patch = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.BICUBIC))
    return np.ascontiguousarray(patch)


def texture_seed(seed: int, class_name: str, index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, TEXTURE_CLASSES.index(class_name), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def make_textures(out_dir, count: int, size: int = 128, seed: int = 0, classes=None, reporter: Reporter = SILENT) -> dict:
    """Write `out_dir/<class>/<class>_<index>.png` (`count` crops PER CLASS) and manifest.json."""
    from ..io import OutputLock, atomic_path
    from .landscapes import _warn_if_other_dataset, prepare_output, write_png_fast

    if classes in (None, "", []):
        names = TEXTURE_CLASSES
    else:
        names = tuple(c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes) if c.strip())
        bad = [c for c in names if c not in TEXTURE_SOURCES]
        if bad or not names:
            raise UsageError(f"unknown texture class {bad[0] if bad else classes!r}; choose from {', '.join(TEXTURE_CLASSES)}")
        if len(set(names)) != len(names):
            raise UsageError(f"--classes lists a class twice: {','.join(names)}")
    if count < 1:
        raise UsageError(f"--count must be >= 1 (crops per class), got {count}")
    if not 8 <= size <= 4096:
        raise UsageError(f"--size must be between 8 and 4096, got {size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    prepare_output(out, len(names) * count, int(size), int(size), bytes_per_pixel=3.0)  # photos barely compress
    _warn_if_other_dataset(out, {"kind": "textures", "generator_version": TEXTURES_VERSION, "seed": int(seed),
                                 "height": int(size), "width": int(size)}, reporter)
    with OutputLock(out):
        with reporter.task("cropping textures", total=len(names) * count, unit="img") as task:
            for cls in names:
                for i in range(count):
                    arr = crop_texture(cls, size, texture_seed(seed, cls, i))
                    write_png_fast(arr, out / cls / f"{cls}_{i:05d}.png")
                    task.advance(1)
        manifest = {
            "kind": "textures",
            "generator": "eqimg.textures",
            "generator_version": TEXTURES_VERSION,
            "classes": list(names),
            "sources": {c: f"skimage.data.{TEXTURE_SOURCES[c]}" for c in names},
            "counts": {c: count for c in names},
            "total": len(names) * count,
            "seed": int(seed),
            "height": int(size),
            "width": int(size),
            "layout": "<class>/<class>_<index:05d>.png",
            "out_dir": str(out),
        }
        with atomic_path(out / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
