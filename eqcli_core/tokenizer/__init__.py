"""Column tokenizer: images <-> one token per full-height column; loading, saving, presets.

    tok = load_tokenizer("runs/tok_tiny/tokenizer.pt")
    z = tok.encode(images)            # (B,3,H,W) in [-1,1] -> (B, W/tok.column_width, tok.token_dim)
    x = tok.decode(z)                 # -> (B,3,H,W), raw (unclamped)
    pixels = to_pixels(x)             # uint8 (B,H,W,3)
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io import config_from_dict, load_checkpoint, save_checkpoint, state_dict_hash
from .model import TOKENIZER_PRESETS, ColumnTokenizer, TokenizerConfig, build_tokenizer, to_pixels

BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "bundled" / "tokenizer.pt"

__all__ = [
    "BUNDLED_TOKENIZER", "TOKENIZER_PRESETS", "ColumnTokenizer", "TokenizerConfig", "build_tokenizer",
    "load_tokenizer", "save_tokenizer", "to_pixels", "tokenizer_from_state",
]


def latent_fingerprint_of(tokenizer) -> str | None:
    """The latent-space fingerprint of any tokenizer-like object (eqimg tokenizers have
    `latent_fingerprint`; duck-typed ones may only have `fingerprint`)."""
    return getattr(tokenizer, "latent_fingerprint", None) or getattr(tokenizer, "fingerprint", None)


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def save_tokenizer(model: ColumnTokenizer, path: str | os.PathLike, meta: dict | None = None) -> str:
    """Atomically write a kind-"tokenizer" checkpoint; returns (and sets) the weights' fingerprint."""
    sd = _cpu_state(model)
    fp = state_dict_hash(sd)
    model.fingerprint = fp
    meta = {**(meta or {}), "fingerprint": fp}
    if model.inherited_latent_fingerprint:  # a fine-tuned decoder keeps its source's latent space
        meta["latent_fingerprint"] = model.inherited_latent_fingerprint
    save_checkpoint({"config": asdict(model.config), "state_dict": sd, "meta": meta}, path, kind="tokenizer")
    return fp


def tokenizer_from_state(config: dict, state_dict: dict, device="cpu", source: str = "checkpoint") -> ColumnTokenizer:
    """Build a tokenizer from a config dict and weights; clear errors on mismatch."""
    try:
        cfg = config_from_dict(TokenizerConfig, config)
        model = ColumnTokenizer(cfg)
        model.load_state_dict(state_dict, strict=True)
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{source}: weights do not match the stored tokenizer config: {str(exc).splitlines()[0][:300]}") from exc
    model.fingerprint = state_dict_hash(model.state_dict())
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> ColumnTokenizer:
    """Load a tokenizer (kind "tokenizer", or the EMA weights of a "tokenizer-train-state").
    `path=None` loads the bundled model shipped with eqimg."""
    if path is None:
        if not BUNDLED_TOKENIZER.is_file():
            raise CheckpointError(
                f"no bundled tokenizer in this installation ({BUNDLED_TOKENIZER} is missing)",
                hint="pass --tokenizer PATH (train one with `eqimg train-tokenizer`)",
            )
        path = BUNDLED_TOKENIZER
    doc = load_checkpoint(path, kind=("tokenizer", "tokenizer-train-state"))
    if "config" not in doc or not isinstance(doc["config"], dict):
        raise CheckpointError(f"{path} has no tokenizer config")
    if doc["kind"] == "tokenizer":
        sd = doc.get("state_dict")
    else:
        ema = doc.get("ema")
        # {"shadow": weights, "rate", "updates"}; a bare EMA state dict is accepted too
        sd = (ema.get("shadow") if "shadow" in ema else ema) if isinstance(ema, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds no tokenizer weights")
    model = tokenizer_from_state(doc["config"], sd, device=device, source=str(path))
    meta = doc.get("meta") if doc["kind"] == "tokenizer" else doc
    inherited = meta.get("latent_fingerprint") if isinstance(meta, dict) else None
    if inherited and str(inherited) != model.fingerprint:
        model.inherited_latent_fingerprint = str(inherited)
    return model
