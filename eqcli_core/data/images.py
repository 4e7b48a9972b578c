"""Robust image input: any file a user points at either loads as 8-bit RGB or is refused with
one clear line (BadInputError), and folder scans skip what cannot be used, with reasons.

Conventions (documented in docs/data.md):
- Transparency (LA, RGBA, PA, P with a transparent index) is composited on WHITE.
- 16-bit and 32-bit integer images are scaled to 8 bits (value / 257); float images in [0, 1]
  are scaled by 255, other float ranges are clipped to [0, 255].
- EXIF orientation is applied; animated images give their first frame.
- Images over `MAX_PIXELS` (40 MP) are refused before decoding (decompression bombs).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError, UsageError
from ..progress import SILENT, Reporter

MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
})
WHITE = (255, 255, 255)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _show(path) -> str:
    # non-UTF-8 names (surrogate escapes) must still print
    return os.fsdecode(os.fsencode(str(path))).encode("utf-8", "backslashreplace").decode("utf-8")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB 8-bit (alpha composited on white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im.convert("F") if mode.startswith("I;16") else im, dtype=np.float64)
        if mode == "F" and np.nanmax(a, initial=0.0) <= 1.0:
            a = a * 255.0
        elif mode != "F":
            a = a / 257.0 if (mode.startswith("I;16") or np.max(a, initial=0) > 255) else a
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1" or mode == "L":
        if "transparency" in im.info:
            im = im.convert("LA")
        else:
            return im.convert("RGB")
    if im.mode in ("LA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        base = Image.new("RGB", im.size, WHITE)
        base.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return base
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...


def load_rgb(path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load any image file as an 8-bit RGB PIL image, or raise BadInputError with one line."""
    p = Path(path)
    where = _show(p)
    if p.is_dir():
        raise BadInputError(f"{where} is a directory, not an image")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise BadInputError(f"cannot read {where}: {exc.strerror or _short(exc)}") from exc
    if size == 0:
        raise BadInputError(f"{where} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as src:
                im = src
                w, h = im.size
                if w * h > max_pixels:
                    raise BadInputError(f"{where} is {w}x{h} ({w * h / 1e6:.0f} MP), over the {max_pixels / 1e6:.0f} MP limit (decompression-bomb guard)")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # animated: first frame
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # a broken EXIF block should not lose the picture
                    pass
                out = _to_rgb(im)
                out.load()
                return out.copy() if out is src else out  # detach from the file
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInputError(f"{where} is too large to decode safely (decompression-bomb guard): {_short(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise BadInputError(f"{where} is not an image Pillow can read (unknown or corrupt format)") from exc
    except PermissionError as exc:
        raise BadInputError(f"cannot read {where}: permission denied") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        msg = _short(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise BadInputError(f"{where} is truncated or corrupt ({msg})") from exc
        raise BadInputError(f"{where} could not be decoded: {msg}") from exc


# ---------------------------------------------------------------------------------------------
# folders


def scan_image_folder(root) -> tuple[list[tuple[str, int]], list[str], list[tuple[str, str]]]:
    """Find images under `root`.

    `root/<class>/**` gives one class per subfolder (sorted names -> ids 0..K-1); a folder with no
    subfolders is a single class named after the folder. Returns (samples [(path, label)],
    class_names, skipped [(path, reason)]). Raises BadInputError when nothing usable is found."""
    root = Path(root)
    where = _show(root)
    if not root.exists():
        raise BadInputError(f"image folder not found: {where}")
    if not root.is_dir():
        raise BadInputError(f"{where} is not a directory")
    skipped: list[tuple[str, str]] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise BadInputError(f"cannot list {where}: {exc.strerror or _short(exc)}") from exc
    subdirs = [e for e in entries if _is_dir(e) and not e.name.startswith(".")]
    if subdirs:
        groups = [(e.name, Path(e.path)) for e in subdirs]
        for e in entries:
            if not _is_dir(e) and not e.name.startswith(".") and _is_image_name(e.name):
                skipped.append((e.path, "image at the root of a class-folder tree (only <root>/<class>/ files are used)"))
    else:
        groups = [(root.resolve().name or "images", root)]
    samples: list[tuple[str, int]] = []
    class_names: list[str] = []
    for name, folder in groups:
        files = _walk_images(folder, skipped)
        if not files:
            skipped.append((str(folder), "folder has no usable images"))
            continue
        label = len(class_names)
        class_names.append(name)
        samples.extend((f, label) for f in files)
    if not samples:
        reasons = "; ".join(f"{_show(p)}: {r}" for p, r in skipped[:3])
        raise BadInputError(f"no usable images under {where}" + (f" ({reasons}{' ...' if len(skipped) > 3 else ''})" if skipped else ""),
                            hint=f"expected image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {where} or its class subfolders")
    return samples, class_names, skipped


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path, skipped: list) -> list[str]:
    """Sorted image files under folder (recursing, following links once: no loops)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [str(folder)]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError as exc:
            skipped.append((d, f"cannot open folder: {exc.strerror or _short(exc)}"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            skipped.append((d, "symlink loop or repeated folder (already scanned)"))
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((d, f"cannot list folder: {exc.strerror or _short(exc)}"))
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue  # hidden files: lock files, editor droppings
            if e.is_symlink() and not os.path.exists(e.path):
                skipped.append((e.path, "broken symbolic link"))
                continue
            if _is_dir(e):
                subdirs.append(e.path)
                continue
            if not _is_image_name(e.name):
                if e.name != "manifest.json":
                    skipped.append((e.path, "not an image file extension"))
                continue
            try:
                size = e.stat().st_size
            except OSError as exc:
                skipped.append((e.path, f"cannot stat: {exc.strerror or _short(exc)}"))
                continue
            if size == 0:
                skipped.append((e.path, "empty file (0 bytes)"))
                continue
            out.append(e.path)
        stack.extend(reversed(subdirs))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# resizing / tensors


def _to_tensor(im: Image.Image) -> torch.Tensor:
    """uint8 RGB PIL -> (3, H, W) float32 in [-1, 1]."""
    a = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())  # (H, W, 3)
    return a.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def _resized_window(im: Image.Image, height: int, width: int, pick_left) -> Image.Image:
    """Resize to height H keeping the aspect ratio and take the width-W window starting at
    `pick_left(resized_width)`. If the resized image is narrower than W, fit the width instead
    and crop the height centrally (never squash). Only the window is resampled (Pillow's `box`),
    so a 100000-px panorama costs no more than a square."""
    w, h = im.size
    new_w = max(1, round(w * height / h))
    if new_w < width:
        new_h = max(height, round(h * width / w))
        s, top = h / new_h, (new_h - height) // 2
        return im.resize((width, height), Image.BICUBIC, box=(0, top * s, w, (top + height) * s))
    left, s = int(pick_left(new_w)), w / new_w
    return im.resize((width, height), Image.BICUBIC, box=(left * s, 0, (left + width) * s, h))


def load_for_tokenize(path, height: int, column_width: int, max_width: int = 16384) -> torch.Tensor:
    """Load an image for tokenizing: height H (aspect kept), width centre-cropped down to a
    multiple of column_width (at least one column, at most max_width). -> (3, H, W') in [-1, 1]."""
    if height < 1 or column_width < 1:
        raise UsageError(f"height ({height}) and column width ({column_width}) must be positive")
    if max_width < column_width:
        raise UsageError(f"max width {max_width} is smaller than one column ({column_width} px)")
    im = load_rgb(path)
    new_w = max(1, round(im.size[0] * height / im.size[1]))
    keep = max(column_width, min(new_w // column_width * column_width, max_width // column_width * column_width))
    return _to_tensor(_resized_window(im, height, keep, lambda w: (w - keep) // 2))


class ImageCropDataset(torch.utils.data.Dataset):
    """ImageFolder crops of a fixed (H, W): resize to height H (aspect kept), then a random
    horizontal crop of width W (training) or the centre crop. Files that fail to load or are
    smaller than `min_size` px on a side are skipped by substituting the next loadable index.

    Random crops depend only on (seed, epoch, index): call `set_epoch(e)` for new crops."""

    def __init__(self, root, height: int, width: int, *, random_crop: bool = True, seed: int = 0,
                 min_size: int | None = None, reporter: Reporter = SILENT):
        if height < 1 or width < 1:
            raise UsageError(f"crop size {height}x{width} must be positive")
        self.root, self.height, self.width = str(root), int(height), int(width)
        self.random_crop, self.seed, self.epoch = random_crop, int(seed), 0
        self.min_size = 8 if min_size is None else int(min_size)
        self.samples, self.classes, self.skipped_files = scan_image_folder(root)
        self.skipped_files = list(self.skipped_files)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._bad: set[int] = set()
        self._warned = False
        self._reporter = reporter

    @property
    def skipped(self) -> int:
        """How many files were skipped so far (at scan time and while loading)."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _load(self, i: int) -> torch.Tensor:
        path = self.samples[i][0]
        im = load_rgb(path)
        if min(im.size) < self.min_size:
            raise BadInputError(f"{_show(path)} is {im.size[0]}x{im.size[1]}, smaller than {self.min_size} px on a side")
        def pick_left(w: int) -> int:
            if self.random_crop and w > self.width:
                return int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, w - self.width + 1))
            return (w - self.width) // 2

        return _to_tensor(_resized_window(im, self.height, self.width, pick_left))

    def __getitem__(self, index: int):
        n = len(self.samples)
        for k in range(n):
            i = (index + k) % n  # deterministic substitute: the next loadable file
            if i in self._bad:
                continue
            try:
                return self._load(i), self.samples[i][1]
            except BadInputError as exc:
                self._bad.add(i)
                self.skipped_files.append((self.samples[i][0], exc.message))
                if not self._warned:
                    self._warned = True
                    msg = f"skipping unreadable images (first: {exc.message}); count in dataset.skipped"
                    if self._reporter is SILENT:
                        warnings.warn(msg, RuntimeWarning, stacklevel=2)
                    else:
                        self._reporter.warn(msg)
        raise BadInputError(f"none of the {n} images under {_show(self.root)} could be loaded")
