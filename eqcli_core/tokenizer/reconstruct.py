"""Image -> column tokens -> image, for checking a tokenizer by eye and by PSNR."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..device import pick_device
from ..errors import BadInputError, UsageError
from ..io import atomic_path
from . import load_tokenizer
from .model import to_pixels
from .train import _load_rgb, psnr_ssim


def reconstruct_file(image: str | os.PathLike, output: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                     device: str | None = "cpu") -> dict:
    """Scale `image` to the tokenizer's height, centre-crop its width to whole columns, encode and
    decode it, and write [original | reconstruction] as a PNG. Returns PSNR/SSIM and shapes."""
    from PIL import Image

    image, output = Path(image), Path(output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"output must be a .png file, got {output}")
    if not image.is_file():
        raise BadInputError(f"image not found: {image}")
    dev = pick_device(device)
    tok = load_tokenizer(tokenizer, device=dev)
    arr = _load_rgb(image, tok.height)
    if arr is None:
        raise BadInputError(f"{image} could not be read as an image")
    cw = tok.column_width
    w = (arr.shape[1] // cw) * cw
    if w // cw < tok.min_tokens:
        raise BadInputError(f"{image} is too narrow: at least {cw * tok.min_tokens} px are needed after scaling to height {tok.height}")
    x0 = (arr.shape[1] - w) // 2
    arr = arr[:, x0:x0 + w].copy()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(dev)
    with torch.no_grad():
        tokens = tok.encode(x)
        rec = to_pixels(tok.decode(tokens))[0]
    p, s = psnr_ssim(arr[None], rec[None])
    with atomic_path(output, suffix=".png") as tmp:
        Image.fromarray(np.concatenate([arr, rec], axis=1)).save(tmp, format="PNG")
    return {"output": str(output), "width": w, "height": tok.height, "tokens": int(tokens.shape[1]),
            "token_dim": int(tokens.shape[2]), "psnr": p, "ssim": s, "tokenizer_fingerprint": tok.fingerprint}
