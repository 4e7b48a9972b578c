"""Column latents in HDF5: `tokenize_folder` writes them, `open_latents` / `LatentDataset` read them.

File layout (format "eqimg-latents", version 1). Images keep their aspect ratio, so widths vary;
tokens of all images are stored end to end in one flat array, chunked along columns:

    /tokens          (T, C)  posterior means, image after image, left to right
    /tokens_mirror   (T, C)  the same for each horizontally flipped image (encoded, not flipped
                             tokens: the tokenizer is only approximately mirror-equivariant)
    /offsets (N,) int64, /widths (N,) int64   image i is tokens[offsets[i] : offsets[i] + widths[i]]
    /labels (N,) int64, /paths (N,) str      class index and source path relative to the data root
    /class_names (K,) str
    /skipped_paths, /skipped_reasons (S,) str  files that could not be used
    attrs: format, format_version, complete, tokenizer_config (JSON), tokenizer_fingerprint,
           column_width, token_dim, height, dtype, created_by, listing_hash, num_images,
           num_columns, all_finite, token_mean, token_std

Crash safety: the run writes `<out>.partial` in HDF5 SWMR mode, whose on-disk state is always
readable, and commits every `commit_every` listing entries (data, flush, then the progress
counter, flush). After a crash (even kill -9) the committed prefix is copied into a fresh partial
file and the run continues. At the end the final (compact, non-SWMR) file is written from the
partial one into a temp file beside `<out>` and renamed; only then is the partial file removed.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import BadInputError, LatentFileError, UsageError, WriteError
from .io import OutputLock, _fsync_dir, state_dict_hash
from .progress import SILENT, Reporter
from .tokenizer import latent_fingerprint_of

FORMAT = "eqimg-latents"
FORMAT_VERSION = 1
CHUNK_COLUMNS = 256
_REASON_LEN = 200  # fixed-length skip reasons: variable-length strings are not allowed under SWMR
_PENDING = -2  # entry width while not yet processed; -1 means skipped


def _h5():
    import h5py

    return h5py


def _str_dtype():
    return _h5().string_dtype()


# ----------------------------------------------------------------------------- reading


class LatentFile:
    """A validated, complete latent file (read-only). Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = _open_h5(self.path)
        try:
            self._validate()
        except LatentFileError:
            self._f.close()
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:  # h5py's errors on damaged files
            self._f.close()
            raise LatentFileError(f"{self.path} could not be read (truncated or corrupt?): {_first_line(exc)}") from exc
        except BaseException:
            self._f.close()
            raise

    # -- metadata
    def _validate(self) -> None:
        f, name = self._f, self.path.name
        a = f.attrs
        from .saved_tokens import FORMAT as SAMPLE_TOKENS_FORMAT  # local: saved_tokens imports this module

        if a.get("format") == SAMPLE_TOKENS_FORMAT:
            raise LatentFileError(f"{name} holds sampled tokens (from `eqimg sample --save-tokens`), not a tokenized dataset",
                                  hint="decode it with `eqimg decode`; training needs `eqimg tokenize` output")
        if a.get("format") != FORMAT:
            raise LatentFileError(f"{name} is an HDF5 file but not an eqimg latent file (format {a.get('format')!r})")
        version = int(a.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise LatentFileError(f"{name} was written by a newer eqimg (latent format {version}, this one reads {FORMAT_VERSION}); upgrade eqimg")
        if not bool(a.get("complete", False)):
            raise LatentFileError(f"{name} is an unfinished tokenize output; rerun `eqimg tokenize` with the same arguments to resume it")
        for key in ("tokens", "tokens_mirror", "offsets", "widths", "labels", "paths", "class_names"):
            if key not in f:
                raise LatentFileError(f"{name} is missing the dataset /{key}; the file is damaged")
        try:
            self.token_dim = int(a["token_dim"])
            self.column_width = int(a["column_width"])
            self.height = int(a["height"])
            self.fingerprint = str(a["tokenizer_fingerprint"])
            self.tokenizer_config = json.loads(a["tokenizer_config"])
        except (KeyError, ValueError, TypeError) as exc:
            raise LatentFileError(f"{name} lacks valid metadata ({exc}); the file is damaged") from exc
        t, tm = f["tokens"], f["tokens_mirror"]
        if t.ndim != 2 or t.shape[1] != self.token_dim or tm.shape != t.shape:
            raise LatentFileError(f"{name}: token arrays have shapes {t.shape} and {tm.shape}, expected (columns, {self.token_dim}) for both")
        try:
            self.offsets = f["offsets"][()].astype(np.int64)
            self.widths = f["widths"][()].astype(np.int64)
            self.labels = f["labels"][()].astype(np.int64)
            self.paths = [p.decode() if isinstance(p, bytes) else str(p) for p in f["paths"][()]]
            self.class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in f["class_names"][()]]
        except OSError as exc:
            raise LatentFileError(f"{name} could not be read (truncated or corrupt?): {_first_line(exc)}") from exc
        n = len(self.offsets)
        if not (len(self.widths) == len(self.labels) == len(self.paths) == n):
            raise LatentFileError(f"{name}: index arrays disagree in length (offsets {n}, widths {len(self.widths)}, labels {len(self.labels)}, paths {len(self.paths)})")
        ends = np.cumsum(self.widths)
        if n and (np.any(self.widths <= 0) or np.any(self.offsets != ends - self.widths) or ends[-1] != t.shape[0]):
            raise LatentFileError(f"{name}: image offsets/widths do not tile the {t.shape[0]} stored columns; the file is damaged")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise LatentFileError(f"{name}: labels fall outside the {len(self.class_names)} class names; the file is damaged")
        self.all_finite = bool(a.get("all_finite", True))
        if not self.all_finite:
            raise LatentFileError(f"{name} holds NaN or infinite values; re-tokenize with a healthy tokenizer")
        self.dtype = str(a.get("dtype", t.dtype))
        self.format_version = version
        self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()}

    @property
    def num_images(self) -> int:
        return len(self.offsets)

    @property
    def num_columns(self) -> int:
        return int(self._f["tokens"].shape[0])

    def skipped(self) -> list[tuple[str, str]]:
        f = self._f
        if "skipped_paths" not in f:
            return []
        return [(_s(p), _s(r)) for p, r in zip(f["skipped_paths"][()], f["skipped_reasons"][()])]

    def image_tokens(self, i: int, mirrored: bool = False) -> np.ndarray:
        """(W_i, C) float32 tokens of image i (of its stored mirror image when `mirrored`)."""
        if not 0 <= i < self.num_images:
            raise UsageError(f"image index {i} out of range: {self.path.name} holds {self.num_images} images")
        return self.read_columns(int(self.offsets[i]), int(self.widths[i]), mirrored)

    def read_columns(self, start: int, count: int, mirrored: bool = False) -> np.ndarray:
        try:
            ds = self._f["tokens_mirror" if mirrored else "tokens"]
            out = ds[start : start + count].astype(np.float32)
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise LatentFileError(f"{self.path.name} could not be read at columns {start}..{start + count} (corrupt?): {_first_line(exc)}") from exc
        if not np.isfinite(out).all():
            raise LatentFileError(f"{self.path.name} holds NaN or infinite values at columns {start}..{start + count}; re-tokenize it")
        return out

    def verify_finite(self) -> bool:
        """Scan every stored column (chunk by chunk); True when all values are finite."""
        for key in ("tokens", "tokens_mirror"):
            ds = self._f[key]
            for s in range(0, ds.shape[0], 1 << 16):
                try:
                    if not np.isfinite(ds[s : s + (1 << 16)]).all():
                        return False
                except (OSError, KeyError, RuntimeError, ValueError) as exc:
                    raise LatentFileError(f"{self.path.name} could not be read (corrupt?): {_first_line(exc)}") from exc
        return True

    def summary(self) -> dict:
        w = self.widths
        return {
            "path": str(self.path),
            "format": FORMAT,
            "format_version": self.format_version,
            "images": self.num_images,
            "columns": self.num_columns,
            "classes": len(self.class_names),
            "class_names": self.class_names,
            "images_per_class": np.bincount(self.labels, minlength=len(self.class_names)).tolist() if self.num_images else [0] * len(self.class_names),
            "width_columns": _width_summary(w),
            "token_dim": self.token_dim,
            "column_width": self.column_width,
            "height": self.height,
            "dtype": self.dtype,
            "tokenizer_fingerprint": self.fingerprint,
            "token_mean": self.attrs.get("token_mean"),
            "token_std": self.attrs.get("token_std"),
            "skipped": len(self.skipped()),
            "created_by": self.attrs.get("created_by"),
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "LatentFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _width_summary(w: np.ndarray) -> dict:
    if not len(w):
        return {"min": 0, "max": 0, "mean": 0.0, "histogram": {}}
    # Histogram over at most 8 bins (exact widths when there are few distinct ones).
    values, counts = np.unique(w, return_counts=True)
    if len(values) <= 8:
        hist = {str(int(v)): int(c) for v, c in zip(values, counts)}
    else:
        counts, edges = np.histogram(w, bins=8)
        hist = {f"{int(np.ceil(edges[i]))}-{int(edges[i + 1])}": int(c) for i, c in enumerate(counts)}
    return {"min": int(w.min()), "max": int(w.max()), "mean": float(w.mean()), "median": float(np.median(w)), "histogram": hist}


def _s(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _open_h5(path: Path, swmr: bool = False):
    """Open read-only. `swmr=True` also opens a file whose SWMR writer died (kill -9 leaves its
    "open for writing" flag set); only then is SWMR reading used, because SWMR readers retry
    (for minutes) on a truncated file instead of failing."""
    h5py = _h5()
    if path.is_dir():
        raise LatentFileError(f"{path} is a directory, not a latent file")
    if not path.exists():
        raise LatentFileError(f"latent file not found: {path}")
    if path.stat().st_size == 0:
        raise LatentFileError(f"{path} is empty (0 bytes)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if swmr and "already open for write" in str(exc):
            try:
                return h5py.File(path, "r", swmr=True)
            except OSError as exc2:
                exc = exc2
        raise LatentFileError(f"{path} is not a readable HDF5 latent file (truncated or corrupt?): {_first_line(exc)}") from exc


def open_latents(path: str | os.PathLike, *, expected_fingerprint: str | None = None, tokenizer_name: str | None = None) -> LatentFile:
    """Open and validate a latent file; refuse one made by another tokenizer than `expected_fingerprint`."""
    lf = LatentFile(path)
    if expected_fingerprint is not None and lf.fingerprint != expected_fingerprint:
        lf.close()
        raise LatentFileError(
            f"{Path(path).name} was made by tokenizer {lf.fingerprint} but {tokenizer_name or 'the given tokenizer'} is {expected_fingerprint}",
            hint="tokenize the data again with this tokenizer (`eqimg tokenize`), or pass the tokenizer the latents were made with",
        )
    return lf


# ----------------------------------------------------------------------------- dataset


def _path_rank(path: str) -> int:
    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big")


class LatentDataset(torch.utils.data.Dataset):
    """Random crops of `crop_columns` consecutive columns: items are (tokens (k, C) float32, label).

    One item per eligible image per epoch. Images narrower than the crop are skipped
    (`num_too_narrow`). Per-item randomness (crop start, mirror choice) comes from a numpy
    Generator seeded by (seed, epoch, index), so a resumed run sees identical batches; call
    `set_epoch` before each epoch (with non-persistent DataLoader workers, which copy the dataset
    at every epoch). The split is by image, by a hash of the source path (independent of `seed`):
    held-out images never appear in training. The HDF5 handle is opened lazily in each process.
    """

    def __init__(self, path: str | os.PathLike, crop_columns: int, *, split: str = "train", val_fraction: float = 0.05,
                 mirror: bool = True, seed: int = 0, expected_fingerprint: str | None = None):
        if split not in ("train", "val", "all"):
            raise UsageError(f"unknown split {split!r}: use train, val or all")
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if crop_columns <= 0:
            raise UsageError(f"crop_columns must be positive, got {crop_columns}")
        self.path = Path(path)
        with open_latents(path, expected_fingerprint=expected_fingerprint) as lf:
            self.class_names = lf.class_names
            self.token_dim = lf.token_dim
            self.column_width = lf.column_width
            self.height = lf.height
            self.fingerprint = lf.fingerprint
            self.tokenizer_config = lf.tokenizer_config
            offsets, widths, labels, paths = lf.offsets, lf.widths, lf.labels, lf.paths
        n = len(offsets)
        # Deterministic split by image: the ceil(fraction * N) images with the smallest path hash.
        order = sorted(range(n), key=lambda i: (_path_rank(paths[i]), i))
        n_val = int(np.ceil(val_fraction * n)) if n > 1 and val_fraction > 0 else 0
        is_val = np.zeros(n, dtype=bool)
        is_val[order[:n_val]] = True
        keep = {"train": ~is_val, "val": is_val, "all": np.ones(n, dtype=bool)}[split]
        self.image_indices = np.nonzero(keep)[0]  # file index of each image in this split
        self._offsets, self._widths, self._labels = offsets, widths, labels
        self.paths = [paths[i] for i in self.image_indices]
        self.crop_columns = int(crop_columns)
        wide = widths[self.image_indices] >= crop_columns
        self._items = self.image_indices[wide]  # file index of each crop item
        self.num_too_narrow = int((~wide).sum())
        self.split, self.mirror, self.seed, self.epoch = split, mirror, int(seed), 0
        self._lf: LatentFile | None = None
        self._pid: int | None = None

    # -- process-local lazy handle (never share an open HDF5 handle across fork)
    def _file(self) -> LatentFile:
        if self._lf is None or self._pid != os.getpid():
            self._lf = LatentFile(self.path)
            self._pid = os.getpid()
        return self._lf

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lf"], state["_pid"] = None, None
        return state

    def close(self) -> None:
        if self._lf is not None and self._pid == os.getpid():
            self._lf.close()
        self._lf = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._items)

    def crop_plan(self, index: int) -> tuple[int, int, bool]:
        """(file image index, first column, mirrored) of item `index` for the current epoch."""
        i = int(self._items[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        start = int(rng.integers(0, self._widths[i] - self.crop_columns + 1))
        mirrored = bool(self.mirror and rng.random() < 0.5)
        return i, start, mirrored

    def __getitem__(self, index: int):
        if not 0 <= index < len(self._items):
            raise IndexError(index)
        i, start, mirrored = self.crop_plan(index)
        cols = self._file().read_columns(int(self._offsets[i]) + start, self.crop_columns, mirrored)
        return torch.from_numpy(cols), int(self._labels[i])

    # -- whole images (split-local index)
    @property
    def num_images(self) -> int:
        return len(self.image_indices)

    def image_width(self, i: int) -> int:
        return int(self._widths[self.image_indices[i]])

    def image_label(self, i: int) -> int:
        return int(self._labels[self.image_indices[i]])

    def image_tokens(self, i: int, mirrored: bool = False) -> torch.Tensor:
        """(W_i, C) float32 tokens of the split's image i."""
        if not 0 <= i < self.num_images:
            raise UsageError(f"image index {i} out of range: the {self.split} split holds {self.num_images} images")
        return torch.from_numpy(self._file().image_tokens(int(self.image_indices[i]), mirrored))


# ----------------------------------------------------------------------------- writing


@dataclass
class TokenizeResult:
    path: str
    images: int
    columns: int
    skipped: int
    skipped_examples: list  # first few (path, reason)
    resumed_from: int  # listing entries already done when this run started
    seconds: float
    images_per_s: float  # images (each with its mirror) encoded per second in this run
    tokenizer_fingerprint: str
    dtype: str
    token_dim: int
    column_width: int

    def to_dict(self) -> dict:
        return asdict(self)


def _storable(name: str) -> str:
    """A file name as valid UTF-8 text (undecodable bytes become \\xNN escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _listing_hash(rel_paths: Sequence[str], labels: Sequence[int], class_names: Sequence[str], extra: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"classes": list(class_names), "extra": extra}, sort_keys=True).encode())
    for p, y in zip(rel_paths, labels):
        h.update(f"{p}\t{int(y)}\n".encode())
    return h.hexdigest()[:16]


def _config_json(tok) -> str:
    cfg = getattr(tok, "config", None)
    if cfg is None:
        return "{}"
    d = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    return json.dumps(d, sort_keys=True, default=str)


def _create_partial(path: Path, header: dict, rel_paths: list[str], labels: np.ndarray, class_names: list[str], token_dim: int,
                    dtype: str, prev=None):
    """Create a fresh partial file (optionally seeded with the committed prefix of `prev`, an open
    SWMR reader) and return it opened for SWMR writing."""
    h5py = _h5()
    n = len(rel_paths)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    f = h5py.File(tmp, "w", libver="latest")
    try:
        for k, v in header.items():
            f.attrs[k] = v
        f.attrs["complete"] = False
        f.create_dataset("_listing_paths", data=np.array(rel_paths, dtype=object), dtype=_str_dtype())
        f.create_dataset("labels_all", data=np.asarray(labels, dtype=np.int64))
        f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=_str_dtype())
        entry_offset = np.zeros(n, dtype=np.int64)
        entry_width = np.full(n, _PENDING, dtype=np.int64)
        done, cols = 0, 0
        skip_idx = np.zeros(0, dtype=np.int64)
        skip_reason = np.zeros(0, dtype=f"S{_REASON_LEN}")
        if prev is not None:
            done, cols = (int(x) for x in prev["_progress"][()])
            entry_offset[:done] = prev["_entry_offset"][:done]
            entry_width[:done] = prev["_entry_width"][:done]
            si = prev["_skip_index"][()]
            keep = si < done
            skip_idx, skip_reason = si[keep], prev["_skip_reason"][()][keep]
        kw = dict(maxshape=(None, token_dim), chunks=(CHUNK_COLUMNS, token_dim), dtype=dtype)
        for key in ("tokens", "tokens_mirror"):
            ds = f.create_dataset(key, shape=(cols, token_dim), **kw)
            for s in range(0, cols, 1 << 16):  # copy the committed prefix block by block
                e = min(cols, s + (1 << 16))
                ds[s:e] = prev[key][s:e]
        f.create_dataset("_entry_offset", data=entry_offset)
        f.create_dataset("_entry_width", data=entry_width)
        f.create_dataset("_skip_index", data=skip_idx, maxshape=(None,), chunks=(1024,))
        f.create_dataset("_skip_reason", data=skip_reason, maxshape=(None,), chunks=(1024,), dtype=f"S{_REASON_LEN}")
        f.create_dataset("_progress", data=np.array([done, cols], dtype=np.int64))
        f.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            f.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise
    f = h5py.File(path, "r+", libver="latest")
    f.swmr_mode = True  # from here on the on-disk file is always a consistent snapshot
    return f


def _check_resume(prev, header: dict, partial: Path) -> None:
    a = prev.attrs
    if a.get("format") != FORMAT or "_progress" not in prev:
        raise LatentFileError(f"{partial} is not an eqimg partial latent file; move it away or delete it")
    if str(a.get("tokenizer_fingerprint")) != header["tokenizer_fingerprint"]:
        raise LatentFileError(
            f"{partial.name} (an interrupted run) was made by tokenizer {a.get('tokenizer_fingerprint')} but the given tokenizer is {header['tokenizer_fingerprint']}; refusing to mix them",
            hint=f"resume with the original tokenizer, or delete {partial} to start over",
        )
    if str(a.get("listing_hash")) != header["listing_hash"]:
        raise LatentFileError(
            f"{partial.name} (an interrupted run) was made from another file list or settings (dtype, max width); refusing to resume",
            hint=f"resume with the original data folder and options, or delete {partial} to start over",
        )


def _finalize(f, partial: Path, out: Path) -> tuple[int, list]:
    """Write the final file from the (still open) partial one into a temp file beside `out`,
    rename it to `out`, then remove the partial file. A crash at any point leaves either the
    resumable partial file or the finished `out`."""
    from .io import atomic_path

    h5py = _h5()
    ew, eo = f["_entry_width"][()], f["_entry_offset"][()]
    kept = np.nonzero(ew >= 0)[0]
    paths = f["_listing_paths"][()]
    labels_all = f["labels_all"][()]
    si, sr = f["_skip_index"][()], f["_skip_reason"][()]
    skipped = [(_s(paths[i]), _s(r)) for i, r in zip(si, sr)]
    C = f["tokens"].shape[1]
    total_cols = int(f["_progress"][1])
    with atomic_path(out, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as g:
            for k, v in f.attrs.items():
                g.attrs[k] = v
            g.attrs["complete"] = False  # set last
            # Copy the tokens block by block; one pass gives the NaN/inf flag and the statistics.
            total, s1, s2, finite = 0, 0.0, 0.0, True
            for key in ("tokens", "tokens_mirror"):
                src = f[key]
                dst = g.create_dataset(key, shape=(total_cols, C), chunks=(CHUNK_COLUMNS, C) if total_cols else None,
                                       maxshape=(None, C), dtype=src.dtype)
                for s in range(0, total_cols, 1 << 16):
                    e = min(total_cols, s + (1 << 16))
                    block = src[s:e]
                    dst[s:e] = block
                    b64 = block.astype(np.float64)
                    finite &= bool(np.isfinite(b64).all())
                    total += b64.size
                    s1 += float(b64.sum())
                    s2 += float((b64 * b64).sum())
            g.create_dataset("offsets", data=eo[kept].astype(np.int64))
            g.create_dataset("widths", data=ew[kept].astype(np.int64))
            g.create_dataset("labels", data=labels_all[kept].astype(np.int64))
            g.create_dataset("paths", data=np.array([_s(p) for p in paths[kept]], dtype=object), dtype=_str_dtype())
            g.create_dataset("class_names", data=np.array([_s(c) for c in f["class_names"][()]], dtype=object), dtype=_str_dtype())
            g.create_dataset("skipped_paths", data=np.array([p for p, _ in skipped], dtype=object), dtype=_str_dtype())
            g.create_dataset("skipped_reasons", data=np.array([r for _, r in skipped], dtype=object), dtype=_str_dtype())
            mean = s1 / max(total, 1)
            g.attrs["token_mean"] = mean
            g.attrs["token_std"] = float(np.sqrt(max(s2 / max(total, 1) - mean * mean, 0.0)))
            g.attrs["all_finite"] = finite
            g.attrs["num_images"] = len(kept)
            g.attrs["num_columns"] = total_cols
            g.attrs["complete"] = True
        f.close()
    partial.unlink(missing_ok=True)
    _fsync_dir(out.parent)
    return len(kept), skipped


def tokenize_folder(
    tokenizer,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float16",
    batch_size: int = 32,
    commit_every: int = 256,
    max_width: int | None = None,
    overwrite: bool = False,
    reporter: Reporter = SILENT,
    scan: Callable | None = None,
    load: Callable | None = None,
    on_commit: Callable[[int], None] | None = None,
) -> TokenizeResult:
    """Encode every image of an ImageFolder-style directory (and its mirror image) into `out`.

    `tokenizer` follows the eqcli_core.tokenizer interface (encode, column_width, token_dim, height,
    fingerprint, config) and sits on the device to use. Resumes `<out>.partial` when present and
    compatible. `scan`/`load` default to eqcli_core.data.images.scan_image_folder /
    load_for_tokenize; `on_commit(entries_done)` is called after each commit (tests use it to
    interrupt a run).
    """
    import time

    if dtype not in ("float16", "float32"):
        raise UsageError(f"unknown dtype {dtype!r}: use float16 or float32")
    if batch_size <= 0 or commit_every <= 0:
        raise UsageError("batch size and commit interval must be positive")
    if scan is None or load is None:
        from .data import images as _images

        scan = scan or _images.scan_image_folder
        load = load or _images.load_for_tokenize
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise BadInputError(f"data folder not found: {data_dir}")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(out)

    samples, class_names, scan_skipped = scan(data_dir)
    if not samples:
        raise BadInputError(f"no readable images found under {data_dir}" + (f" ({len(scan_skipped)} files skipped)" if scan_skipped else ""))
    for p, why in list(scan_skipped)[:5]:
        reporter.warn(f"skipped {p}: {why}")
    rel_paths = [os.path.relpath(p, data_dir) for p, _ in samples]
    # HDF5 strings must be valid UTF-8: non-UTF-8 file names are stored with \xNN escapes
    # (rel_paths keeps the real names for loading)
    stored_paths = [_storable(p) for p in rel_paths]
    class_names = [_storable(c) for c in class_names]
    labels = np.array([int(y) for _, y in samples], dtype=np.int64)
    cw, C, H = int(tokenizer.column_width), int(tokenizer.token_dim), int(tokenizer.height)
    fingerprint = latent_fingerprint_of(tokenizer) or state_dict_hash(tokenizer.state_dict())
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer_config": _config_json(tokenizer),
        "tokenizer_fingerprint": str(fingerprint),
        "column_width": cw,
        "token_dim": C,
        "height": H,
        "dtype": dtype,
        "created_by": f"eqimg {_version()}",
        "listing_hash": _listing_hash(stored_paths, labels, class_names, {"dtype": dtype, "max_width": max_width, "height": H, "cw": cw}),
    }
    load_kw = {} if max_width is None else {"max_width": max_width}
    device = next((p.device for p in tokenizer.parameters()), torch.device("cpu")) if hasattr(tokenizer, "parameters") else torch.device("cpu")
    n = len(rel_paths)

    with OutputLock(out.parent, name=f".{out.name}.lock"):
        prev = None
        if partial.exists():
            try:
                prev = _open_h5(partial, swmr=True)
            except LatentFileError as exc:
                raise LatentFileError(f"the interrupted run's file {partial} cannot be read ({exc.message}); delete it to start over") from exc
        try:
            if prev is not None:
                _check_resume(prev, header, partial)
            try:
                f = _create_partial(partial, header, stored_paths, labels, class_names, C, dtype, prev=prev)
            except OSError as exc:
                raise WriteError(f"could not write {partial}: {_first_line(exc)}") from exc
        finally:
            if prev is not None:
                prev.close()
        done, cols = (int(x) for x in f["_progress"][()])
        start_done = done
        if done:
            reporter.log(f"resuming {partial.name}: {done} of {n} files already done")
        t0 = time.perf_counter()
        encoded = 0
        try:
            tokenizer.eval() if hasattr(tokenizer, "eval") else None
            with reporter.task("tokenize", total=n, unit="img") as task:
                task.update(completed=done)
                while done < n:
                    stop = min(n, done + commit_every)
                    results, skips = _encode_group(tokenizer, rel_paths, data_dir, range(done, stop), load, load_kw, H, cw, dtype, batch_size, device)
                    for i, why in skips:
                        reporter.warn(f"skipped {stored_paths[i]}: {why}")
                    cols = _commit(f, results, skips, done, stop, cols, C)
                    encoded += len(results)
                    done = stop
                    task.update(completed=done, img_per_s=encoded / max(time.perf_counter() - t0, 1e-9))
                    if on_commit is not None:
                        on_commit(done)
        except OSError as exc:  # disk full, permissions, I/O errors while writing
            f.close()
            raise WriteError(f"writing {partial} failed: {_first_line(exc)}; what was committed is kept, rerun to resume") from exc
        except BaseException:
            f.close()  # the committed prefix stays resumable
            raise
        seconds = time.perf_counter() - t0
        if not (f["_entry_width"][()] >= 0).any():
            reasons = [_s(r) for r in f["_skip_reason"][:1]]
            f.close()
            partial.unlink(missing_ok=True)
            raise BadInputError(f"none of the {n} images under {data_dir} could be tokenized; first reason: {reasons[0] if reasons else '?'}")
        try:
            num_images, skipped = _finalize(f, partial, out)
        except OSError as exc:
            raise WriteError(f"could not finish {out}: {_first_line(exc)}; rerun to resume") from exc
        finally:
            if f:  # still open when finalising failed; the partial file stays resumable
                f.close()
    all_skipped = [(p, w) for p, w in scan_skipped] + skipped
    with open_latents(out) as lf:
        columns = lf.num_columns
    return TokenizeResult(
        path=str(out), images=num_images, columns=columns, skipped=len(all_skipped),
        skipped_examples=[[str(p), str(w)] for p, w in all_skipped[:5]], resumed_from=start_done,
        seconds=round(seconds, 3), images_per_s=round(encoded / seconds, 2) if seconds > 0 else 0.0,
        tokenizer_fingerprint=header["tokenizer_fingerprint"], dtype=dtype, token_dim=C, column_width=cw,
    )


def _version() -> str:
    from . import __version__

    return __version__


@torch.no_grad()
def _encode_group(tokenizer, rel_paths, root: Path, indices, load, load_kw, H, cw, dtype, batch_size, device):
    """Load and encode listing entries `indices`; images of equal width share batches.
    Returns ({entry: (tokens, mirror tokens) as numpy}, [(entry, skip reason)])."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    images, skips = {}, []
    for i in indices:
        try:
            x = load(root / rel_paths[i], H, cw, **load_kw)
        except BadInputError as exc:
            skips.append((i, exc.message))
            continue
        if x.ndim != 3 or x.shape[0] != 3 or x.shape[1] != H or x.shape[2] < cw:
            skips.append((i, f"loader returned shape {tuple(x.shape)}, expected (3, {H}, >={cw})"))
            continue
        images[i] = x[:, :, : x.shape[2] - x.shape[2] % cw]  # whole columns only
    by_width: dict[int, list[int]] = defaultdict(list)
    for i, x in images.items():
        by_width[x.shape[2]].append(i)
    results = {}
    for _, idx in sorted(by_width.items()):
        for s in range(0, len(idx), batch_size):
            part = idx[s : s + batch_size]
            x = torch.stack([images[i] for i in part]).to(device=device, dtype=torch.float32)
            # Encode the flipped images themselves: tokens of a mirror image are not flipped tokens.
            # float32 even on CUDA (no autocast): these values are stored and reused for every epoch.
            z = tokenizer.encode(torch.cat([x, x.flip(-1)])).float().cpu().numpy()
            b = len(part)
            for j, i in enumerate(part):
                zo, zm = z[j].astype(np_dtype), z[b + j].astype(np_dtype)
                if not (np.isfinite(zo).all() and np.isfinite(zm).all()):
                    finite32 = np.isfinite(z[j]).all() and np.isfinite(z[b + j]).all()
                    skips.append((i, "values overflow float16; use --dtype float32" if finite32 else "the tokenizer produced NaN/inf for it"))
                    continue
                results[i] = (zo, zm)
    skips.sort()
    return results, skips


def _commit(f, results: dict, skips: list, lo: int, hi: int, cols: int, C: int) -> int:
    """Append entries lo..hi-1 in listing order, flush, then advance the progress counter."""
    tok, mir = f["tokens"], f["tokens_mirror"]
    order = [i for i in range(lo, hi) if i in results]
    add = sum(results[i][0].shape[0] for i in order)
    if add:
        tok.resize((cols + add, C))
        mir.resize((cols + add, C))
        tok[cols : cols + add] = np.concatenate([results[i][0] for i in order])
        mir[cols : cols + add] = np.concatenate([results[i][1] for i in order])
    eo, ew = np.zeros(hi - lo, dtype=np.int64), np.full(hi - lo, -1, dtype=np.int64)
    c = cols
    for i in order:
        eo[i - lo], ew[i - lo] = c, results[i][0].shape[0]
        c += results[i][0].shape[0]
    f["_entry_offset"][lo:hi] = eo
    f["_entry_width"][lo:hi] = ew
    if skips:
        si, sr = f["_skip_index"], f["_skip_reason"]
        m = si.shape[0]
        si.resize((m + len(skips),))
        sr.resize((m + len(skips),))
        si[m:] = np.array([i for i, _ in skips], dtype=np.int64)
        sr[m:] = np.array([w.encode("utf-8", "replace")[:_REASON_LEN] for _, w in skips], dtype=f"S{_REASON_LEN}")
    f.flush()  # data first ...
    f["_progress"][...] = np.array([hi, c], dtype=np.int64)
    f.flush()  # ... then the counter that makes it count
    return c
