"""Image generation on top of the column sampler and the tokenizer.

- `generate_image`: N images of a fixed width; columns are sampled, decoded as they arrive
  (StreamingDecoder) and written straight into the uint8 output, so memory is the output plus a
  constant. Optionally streams tokens into an HDF5 file.
- `generate_stream`: endless (or finite) generation as fixed-width uint8 tiles, constant memory.
- `outpaint`: encode an image, continue its token sequence right (and/or left, by mirroring),
  keep the original pixels exactly and hide the seam.
- `seam_ratio`: how visible a seam is (gradient across it vs elsewhere; ~1 = invisible).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import regions as R
from .decode import DEFAULT_CHUNK, StreamingDecoder, to_uint8
from .device import autocast
from .errors import BadInputError, CheckpointError, ResourceError, UsageError
from .io import atomic_path, require_multiple
from .progress import SILENT, Reporter
from .tokenizer import latent_fingerprint_of
from .saved_tokens import FORMAT as SAMPLE_TOKENS_FORMAT
from .saved_tokens import FORMAT_VERSION as SAMPLE_TOKENS_VERSION


@dataclass
class SampleConfig:
    width: int | None = None  # px; None = the generator's trained length; 0 = endless (generate_stream only)
    num: int = 1  # images (stacked vertically in a grid)
    seed: int = 0
    classes: str | None = None  # "coast", "3" or "mountains:0-2048,coast:2048-"; None = one random class per image
    cfg: float = 3.0
    cfg_schedule: str = "auto"  # see eqcli_core.sampling: linear | linear-window | constant | auto
    temperature: float = 1.0
    steps: int | None = None  # flow steps per token; None = the generator's default
    batch: int | None = None  # images sampled together; None = all
    decode_chunk: int = DEFAULT_CHUNK  # token columns per decode window
    decode_overlap: int | None = None  # None = tokenizer.decode_context (or the measured default)
    tile_width: int = 1024  # px per tile in generate_stream
    max_tiles: int | None = None  # stop generate_stream after this many tiles


@dataclass
class SampleResult:
    images: np.ndarray  # (num, H, W, 3) uint8
    class_ids: list[int]  # per image (first region's class when region control is used)
    regions: list[dict]  # region plan in pixels ([] for one class per image)
    seconds: float
    columns_per_s: float

    @property
    def grid(self) -> np.ndarray:
        """(num*H, W, 3): images stacked vertically (a view, no copy)."""
        n, h, w, c = self.images.shape
        return self.images.reshape(n * h, w, c)


# ----------------------------------------------------------------------------- models

def load_models(generator_path=None, tokenizer_path=None, device="cpu"):
    """Load (generator, tokenizer) (None = bundled) and check that they belong together."""
    from .generator import load_generator
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path, device=device)
    gen = load_generator(generator_path, device=device)
    check_pair(gen, tok)
    return gen, tok


def _generator_tokenizer_fingerprint(gen) -> str | None:
    # training records the latent file's tokenizer fingerprint as meta["latent_fingerprint"]
    meta = getattr(gen, "meta", None) or {}
    for key in ("tokenizer_fingerprint", "latent_fingerprint"):
        if meta.get(key):
            return str(meta[key])
    return None


def check_pair(gen, tok) -> None:
    gdim, tdim = int(gen.config.token_dim), int(tok.token_dim)
    if gdim != tdim:
        raise CheckpointError(f"mismatched tokenizer: the generator works on {gdim}-dim tokens but the tokenizer makes {tdim}-dim tokens",
                              hint="pass the tokenizer the generator was trained with (--tokenizer)")
    want, have = _generator_tokenizer_fingerprint(gen), latent_fingerprint_of(tok)
    if want and have and str(want) != str(have):
        raise CheckpointError(f"mismatched tokenizer: the generator was trained on latents of tokenizer {want}, but this tokenizer is {have}",
                              hint="pass the tokenizer the generator was trained with (--tokenizer)")


def _num_classes(gen) -> int:
    return int(getattr(gen.config, "num_classes", 0) or 0)


def _class_names(gen) -> list[str]:
    names = getattr(gen, "class_names", None) or []
    return list(names)


def _class_name(gen, cid: int) -> str:
    names = _class_names(gen)
    return names[cid] if 0 <= cid < len(names) else str(cid)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# ----------------------------------------------------------------------------- memory guard

def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_image_bytes(width: int, height: int, num: int, token_dim: int, column_width: int) -> int:
    """uint8 output (3 B/px) + PIL's RGBX copy while encoding the PNG (4 B/px) + float tokens."""
    px = width * height * num
    return 7 * px + 4 * num * (width // column_width) * token_dim


_STREAM_HINT = "write fixed-width tiles with constant memory instead: --stream DIR (or --stream - for raw frames), or lower --num/--width"


def check_memory(width: int, height: int, num: int, token_dim: int, column_width: int, *, available: int | None = None,
                 hint: str = _STREAM_HINT) -> int:
    need = estimate_image_bytes(width, height, num, token_dim, column_width)
    avail = available_memory_bytes() if available is None else available
    if avail is not None and need > 0.8 * avail:
        raise ResourceError(
            f"{num} image(s) of {width}x{height} px would need about {need / 2**20:,.0f} MiB in memory, "
            f"but only {avail / 2**20:,.0f} MiB are available", hint=hint)
    return need


# ----------------------------------------------------------------------------- helpers

def _labels_and_regions(gen, classes: str | None, num: int, width: int | None, cw: int, seed: int):
    """-> (labels (num,) long, regions or None, region description)."""
    ncls = _num_classes(gen)
    if ncls <= 0:
        raise CheckpointError("the generator has no classes (num_classes=0); eqimg generators are class-conditional")
    if classes is None:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(0, ncls, (num,), generator=g), None, []
    regions = R.parse_regions(classes, class_names=_class_names(gen), num_classes=ncls, column_width=cw, width=width)
    labels = torch.full((num,), regions[0].class_id, dtype=torch.long)
    if len(regions) == 1:
        return labels, None, R.describe(regions, _class_names(gen), cw)
    return labels, regions, R.describe(regions, _class_names(gen), cw)


def _sampling_kwargs(cfg: SampleConfig) -> dict:
    kw = dict(cfg=float(cfg.cfg), cfg_schedule=cfg.cfg_schedule, temperature=float(cfg.temperature))
    if cfg.steps is not None:
        kw["steps"] = int(cfg.steps)
    return kw


def _validate(cfg: SampleConfig) -> None:
    if cfg.num < 1:
        raise UsageError(f"--num must be >= 1 (got {cfg.num})")
    if cfg.batch is not None and cfg.batch < 1:
        raise UsageError(f"--batch must be >= 1 (got {cfg.batch})")
    if cfg.temperature < 0:
        raise UsageError(f"--temperature must be >= 0 (got {cfg.temperature})")
    if cfg.cfg < 0:
        raise UsageError(f"--cfg must be >= 0 (got {cfg.cfg})")
    if cfg.steps is not None and cfg.steps < 1:
        raise UsageError(f"--steps must be >= 1 (got {cfg.steps})")


class TokenWriter:
    """Tokens (num, N, C) streamed into an HDF5 file (atomic: renamed into place on close).

    Attributes record what is needed to trust and reproduce the file: tokenizer fingerprint,
    seed, classes, cfg. The dataset is chunked along columns and flushed as columns arrive."""

    def __init__(self, path, num: int, token_dim: int, columns: int | None, attrs: dict):
        import h5py

        self._ctx = atomic_path(path, suffix=".h5.tmp")
        tmp = self._ctx.__enter__()
        self._f = h5py.File(tmp, "w")
        n = columns or 0
        self.ds = self._f.create_dataset("tokens", shape=(num, n, token_dim), maxshape=(num, None, token_dim), dtype="f4",
                                         chunks=(1, 256, token_dim))
        for k, v in attrs.items():
            if v is not None:
                self._f.attrs[k] = v
        self._f.attrs["format"] = SAMPLE_TOKENS_FORMAT
        self._f.attrs["format_version"] = SAMPLE_TOKENS_VERSION
        self._f.attrs["space"] = "tokenizer latent (not scaled)"

    def write(self, rows: slice, col0: int, tokens: torch.Tensor) -> None:
        """tokens (b, k, C) for images `rows`, columns col0..col0+k."""
        k = tokens.shape[1]
        if col0 + k > self.ds.shape[1]:
            self.ds.resize(col0 + k, axis=1)
        self.ds[rows, col0 : col0 + k] = tokens.detach().float().cpu().numpy()
        self._f.flush()

    def close(self, ok: bool = True) -> None:
        self._f.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


# ----------------------------------------------------------------------------- fixed width

def generate_image(gen, tok, config: SampleConfig, *, device=None, reporter: Reporter = SILENT,
                   save_tokens: str | os.PathLike | None = None) -> SampleResult:
    """Sample `config.num` images of `config.width` px (None = trained length) and decode them."""
    from .sampling import iter_columns

    _validate(config)
    device = torch.device(device) if device is not None else _model_device(gen)
    cw, H, C = int(tok.column_width), int(tok.height), int(tok.token_dim)
    width = int(gen.config.train_length) * cw if config.width is None else int(config.width)
    if width == 0:
        raise UsageError("width 0 means endless generation: use generate_stream / --stream")
    require_multiple(width, cw, "width")
    ncols = width // cw
    check_memory(width, H, config.num, C, cw)
    labels_all, regions, region_doc = _labels_and_regions(gen, config.classes, config.num, width, cw, config.seed)
    batch = min(config.batch or config.num, config.num)

    images = np.empty((config.num, H, width, 3), dtype=np.uint8)
    writer = None
    if save_tokens is not None:
        writer = TokenWriter(save_tokens, config.num, C, ncols, {
            "tokenizer_fingerprint": latent_fingerprint_of(tok), "seed": int(config.seed),
            "classes": config.classes or ",".join(str(int(c)) for c in labels_all), "cfg": float(config.cfg),
            "cfg_schedule": config.cfg_schedule, "temperature": float(config.temperature), "width": width,
            "column_width": cw, "batch": batch})
    ok = False
    t0 = time.perf_counter()
    try:
        with reporter.task("sampling columns", total=config.num * ncols, unit="col") as task:
            for b0 in range(0, config.num, batch):
                b1 = min(config.num, b0 + batch)
                B = b1 - b0
                # one generator per batch (why: reproducible, no global seed; batch 0 uses the seed itself)
                g = torch.Generator(device=device).manual_seed(int(config.seed) + b0)
                labels = labels_all[b0:b1].to(device)
                sched = R.make_schedule(regions, B, device) if regions else None
                dec = StreamingDecoder(tok, overlap=config.decode_overlap, chunk=config.decode_chunk)
                x = 0  # pixels written so far for this batch
                pending: list[torch.Tensor] = []  # tokens not yet written to HDF5
                col = 0
                tb = time.perf_counter()
                with torch.no_grad(), autocast(device):
                    for tok_col in iter_columns(gen, labels, num_columns=ncols, generator=g, class_schedule=sched, **_sampling_kwargs(config)):
                        col += 1
                        if writer is not None:
                            pending.append(tok_col)
                            if len(pending) >= 256:
                                writer.write(slice(b0, b1), col - len(pending), torch.stack(pending, 1))
                                pending = []
                        pix = dec.feed(tok_col[:, None])
                        if pix is not None:
                            x = _put(images, b0, b1, x, pix)
                        task.advance(B, cols_per_s=round(col * B / max(time.perf_counter() - tb, 1e-9), 1))
                    pix = dec.flush()
                    if pix is not None:
                        x = _put(images, b0, b1, x, pix)
                if writer is not None and pending:
                    writer.write(slice(b0, b1), col - len(pending), torch.stack(pending, 1))
                if col != ncols or x != width:
                    raise RuntimeError(f"sampler produced {col} columns / {x} px, expected {ncols} / {width}")
        ok = True
    finally:
        if writer is not None:
            writer.close(ok)
    secs = time.perf_counter() - t0
    return SampleResult(images=images, class_ids=[int(c) for c in labels_all], regions=region_doc, seconds=secs,
                        columns_per_s=config.num * ncols / max(secs, 1e-9))


def _put(images: np.ndarray, b0: int, b1: int, x: int, pix: torch.Tensor) -> int:
    arr = to_uint8(pix)  # (B, H, w, 3)
    images[b0:b1, :, x : x + arr.shape[2]] = arr
    return x + arr.shape[2]


# ----------------------------------------------------------------------------- endless

def generate_stream(gen, tok, config: SampleConfig, *, device=None, reporter: Reporter = SILENT) -> Iterator[np.ndarray]:
    """Yield tiles (num*H, tile_width, 3) uint8 (images stacked vertically) left to right.

    `config.width` 0 = endless (until the caller stops iterating or `max_tiles`); otherwise the
    last tile may be narrower. Memory is constant: the sampler keeps a rolling KV cache and the
    decoder a bounded token buffer."""
    from .sampling import iter_columns

    _validate(config)
    device = torch.device(device) if device is not None else _model_device(gen)
    cw, H = int(tok.column_width), int(tok.height)
    tile_w = int(config.tile_width)
    require_multiple(tile_w, cw, "tile width")
    width = int(config.width or 0)
    if width:
        require_multiple(width, cw, "width")
    if config.max_tiles is not None and config.max_tiles < 1:
        raise UsageError(f"--max-tiles must be >= 1 (got {config.max_tiles})")
    check_memory(tile_w, H, 2 * config.num, int(tok.token_dim), cw)  # a tile being filled + one being written
    labels, regions, _ = _labels_and_regions(gen, config.classes, config.num, width or None, cw, config.seed)
    g = torch.Generator(device=device).manual_seed(int(config.seed))
    labels = labels.to(device)
    sched = R.make_schedule(regions, config.num, device) if regions else None
    dec = StreamingDecoder(tok, overlap=config.decode_overlap, chunk=config.decode_chunk)
    n = config.num
    tile = np.empty((n, H, tile_w, 3), dtype=np.uint8)
    fill = 0
    tiles = 0

    def take(pix: torch.Tensor):
        nonlocal fill, tiles
        arr = to_uint8(pix)  # (n, H, w, 3)
        i = 0
        while i < arr.shape[2]:
            k = min(tile_w - fill, arr.shape[2] - i)
            tile[:, :, fill : fill + k] = arr[:, :, i : i + k]
            fill += k
            i += k
            if fill == tile_w:
                tiles += 1
                yield tile.reshape(n * H, tile_w, 3).copy()
                fill = 0
                if config.max_tiles is not None and tiles >= config.max_tiles:
                    return

    with reporter.task("streaming tiles", total=config.max_tiles or (-(-width // tile_w) if width else None), unit="tile") as task:
        t0 = time.perf_counter()
        col = 0
        with torch.no_grad(), autocast(device):
            for tok_col in iter_columns(gen, labels, num_columns=(width // cw) or None, generator=g, class_schedule=sched, **_sampling_kwargs(config)):
                col += 1
                pix = dec.feed(tok_col[:, None])
                if pix is None:
                    continue
                for t in take(pix):
                    task.advance(1, cols_per_s=round(col * n / max(time.perf_counter() - t0, 1e-9), 1))
                    yield t
                    if config.max_tiles is not None and tiles >= config.max_tiles:
                        return
            pix = dec.flush()
        if pix is not None:
            for t in take(pix):
                task.advance(1)
                yield t
                if config.max_tiles is not None and tiles >= config.max_tiles:
                    return
        if fill:  # finite width not a multiple of the tile width: a narrower last tile
            task.advance(1)
            yield tile[:, :, :fill].reshape(n * H, fill, 3).copy()


# ----------------------------------------------------------------------------- outpainting

def prepare_image(image, height: int, column_width: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) or PIL image -> resized to `height` (aspect kept) and center-cropped to
    a multiple of the column width. Untouched when it already fits (pixels kept exactly)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image
    else:
        arr = np.asarray(image.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise BadInputError(f"expected an RGB uint8 image, got array of shape {arr.shape} and dtype {arr.dtype}")
    h, w = arr.shape[:2]
    if h != height:
        nw = max(1, round(w * height / h))
        arr = np.asarray(Image.fromarray(arr).resize((nw, height), Image.LANCZOS))
        w = nw
    keep = w // column_width * column_width
    if keep < column_width:
        raise BadInputError(f"the image is too narrow: {w} px after resizing to height {height}, less than one column ({column_width} px)")
    x0 = (w - keep) // 2
    return np.array(arr[:, x0 : x0 + keep])  # a writable copy


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file (or '-' for stdin) -> RGB uint8 (H, W, 3); BadInputError if unreadable."""
    import sys
    import tempfile

    from .data.images import load_rgb  # the shared robust loader (EXIF, modes, bomb guard)

    if str(path) == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise BadInputError("no image data on stdin")
        with tempfile.NamedTemporaryFile(suffix=".img") as fh:  # same checks as for files
            fh.write(data)
            fh.flush()
            return np.array(load_rgb(fh.name))
    return np.array(load_rgb(path))


def seam_ratio(image: np.ndarray, seams: Sequence[int]) -> float:
    """Mean |horizontal gradient| across the seams (between columns x-1 and x) divided by its mean
    everywhere else. ~1: the seam looks like any other column boundary; >>1: a visible edge."""
    img = np.asarray(image, dtype=np.float32)
    grad = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))  # (W-1,): boundary x-1|x at index x-1
    idx = np.array([s - 1 for s in seams if 0 < s < img.shape[1]], dtype=np.int64)
    if idx.size == 0:
        return float("nan")
    mask = np.ones_like(grad, dtype=bool)
    mask[idx] = False
    rest = grad[mask].mean() if mask.any() else float("nan")
    return float(grad[idx].mean() / max(rest, 1e-6))


@dataclass
class OutpaintResult:
    image: np.ndarray  # (H, W, 3) uint8
    original_x: tuple[int, int]  # the original pixels occupy [x0, x1)
    seams: list[int] = field(default_factory=list)
    seam_ratio: float = float("nan")
    class_id: int = 0
    seconds: float = 0.0


def _extend_right(gen, tok, orig: np.ndarray, n_new: int, labels, config: SampleConfig, g, device, blend_px: int) -> np.ndarray:
    """Continue `orig` (H, W0, 3) uint8 by n_new columns -> new pixels (H, n_new*cw, 3) uint8."""
    from .sampling import sample_tokens

    cw = int(tok.column_width)
    x = torch.tensor(orig, device=device).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W0)
    with torch.no_grad(), autocast(device):
        prefix = tok.encode(x).float()  # (1, N0, C)
        n0 = prefix.shape[1]
        # num_columns counts the prefix; the result starts with it
        new = sample_tokens(gen, labels, n0 + n_new, prefix_tokens=prefix, generator=g, **_sampling_kwargs(config))[:, n0:].float()  # (1, n_new, C)
        # decode the new columns with the original tokens as left context (why: continuous seam)
        dec = StreamingDecoder(tok, overlap=config.decode_overlap, chunk=config.decode_chunk)
        ctx = max(1, min(n0, dec.overlap))
        seq = torch.cat([prefix[:, n0 - ctx :], new], dim=1)
        pix = [dec.feed(seq), dec.flush()]
    pix = torch.cat([p for p in pix if p is not None], dim=-1).float()  # (1, 3, H, (ctx+n_new)*cw)
    recon_edge = pix[0, :, :, ctx * cw - 1]  # (3, H) decoded last original column
    gen_pix = pix[0, :, :, ctx * cw :]  # (3, H, n_new*cw)
    orig_edge = torch.from_numpy(orig[:, -1]).to(pix.device).float().T / 127.5 - 1  # (3, H)
    return to_uint8(blend_seam(gen_pix, orig_edge, recon_edge, blend_px)[None])[0]


def blend_seam(gen_pix: torch.Tensor, orig_edge: torch.Tensor, recon_edge: torch.Tensor, blend_px: int) -> torch.Tensor:
    """Generated pixels (3, H, w) right of a seam whose left side keeps the original pixels exactly.

    A correction fades out over `blend_px` columns: (1) the decoder's reconstruction error at the
    seam (orig_edge - recon_edge, both (3, H)), and (2) the smooth (vertically low-passed) part of
    the step from the decoded last original column to the first new one, a colour/brightness
    mismatch; the step's fine detail is texture and is kept (copying the edge column would flatten it)."""
    k = min(blend_px, gen_pix.shape[-1])
    if k <= 0:
        return gen_pix
    ramp = 1 - (torch.arange(k, device=gen_pix.device, dtype=torch.float32) + 0.5) / k  # 1 -> 0
    step = recon_edge - gen_pix[..., 0]  # (3, H)
    r = max(1, step.shape[-1] // 16)
    smooth = F.avg_pool1d(F.pad(step[None], (r, r), mode="replicate"), 2 * r + 1, stride=1)[0]
    out = gen_pix.clone()
    out[..., :k] += (orig_edge - recon_edge + smooth)[..., None] * ramp
    return out


def outpaint(gen, tok, image, config: SampleConfig, *, direction: str = "right", blend_columns: int = 2,
             device=None, reporter: Reporter = SILENT) -> OutpaintResult:
    """Continue `image` to `config.width` px to the right, left (by mirroring) or both sides.

    The (resized/cropped) original pixels are copied into the output unchanged."""
    _validate(config)
    if direction not in ("right", "left", "both"):
        raise UsageError(f"--direction must be right, left or both (got {direction!r})")
    device = torch.device(device) if device is not None else _model_device(gen)
    cw, H = int(tok.column_width), int(tok.height)
    orig = prepare_image(image, H, cw)
    w0 = orig.shape[1]
    width = int(config.width)
    require_multiple(width, cw, "width")
    if width <= w0:
        raise UsageError(f"--width {width} must be larger than the image ({w0} px wide after resizing to height {H})")
    check_memory(width, H, 1, int(tok.token_dim), cw)
    if config.classes and ":" in config.classes:
        raise UsageError("outpaint takes one class (name or id); class ranges are for `eqimg sample`")
    labels, _, _ = _labels_and_regions(gen, config.classes, 1, None, cw, config.seed)
    labels = labels.to(device)
    extra = (width - w0) // cw
    left_cols = 0 if direction == "right" else (extra if direction == "left" else extra // 2)
    right_cols = extra - left_cols
    blend_px = blend_columns * cw
    t0 = time.perf_counter()
    out = np.empty((H, width, 3), dtype=np.uint8)
    x0 = left_cols * cw
    out[:, x0 : x0 + w0] = orig
    seams = []
    with reporter.task("outpainting", total=(left_cols > 0) + (right_cols > 0), unit="side") as task:
        if right_cols:
            g = torch.Generator(device=device).manual_seed(int(config.seed))
            out[:, x0 + w0 :] = _extend_right(gen, tok, orig, right_cols, labels, config, g, device, blend_px)
            seams.append(x0 + w0)
            task.advance(1)
        if left_cols:
            g = torch.Generator(device=device).manual_seed(int(config.seed) + 1)
            flipped = np.ascontiguousarray(orig[:, ::-1])
            out[:, :x0] = _extend_right(gen, tok, flipped, left_cols, labels, config, g, device, blend_px)[:, ::-1]
            seams.append(x0)
            task.advance(1)
    return OutpaintResult(image=out, original_x=(x0, x0 + w0), seams=sorted(seams), seam_ratio=seam_ratio(out, seams),
                          class_id=int(labels[0]), seconds=time.perf_counter() - t0)


def encode_png(array: np.ndarray) -> bytes:
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Atomic PNG write."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- whole commands

def peak_memory_mb(device=None) -> float:
    """Process RSS high-water mark (Linux: ru_maxrss in KiB); on CUDA, the allocator's peak."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _class_doc(gen, class_ids: Sequence[int]) -> list[str]:
    return [_class_name(gen, int(c)) for c in class_ids]


def _write_stdout(data: bytes, stdout=None) -> str:
    """Write bytes to stdout; a reader that went away (`| head`) is a clean stop, not an error."""
    import sys

    try:
        out = stdout or sys.stdout.buffer
        out.write(data)
        out.flush()
        return "done"
    except BrokenPipeError:
        return "broken_pipe"


def run_sample(config: SampleConfig, *, generator_path=None, tokenizer_path=None, device="cpu", output: str | None = None,
               stream: str | None = None, save_tokens: str | None = None, reporter: Reporter = SILENT, stdout=None) -> dict:
    """`eqimg sample`: load models, generate, write PNG (`-` = stdout), tiles or raw frames; a summary dict.

    stream: a directory (tile_000000.png, ... written atomically) or '-' (raw RGB frames of
    num*H x tile_width x 3 bytes on `stdout`, e.g. for ffmpeg). SIGINT or a closed pipe ends a
    stream cleanly; the summary says why it stopped."""
    import sys

    device = torch.device(device)
    if stream is None and output is None:
        raise UsageError("give an output: -o FILE.png (or -o - for stdout), or --stream DIR|- for tiles")
    if stream is not None and output is not None:
        raise UsageError("use either -o (one image) or --stream (tiles), not both")
    if config.width == 0 and stream is None:
        raise UsageError("--width 0 means endless generation, which needs --stream DIR (PNG tiles) or --stream - (raw frames)")
    if config.width is None and stream is not None:
        raise UsageError("with --stream, give --width (0 = endless)")
    if config.width is not None and config.width < 0:
        raise UsageError(f"--width must be a positive multiple of the column width, or 0 for endless (got {config.width})")
    if stream is not None and save_tokens is not None:
        raise UsageError("--save-tokens works with -o, not with --stream")
    gen, tok = load_models(generator_path, tokenizer_path, device)
    cw, H = int(tok.column_width), int(tok.height)
    doc: dict = {"seed": int(config.seed), "num": int(config.num), "device": str(device), "cfg": float(config.cfg),
                 "cfg_schedule": config.cfg_schedule, "column_width": cw}
    if stream is None:
        res = generate_image(gen, tok, config, device=device, reporter=reporter, save_tokens=save_tokens)
        grid = res.grid
        stopped = "done"
        if output == "-":
            stopped = _write_stdout(encode_png(grid), stdout)
        else:
            save_png(grid, output)
        doc["stopped"] = stopped
        doc.update(path=str(output), width=int(grid.shape[1]), height=int(res.images.shape[1]), grid_height=int(grid.shape[0]),
                   seconds=round(res.seconds, 3), columns_per_s=round(res.columns_per_s, 2),
                   classes=_class_doc(gen, res.class_ids), regions=res.regions,
                   tokens=str(save_tokens) if save_tokens else None)
        doc["peak_memory_mb"] = round(peak_memory_mb(device), 1)
        return doc

    if stream == "-" and config.width and config.width % config.tile_width:
        raise UsageError(f"raw frames on stdout need --width to be a multiple of --tile-width {config.tile_width} (or 0 for endless), got {config.width}")
    t0 = time.perf_counter()
    tiles, px, stopped = 0, 0, "done"
    lock = None
    if stream != "-":
        from .io import OutputLock

        lock = OutputLock(stream)
        lock.__enter__()
    try:
        it = generate_stream(gen, tok, config, device=device, reporter=reporter)
        try:
            for tile in it:
                if stream == "-":
                    out = stdout or sys.stdout.buffer
                    out.write(tile.tobytes())
                    out.flush()
                else:
                    save_png(tile, Path(stream) / f"tile_{tiles:06d}.png")
                tiles += 1
                px += tile.shape[1]
        except BrokenPipeError:
            stopped = "broken_pipe"
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            it.close()
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    secs = time.perf_counter() - t0
    labels, _, region_doc = _labels_and_regions(gen, config.classes, config.num, config.width or None, cw, config.seed)
    doc.update(path=str(stream), stream=True, tiles=tiles, tile_width=int(config.tile_width), height=H, grid_height=H * config.num,
               width=px, frame_bytes=H * config.num * int(config.tile_width) * 3, stopped=stopped, seconds=round(secs, 3),
               columns_per_s=round(px // cw * config.num / max(secs, 1e-9), 2), classes=_class_doc(gen, labels.tolist()), regions=region_doc)
    doc["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    return doc


def run_outpaint(image: str, config: SampleConfig, *, direction: str = "right", generator_path=None, tokenizer_path=None,
                 device="cpu", output: str = "-", blend_columns: int = 2, reporter: Reporter = SILENT, stdout=None) -> dict:
    """`eqimg outpaint`: load the image (`-` = stdin), continue it, write the PNG; a summary dict."""
    device = torch.device(device)
    if not config.width or config.width <= 0:
        raise UsageError(f"--width must be a positive multiple of the column width (got {config.width})")
    if blend_columns < 0:
        raise UsageError(f"--blend-columns must be >= 0 (got {blend_columns})")
    img = load_image(image)
    gen, tok = load_models(generator_path, tokenizer_path, device)
    res = outpaint(gen, tok, img, config, direction=direction, blend_columns=blend_columns, device=device, reporter=reporter)
    stopped = "done"
    if output == "-":
        stopped = _write_stdout(encode_png(res.image), stdout)
    else:
        save_png(res.image, output)
    return {"path": str(output), "stopped": stopped, "input": str(image), "width": int(res.image.shape[1]), "height": int(res.image.shape[0]),
            "original_x": list(res.original_x), "direction": direction, "seams": res.seams, "seam_ratio": round(res.seam_ratio, 4),
            "class": _class_name(gen, res.class_id), "seed": int(config.seed), "cfg": float(config.cfg),
            "seconds": round(res.seconds, 3), "peak_memory_mb": round(peak_memory_mb(device), 1)}
