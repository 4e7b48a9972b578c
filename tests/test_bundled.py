"""The bundled default model: present, small, self-consistent, and usable through the public API."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import eqcli_core
from eqcli_core import load_generator, load_tokenizer, sample_tokens
from eqcli_core.pipeline import check_pair

BUNDLED = Path(eqcli_core.__file__).parent / "bundled"


def test_bundle_is_complete_and_under_30_mb():
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    files = manifest["models"][0]["files"]
    sizes = [(BUNDLED / f).stat().st_size for f in files]
    assert sum(sizes) < 30 * 2**20
    assert manifest["models"][0]["classes"] == sorted(manifest["models"][0]["classes"])


def test_bundled_pair_loads_matches_and_samples_any_width():
    tok, gen = load_tokenizer(), load_generator()
    check_pair(gen, tok)  # raises on a mismatched tokenizer
    assert gen.config.token_dim == tok.token_dim
    assert all(p.dtype == torch.float32 for p in gen.parameters())  # fp16 storage is cast back
    labels = torch.tensor([gen.class_names.index("coast"), 0])
    for columns in (1, 5, 40):
        tokens = sample_tokens(gen, labels, columns, cfg=3.0, steps=4, generator=torch.Generator().manual_seed(0))
        assert tokens.shape == (2, columns, tok.token_dim)
        assert torch.isfinite(tokens).all()
    image = tok.decode(tokens)
    assert image.shape == (2, 3, tok.height, 40 * tok.column_width)
    again = sample_tokens(gen, labels, 40, cfg=3.0, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)


def test_bundled_tokenizer_reconstructs_a_landscape_well():
    from eqcli_core.data.landscapes import render_landscape

    tok = load_tokenizer()
    pixels = render_landscape("desert", tok.height, 256, seed=424242)  # not a training seed
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        y = tok.decode(tok.encode(x)).clamp(-1, 1)
    mse = ((y - x) ** 2).mean().item() / 4  # in [0, 1] units
    psnr = 10 * torch.log10(torch.tensor(1.0 / mse)).item()
    assert psnr > 22, psnr  # an untrained tokenizer gives ~10 dB
