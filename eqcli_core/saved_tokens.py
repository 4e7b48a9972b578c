"""Sampled-token files: what `eqimg sample --save-tokens` writes, read back and decoded.

A sampled-token file is HDF5 with one dataset `tokens` (num, columns, token_dim) float32 in the
tokenizer's latent space, and attributes that say how it was made (tokenizer fingerprint, seed,
classes, cfg, width, column width). It is written to a temporary name and renamed into place, so
a file that exists is complete. Decoding it with the same tokenizer and decode settings gives the
same pixels as the PNG written by the sampling run (tests/test_saved_tokens.py checks this), so
tokens are a compact, lossless record of a sample that can be re-decoded later, e.g. with a
better decoder of the same tokenizer or in other chunk sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, LatentFileError, UsageError
from .progress import SILENT, Reporter
from .tokenizer import latent_fingerprint_of

FORMAT = "eqimg-sample-tokens"
FORMAT_VERSION = 1
_ATTRS = ("tokenizer_fingerprint", "seed", "classes", "cfg", "cfg_schedule", "temperature", "width", "column_width", "batch")


@dataclass
class SampleTokens:
    tokens: np.ndarray  # (num, columns, token_dim) float32
    attrs: dict  # how the file was made (see _ATTRS)

    @property
    def num(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def columns(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def token_dim(self) -> int:
        return int(self.tokens.shape[2])

    def summary(self) -> dict:
        return {"kind": "sample-tokens", "images": self.num, "columns": self.columns, "token_dim": self.token_dim,
                "format_version": int(self.attrs.get("format_version", 0)), **{k: self.attrs[k] for k in _ATTRS if k in self.attrs}}


def _plain(v):
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


def is_sample_tokens(attrs) -> bool:
    return attrs.get("format") == FORMAT


def load_sample_tokens(path: str | os.PathLike) -> SampleTokens:
    """Read and validate a sampled-token file; damaged or foreign files raise LatentFileError."""
    from .latents import _first_line, _open_h5

    path = Path(path)
    f = _open_h5(path)
    try:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            hint = " (a dataset latent file from `eqimg tokenize`, not sampled tokens)" if attrs.get("format") == "eqimg-latents" else ""
            raise LatentFileError(f"{path.name} is an HDF5 file but not an eqimg sampled-token file (format {attrs.get('format')!r}){hint}")
        version = int(attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise LatentFileError(f"{path.name} was written by a newer eqimg (sampled-token format {version}, this one reads {FORMAT_VERSION}); upgrade eqimg")
        if "tokens" not in f:
            raise LatentFileError(f"{path.name} is missing the dataset /tokens; the file is damaged")
        ds = f["tokens"]
        if ds.ndim != 3 or 0 in ds.shape:
            raise LatentFileError(f"{path.name}: /tokens has shape {ds.shape}, expected (images, columns, token_dim) with none empty")
        tokens = ds[()].astype(np.float32, copy=False)
    except LatentFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:  # h5py's errors on damaged files
        raise LatentFileError(f"{path} could not be read (truncated or corrupt?): {_first_line(exc)}") from exc
    finally:
        f.close()
    if not np.isfinite(tokens).all():
        raise LatentFileError(f"{path.name} holds non-finite tokens (NaN/inf); the file is damaged")
    return SampleTokens(tokens=tokens, attrs=attrs)


def check_tokenizer(st: SampleTokens, tok, name: str = "the file") -> None:
    """Refuse a tokenizer that did not make these tokens (dimension, column width or fingerprint)."""
    if st.token_dim != int(tok.token_dim):
        raise CheckpointError(f"mismatched tokenizer: {name} holds {st.token_dim}-dim tokens but the tokenizer decodes {int(tok.token_dim)}-dim tokens",
                              hint="pass the tokenizer the tokens were sampled with (--tokenizer)")
    cw = st.attrs.get("column_width")
    if cw is not None and int(cw) != int(tok.column_width):
        raise CheckpointError(f"mismatched tokenizer: {name} was made for {int(cw)}-px columns but the tokenizer's are {int(tok.column_width)} px",
                              hint="pass the tokenizer the tokens were sampled with (--tokenizer)")
    want, have = st.attrs.get("tokenizer_fingerprint"), latent_fingerprint_of(tok)
    if want and have and str(want) != str(have):
        raise CheckpointError(f"mismatched tokenizer: {name} was sampled with tokenizer {want}, but this tokenizer is {have}",
                              hint="pass the tokenizer the tokens were sampled with (--tokenizer), or --force to decode anyway")


def decode_sample_tokens(tok, st: SampleTokens, *, index: int | None = None, decode_chunk: int | None = None,
                         decode_overlap: int | None = None, device=None, reporter: Reporter = SILENT) -> np.ndarray:
    """Decode images of a sampled-token file; (n, H, W, 3) uint8 (n = 1 with `index`).

    Uses the sampler's StreamingDecoder with the same defaults, so the pixels equal the PNG the
    sampling run wrote; memory beyond the output is constant in the width."""
    from .decode import DEFAULT_CHUNK, StreamingDecoder, to_uint8
    from .device import autocast
    from .pipeline import check_memory

    if index is not None and not 0 <= index < st.num:
        raise UsageError(f"--index {index} is out of range: the file holds {st.num} image(s) (0..{st.num - 1})")
    # decode in the sampling run's batches: batched convolutions round differently from single
    # images (a 1-level difference in rare pixels), and the point is to give back the same pixels
    batch = max(1, min(int(st.attrs.get("batch") or st.num), st.num))
    groups = [(b0, min(st.num, b0 + batch)) for b0 in range(0, st.num, batch)]
    if index is not None:
        groups = [g for g in groups if g[0] <= index < g[1]]
    device = torch.device(device) if device is not None else next(tok.parameters()).device
    cw, H = int(tok.column_width), int(tok.height)
    n_out = 1 if index is not None else st.num
    check_memory(st.columns * cw, H, n_out, st.token_dim, cw, hint="decode one image at a time with --index")
    out = np.empty((n_out, H, st.columns * cw, 3), dtype=np.uint8)
    step = decode_chunk or DEFAULT_CHUNK  # tokens fed at a time; any feed size gives the same pixels
    with reporter.task("decoding columns", total=sum(b1 - b0 for b0, b1 in groups) * st.columns, unit="col") as task:
        for b0, b1 in groups:
            dec = StreamingDecoder(tok, overlap=decode_overlap, chunk=step)
            x = 0
            with torch.no_grad(), autocast(device):
                for c0 in range(0, st.columns, step):
                    part = torch.from_numpy(st.tokens[b0:b1, c0 : c0 + step]).to(device)
                    pieces = [dec.feed(part)]
                    if c0 + step >= st.columns:
                        pieces.append(dec.flush())
                    for pix in pieces:
                        if pix is None:
                            continue
                        arr = to_uint8(pix)  # (b, H, w, 3)
                        w = arr.shape[2]
                        if index is None:
                            out[b0:b1, :, x : x + w] = arr
                        else:
                            out[0, :, x : x + w] = arr[index - b0]
                        x += w
                    task.advance(part.shape[0] * part.shape[1])
            if x != out.shape[2]:
                raise RuntimeError(f"decoder produced {x} px, expected {out.shape[2]}")
    return out


def run_decode(tokens_path: str, output: str, *, tokenizer_path=None, index: int | None = None, force: bool = False,
               decode_overlap: int | None = None, device="cpu", reporter: Reporter = SILENT, stdout=None) -> dict:
    """`eqimg decode`: sampled tokens -> PNG (`-` = stdout); images stacked vertically like `sample`."""
    import time

    from .pipeline import _write_stdout, encode_png, save_png
    from .tokenizer import load_tokenizer

    st = load_sample_tokens(tokens_path)
    tok = load_tokenizer(tokenizer_path, device=device)
    tok.eval()
    if not force or st.token_dim != int(tok.token_dim):  # --force cannot fix a dimension mismatch
        check_tokenizer(st, tok, Path(tokens_path).name)
    t0 = time.perf_counter()
    images = decode_sample_tokens(tok, st, index=index, decode_overlap=decode_overlap, device=device, reporter=reporter)
    n, h, w, c = images.shape
    grid = images.reshape(n * h, w, c)
    stopped = "done"
    if output == "-":
        stopped = _write_stdout(encode_png(grid), stdout)
    else:
        save_png(grid, output)
    return {"path": str(output), "tokens": str(tokens_path), "images": n, "index": index, "width": w, "height": h,
            "grid_height": n * h, "seconds": round(time.perf_counter() - t0, 3), "stopped": stopped,
            **{k: st.attrs[k] for k in ("seed", "classes", "tokenizer_fingerprint") if k in st.attrs}}
