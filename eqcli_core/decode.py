"""Streaming (chunked) decoding of token columns into pixel columns.

The generator produces one token column at a time, so an image of any width can be decoded as it
is made: `StreamingDecoder` buffers token columns and decodes windows of
`overlap + chunk + overlap` tokens, keeping only the central `chunk` columns of pixels. Memory
beyond the output therefore stays constant in the width.

- Decoders with a finite receptive field (`tokenizer.decode_context` is an int: tokens of context
  needed on each side) decode exactly: with `overlap >= decode_context`, chunked == whole decode.
- Decoders with global attention (`decode_context is None`, e.g. the official tokenizer whose
  decoder mid block attends over the whole feature map) are approximated: every window sees
  `overlap` tokens of context on each side, and seams can optionally be cross-faded over
  `crossfade` token columns. The error against a whole decode is measured by `seam_error`
  (numbers in docs/sampling.md); `DEFAULT_GLOBAL_OVERLAP` is chosen from that measurement.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import UsageError

DEFAULT_CHUNK = 32  # central token columns decoded per window
DEFAULT_GLOBAL_OVERLAP = 16  # context tokens per side for global-attention decoders (see docs/sampling.md)
DEFAULT_GLOBAL_CROSSFADE = 2  # columns blended between windows of global-attention decoders (hides window edges)


def default_overlap(tokenizer) -> int:
    ctx = getattr(tokenizer, "decode_context", None)
    return int(ctx) if ctx is not None else DEFAULT_GLOBAL_OVERLAP


class StreamingDecoder:
    """Feed token columns (B, k, C) as they are produced; get finished pixel columns back.

    `feed` returns (B, 3, H, m*cw) raw decoder output for the m newly finished columns (or None),
    `flush` returns the rest. With `crossfade` = f > 0, each window also decodes f columns past its
    right context and those are blended linearly into the next window's first f columns. Concatenating all returned pieces along the width gives the decode
    of the whole sequence (exactly when overlap >= tokenizer.decode_context).
    """

    def __init__(self, tokenizer, overlap: int | None = None, chunk: int = DEFAULT_CHUNK, crossfade: int | None = None):
        self.tok = tokenizer
        self.cw = int(tokenizer.column_width)
        self.overlap = default_overlap(tokenizer) if overlap is None else int(overlap)
        self.chunk = int(chunk)
        if crossfade is None:  # exact decoders need none; global ones get a short blend
            crossfade = 0 if getattr(tokenizer, "decode_context", None) is not None else min(DEFAULT_GLOBAL_CROSSFADE, self.chunk)
        self.crossfade = int(crossfade)
        if self.overlap < 0 or self.chunk < 1:
            raise UsageError(f"decode chunk must be >= 1 and overlap >= 0 (got chunk={chunk}, overlap={overlap})")
        if not 0 <= self.crossfade <= self.chunk:
            raise UsageError(f"crossfade ({crossfade}) must be between 0 and the chunk ({self.chunk})")
        self._buf: torch.Tensor | None = None  # (B, L, C) tokens from global index _buf_start
        self._buf_start = 0
        self._total = 0  # tokens fed so far
        self._emitted = 0  # tokens whose pixels were returned
        self._tail: torch.Tensor | None = None  # (B,3,H,crossfade*cw) previous window's right context pixels
        self._done = False

    @property
    def emitted_columns(self) -> int:
        return self._emitted

    def feed(self, tokens: torch.Tensor) -> torch.Tensor | None:
        if self._done:
            raise RuntimeError("StreamingDecoder.feed after flush")
        if tokens.dim() == 2:  # one column (B, C)
            tokens = tokens[:, None]
        self._buf = tokens if self._buf is None else torch.cat([self._buf, tokens.to(self._buf.device, self._buf.dtype)], dim=1)
        self._total += tokens.shape[1]
        out = []
        # the right context also covers the cross-faded tail, so the tail itself has `overlap` context
        right = self.overlap + self.crossfade
        while self._total - self._emitted >= self.chunk + right:
            out.append(self._decode_window(self._emitted + self.chunk, self._emitted + self.chunk + right))
        return _cat(out)

    def flush(self) -> torch.Tensor | None:
        """Decode everything not yet returned (the right edge is the true image edge)."""
        self._done = True
        if self._buf is None or self._emitted >= self._total:
            return None
        return self._decode_window(self._total, self._total)

    def _decode_window(self, stop: int, end: int) -> torch.Tensor:
        """Decode tokens [start, end) and return pixels of columns [_emitted, stop)."""
        start = max(0, self._emitted - self.overlap)
        win = self._buf[:, start - self._buf_start : end - self._buf_start]
        with torch.no_grad():
            pix = self.tok.decode(win)  # (B, 3, H, (end-start)*cw)
        cw = self.cw
        a, b = (self._emitted - start) * cw, (stop - start) * cw
        out = pix[..., a:b].float()
        if self._tail is not None:  # cross-fade the previous window's right context into this one
            f = min(self._tail.shape[-1], out.shape[-1])
            w = (torch.arange(f, device=out.device, dtype=out.dtype) + 0.5) / self._tail.shape[-1]  # 0 -> 1
            out = out.clone()
            out[..., :f] = (1 - w) * self._tail[..., :f] + w * out[..., :f]
        self._tail = None
        if self.crossfade and stop < end:
            self._tail = pix[..., b : b + self.crossfade * cw].float()
        self._emitted = stop
        # drop tokens no window will need again (why: constant memory for endless streams)
        keep_from = max(0, self._emitted - self.overlap)
        if keep_from > self._buf_start:
            self._buf = self._buf[:, keep_from - self._buf_start :]
            self._buf_start = keep_from
        return out


def _cat(pieces: list[torch.Tensor]) -> torch.Tensor | None:
    pieces = [p for p in pieces if p is not None]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


def decode_chunked(tokenizer, tokens: torch.Tensor, chunk: int = DEFAULT_CHUNK, overlap: int | None = None, crossfade: int | None = None) -> torch.Tensor:
    """Decode (B, N, C) tokens window by window: (B, 3, H, N*cw) raw decoder output."""
    dec = StreamingDecoder(tokenizer, overlap=overlap, chunk=chunk, crossfade=crossfade)
    return _cat([dec.feed(tokens), dec.flush()])


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) raw decoder output in ~[-1, 1] -> (B, H, W, 3) uint8 on the CPU."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def seam_error(tokenizer, tokens: torch.Tensor, *, chunk: int = DEFAULT_CHUNK, overlap: int | None = None, crossfade: int | None = None) -> dict:
    """Chunked vs whole decode of the same tokens: max and mean |difference| in [-1, 1] pixel units,
    and the max in 8-bit levels after clamping (what a PNG would show)."""
    with torch.no_grad():
        whole = tokenizer.decode(tokens).float()
    part = decode_chunked(tokenizer, tokens, chunk=chunk, overlap=overlap, crossfade=crossfade)
    d = (whole - part).abs()
    levels = np.abs(to_uint8(whole).astype(np.int16) - to_uint8(part).astype(np.int16))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "max_levels": int(levels.max()), "mean_levels": float(levels.mean())}
