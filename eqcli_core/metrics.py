"""Sample-quality metrics: Frechet distance (FID) and kernel distance (KID) over image features.

Feature spaces:
- "inception-v3": the torchscript Inception-v3 that clean-fid uses (clean-fid's "clean" resize:
  PIL bicubic on float pixels to 299x299). Numbers are comparable with published FID. The file
  is never downloaded here: pass a local copy (`inception_weights=`).
- "efficientnet-lite0": the offline EfficientNet-Lite0 (eqcli_core.features), 1280-d pooled
  features at 224x224. Always available, but NOT comparable with published FID/KID numbers.

Wide images are cut into square height x height tiles, left to right (never squashed), so a
1024x256 sample contributes 4 tiles; a tall image contributes its centred square crop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import BadInputError, EqimgError, UsageError
from .progress import SILENT, Reporter

INCEPTION_FILENAME = "inception-2015-12-05.pt"  # clean-fid's file name
MIN_TILE = 16  # images smaller than this on a side are skipped: their tiles carry no measurable content
INCEPTION_ENV = "EQIMG_INCEPTION_WEIGHTS"
STATS_FORMAT = "eqimg-fid-stats"
MAX_STORED_FEATURES = 10000  # stats files keep raw features (float16) up to this many, for KID


# ----------------------------------------------------------------------------- distances

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise BadInputError(f"need at least 2 feature vectors for statistics, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2, *, method: str = "eigh") -> float:
    """||mu1-mu2||^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)).

    "eigh" (default): tr((s1 s2)^(1/2)) = sum sqrt(eig(A s2 A)) with A = s1^(1/2); A s2 A is
    symmetric PSD, so this is real and stable even for rank-deficient covariances (few samples).
    "sqrtm": scipy.linalg.sqrtm(s1 s2) as in pytorch-fid/clean-fid (eps offset if singular,
    imaginary parts dropped when negligible)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise UsageError(f"feature statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        a = _psd_sqrt(s1)
        m = a @ s2 @ a
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    elif method == "sqrtm":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            off = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
        if np.iscomplexobj(covmean):
            covmean = covmean.real  # numerical noise; the true result is real
        tr_covmean = np.trace(covmean)
    else:
        raise UsageError(f"unknown Frechet method {method!r}: use eigh or sqrtm")
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000, *, seed: int = 0) -> tuple[float, float]:
    """KID: mean and std over `subsets` random subsets (size min(subset_size, n1, n2)) of the
    unbiased polynomial-kernel MMD^2 between two feature sets. Named for Inception, works in
    any feature space."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise UsageError(f"KID needs two (N, D) feature sets of the same D, got {f1.shape} and {f2.shape}")
    size = min(subset_size, f1.shape[0], f2.shape[0])
    if size < 2:
        raise BadInputError("KID needs at least 2 images on each side")
    rng = np.random.default_rng(seed)
    vals = [_poly_mmd2(f1[rng.choice(f1.shape[0], size, replace=False)], f2[rng.choice(f2.shape[0], size, replace=False)]) for _ in range(max(1, subsets))]
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------- images -> tiles

from .data.images import IMAGE_EXTENSIONS as IMAGE_SUFFIXES  # noqa: E402  (the same files as every other command)
from .data.images import load_rgb as _load_rgb  # noqa: E402  (EXIF, 16-bit, palettes, bombs: one clear error)


def _as_uint8_hwc(img) -> np.ndarray:
    """Accept an (H,W,3) uint8 array, a PIL image, or a (3,H,W) tensor in [-1,1] or uint8."""
    if torch.is_tensor(img):
        t = img.detach().cpu()
        if t.dim() == 3 and t.shape[0] == 3:
            t = t.permute(1, 2, 0)
        if t.dtype != torch.uint8:
            t = ((t.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        img = t.numpy()
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BadInputError(f"expected an RGB image, got an array of shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:  # floats: [-1,1] if negative values occur, else [0,1], else [0,255]
        f = arr.astype(np.float64)
        f = (f + 1) * 127.5 if f.min() < 0 else f * 255 if f.max() <= 1.0 else f
        arr = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return arr


def square_tiles(img: np.ndarray) -> list[np.ndarray]:
    """(H,W,3) -> list of (H,H,3) tiles cut left to right (a remainder narrower than H is
    dropped); a tall image (W < H) gives its centred (W,W,3) crop."""
    h, w = img.shape[:2]
    if w < h:
        top = (h - w) // 2
        return [img[top:top + w]]
    return [img[:, i * h:(i + 1) * h] for i in range(w // h)]


def list_images(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise BadInputError(f"{d} is not a directory of images")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {d}")
    return files


@dataclass
class FeatureSet:
    """Features of every tile of a set of images."""

    features: np.ndarray  # (tiles, D) float32
    feature_space: str
    images: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def tiles(self) -> int:
        return int(self.features.shape[0])


def _iter_tiles(items: Sequence, reporter: Reporter, skipped: list[str]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (image index, tile); unreadable files are skipped (and listed)."""
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            try:
                img = _as_uint8_hwc(_load_rgb(item))
                if min(img.shape[:2]) < MIN_TILE:  # e.g. a 100000x1 strip would give 100000 1-px tiles
                    raise BadInputError(f"{min(img.shape[:2])} px on its short side; tiles need at least {MIN_TILE} px")
            except Exception as exc:  # any unreadable file (truncated, not an image, bomb...) is skipped and counted
                skipped.append(str(item))
                reporter.warn(f"skipping {item}: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
                continue
        else:
            img = _as_uint8_hwc(item)
        for tile in square_tiles(img):
            yield i, tile


def image_features(items: str | os.PathLike | Sequence, extractor: "FeatureExtractor", batch: int = 32, reporter: Reporter = SILENT) -> FeatureSet:
    """Features of every square tile of `items` (a directory, a list of paths, or a list of
    arrays/tensors). Tiles are streamed through the extractor `batch` at a time."""
    if isinstance(items, (str, os.PathLike)):
        items = list_images(items)
    items = list(items)
    if batch < 1:
        raise UsageError("--batch must be at least 1")
    skipped: list[str] = []
    feats, pending, seen = [], [], set()
    with reporter.task(f"features ({extractor.name})", total=len(items), unit="img") as task:
        last = -1
        for idx, tile in _iter_tiles(items, reporter, skipped):
            seen.add(idx)
            pending.append(tile)
            if idx != last:
                task.update(completed=idx)
                last = idx
            if len(pending) == batch:
                feats.append(extractor(pending))
                pending = []
        if pending:
            feats.append(extractor(pending))
        task.update(completed=len(items))
    if not feats:
        raise BadInputError(f"no readable images ({len(skipped)} skipped)")
    if skipped:
        reporter.warn(f"{len(skipped)} of {len(items)} files could not be read and were skipped")
    return FeatureSet(np.concatenate(feats).astype(np.float32), extractor.name, images=len(seen), skipped=skipped)


# ----------------------------------------------------------------------------- extractors

class FeatureExtractor:
    """Callable: list of (S,S,3) uint8 tiles -> (N, D) float32 features."""

    name = "abstract"
    dim = 0
    comparable_with_published_fid = False

    def __call__(self, tiles: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class EfficientNetExtractor(FeatureExtractor):
    name = "efficientnet-lite0"
    dim = 1280
    comparable_with_published_fid = False

    def __init__(self, device: str | torch.device = "cpu"):
        from .features import load_feature_network

        self.device = torch.device(device)
        self.net = load_feature_network(self.device)

    @torch.no_grad()
    def __call__(self, tiles: list[np.ndarray]) -> np.ndarray:
        import torch.nn.functional as F

        from .features import EMBED_SIZE

        # Resize each tile on its own (tiles may differ in size), then embed them as one batch.
        x = torch.cat([
            F.interpolate(torch.from_numpy(np.array(t)).to(self.device).permute(2, 0, 1)[None].float() / 127.5 - 1,
                          size=(EMBED_SIZE, EMBED_SIZE), mode="bilinear", align_corners=False, antialias=True)
            for t in tiles
        ])  # (B,3,224,224) in [-1,1]
        return self.net.embed(x).float().cpu().numpy()


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """An explicit path (must exist), else $EQIMG_INCEPTION_WEIGHTS, else clean-fid's cached
    /tmp/inception-2015-12-05.pt if present; None when there is none (never downloads)."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / INCEPTION_FILENAME
        if not p.is_file():
            raise EqimgError(
                f"Inception weights not found at {p}",
                hint=f"copy clean-fid's {INCEPTION_FILENAME} (the torchscript Inception-v3) there, or use --features efficientnet-lite0 (offline, not comparable with published FID)",
            )
        return p
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return find_inception_weights(env)
    cached = Path("/tmp") / INCEPTION_FILENAME
    # /tmp is shared: only trust a cached archive this user owns and others cannot rewrite
    try:
        st = cached.stat()
    except OSError:
        return None
    import stat

    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return cached


class InceptionExtractor(FeatureExtractor):
    """clean-fid's "clean" Inception features from a local torchscript file (2048-d)."""

    name = "inception-v3"
    dim = 2048
    comparable_with_published_fid = True

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        from cleanfid.resize import make_resizer

        self.device = torch.device(device)
        p = find_inception_weights(path)
        try:
            # A torchscript archive is code, not just weights: only load files the user names.
            self.model = torch.jit.load(str(p), map_location=self.device).eval()
            self.layers = self.model.layers
        except Exception as exc:  # a pickle, a truncated zip, another model: all refused the same way
            from .errors import CheckpointError

            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{p} was refused: it is not clean-fid's torchscript Inception-v3 archive, and eqimg runs no "
                                  f"other code or pickles ({first})") from exc
        self.resize = make_resizer("PIL", False, "bicubic", (299, 299))  # clean-fid "clean" mode

    @torch.no_grad()
    def __call__(self, tiles: list[np.ndarray]) -> np.ndarray:
        x = np.stack([self.resize(t) for t in tiles])  # (B,299,299,3) float in [0,255]
        x = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float()
        return self.layers.forward((x - 128) / 128).reshape(len(tiles), -1).float().cpu().numpy()


def make_extractor(features: str = "auto", inception_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """"auto": Inception when weights are available locally, else EfficientNet-Lite0."""
    if features not in ("auto", "inception", "efficientnet-lite0"):
        raise UsageError(f"unknown feature space {features!r}: use auto, inception or efficientnet-lite0")
    if features == "efficientnet-lite0":
        return EfficientNetExtractor(device)
    path = find_inception_weights(inception_weights)
    if path is None:
        if features == "inception":
            raise EqimgError(
                "Inception weights are not available offline and cannot be downloaded here",
                hint=f"pass --inception-weights PATH to a local copy of clean-fid's {INCEPTION_FILENAME} (or set {INCEPTION_ENV}), or use --features efficientnet-lite0",
            )
        return EfficientNetExtractor(device)
    return InceptionExtractor(path, device)


# ----------------------------------------------------------------------------- stats files

def save_stats(fs: FeatureSet, path: str | os.PathLike) -> dict:
    """mu, sigma, feature space and counts (+ raw features up to MAX_STORED_FEATURES, for KID)."""
    from .io import atomic_path

    mu, sigma = feature_statistics(fs.features)
    doc = dict(format=np.array(STATS_FORMAT), mu=mu, sigma=sigma, feature_space=np.array(fs.feature_space), count=np.array(fs.tiles), images=np.array(fs.images))
    if fs.tiles <= MAX_STORED_FEATURES:
        doc["features"] = fs.features.astype(np.float16)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **doc)
    return {"path": str(path), "feature_space": fs.feature_space, "count": fs.tiles, "images": fs.images, "stores_features": "features" in doc}


@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    feature_space: str
    count: int
    features: np.ndarray | None = None


def load_stats(path: str | os.PathLike, expect_space: str | None = None) -> Stats:
    """Read a stats .npz (ours, or a plain mu/sigma file such as clean-fid's or ADM's Inception
    reference stats, which are taken to be inception-v3 when 2048-d)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"{p} is not a readable .npz statistics file: {exc}") from exc
    if "mu" not in data or "sigma" not in data:
        raise BadInputError(f"{p} has no 'mu'/'sigma' arrays (keys: {', '.join(sorted(data)) or 'none'})")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if "feature_space" in data:
        space = str(data["feature_space"])
    elif mu.shape == (2048,):
        space = "inception-v3"
    else:
        raise BadInputError(f"{p} does not say which feature space it was made in ({mu.shape[0]}-d); remake it with --make-stats")
    if expect_space and space != expect_space:
        raise UsageError(
            f"{p} was made in the {space} feature space, but the fake images are measured in {expect_space}; statistics from different feature spaces cannot be compared",
            hint=f"use --features {'inception' if space == 'inception-v3' else space} or remake the stats with --make-stats",
        )
    feats = data["features"].astype(np.float32) if "features" in data else None
    return Stats(mu, sigma, space, int(data.get("count", np.array(0))), feats)


# ----------------------------------------------------------------------------- the whole evaluation

def evaluate_fid(
    real: str | os.PathLike,
    fake: str | os.PathLike | None,
    *,
    make_stats: str | os.PathLike | None = None,
    features: str = "auto",
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch: int = 32,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    reporter: Reporter = SILENT,
) -> dict:
    """FID and KID between `real` (a directory or a stats .npz) and `fake` (a directory).

    With `make_stats`, the real set's statistics are also saved (then `fake` may be None)."""
    real_p = Path(real)
    if not real_p.exists():
        raise BadInputError(f"--real {real_p} does not exist")
    real_is_stats = real_p.is_file()
    if real_is_stats and make_stats:
        raise UsageError("--make-stats needs --real to be a directory of images, not a statistics file")
    if fake is None and not make_stats:
        raise UsageError("give --fake DIR (or --make-stats OUT.npz to only compute the real statistics)")
    if fake is not None and not Path(fake).is_dir():
        raise BadInputError(f"--fake {fake} is not a directory of images")

    stats = None
    if real_is_stats and features == "auto":  # measure in the stats file's own space
        stats = load_stats(real_p)
        features = "inception" if stats.feature_space == "inception-v3" else stats.feature_space
    extractor = make_extractor(features, inception_weights, device)
    if real_is_stats:
        stats = load_stats(real_p, expect_space=extractor.name)

    doc: dict = {
        "feature_space": extractor.name,
        "comparable_with_published_fid": extractor.comparable_with_published_fid,
        "real": str(real_p),
        "fake": str(fake) if fake is not None else None,
    }
    if not extractor.comparable_with_published_fid:
        doc["note"] = "Frechet distance and KID in EfficientNet-Lite0 feature space: NOT comparable with published (Inception) FID/KID"

    real_feats = None
    if real_is_stats:
        mu_r, sig_r, real_feats = stats.mu, stats.sigma, stats.features
        doc.update(n_real=stats.count)
    else:
        fs_r = image_features(real_p, extractor, batch, reporter)
        real_feats = fs_r.features
        mu_r, sig_r = feature_statistics(fs_r.features)
        doc.update(n_real=fs_r.tiles, real_images=fs_r.images, real_skipped=len(fs_r.skipped))
        if make_stats:
            doc["stats_saved"] = save_stats(fs_r, make_stats)
    if fake is None:
        return doc

    fs_f = image_features(fake, extractor, batch, reporter)
    mu_f, sig_f = feature_statistics(fs_f.features)
    doc.update(n_fake=fs_f.tiles, fake_images=fs_f.images, fake_skipped=len(fs_f.skipped))
    doc["fid"] = frechet_distance(mu_r, sig_r, mu_f, sig_f)
    if real_feats is not None:
        doc["kid_mean"], doc["kid_std"] = kernel_inception_distance(real_feats, fs_f.features, kid_subsets, kid_subset_size, seed=seed)
        doc["kid_subset_size"] = min(kid_subset_size, len(real_feats), fs_f.tiles)
    else:
        doc["kid_mean"] = doc["kid_std"] = None
        doc["kid_note"] = "KID needs real features; this stats file holds only mu/sigma"
    if min(doc["n_real"] or 0, fs_f.tiles) < 2 * extractor.dim:
        doc["warning"] = f"fewer samples than 2 x feature dimension ({extractor.dim}): FID is strongly biased upward; compare only runs with equal sample counts"
    return doc
