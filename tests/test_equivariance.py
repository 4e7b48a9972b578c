"""Shift-equivariance analysis: ~0 for an exactly column-equivariant toy, > 0 for the raster baseline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eqcli_core.analysis.baseline_tokenizer import build_baseline
from eqcli_core.analysis.equivariance import EquivarianceConfig, measure, prepare_images


class ColumnLinear(torch.nn.Module):
    """Exactly shift-equivariant: each cw-px column is mapped to its token by one linear map."""

    def __init__(self, height=16, cw=4, dim=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc = torch.nn.Parameter(torch.randn(3 * height * cw, dim, generator=g) / 10)
        self.dec = torch.nn.Parameter(torch.randn(dim, 3 * height * cw, generator=g) / 10)
        self.column_width, self.height, self.token_dim = cw, height, dim

    def encode(self, x):  # (B,3,H,W) -> (B,W/cw,C)
        b, c, h, w = x.shape
        cols = x.reshape(b, c, h, w // self.column_width, self.column_width).permute(0, 3, 1, 2, 4).reshape(b, w // self.column_width, -1)
        return cols @ self.enc

    def decode(self, z):  # (B,N,C) -> (B,3,H,N*cw)
        b, n, _ = z.shape
        cols = (z @ self.dec).reshape(b, n, 3, self.height, self.column_width)
        return cols.permute(0, 2, 3, 1, 4).reshape(b, 3, self.height, n * self.column_width)


def _images(n=3, h=16, w=64, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_exactly_equivariant_toy_scores_zero_and_baseline_does_not():
    cfg = EquivarianceConfig(max_shift=3, width=32, border=1, batch=2)
    x = _images()
    toy = ColumnLinear()
    enc, dec = measure(toy, x, cfg)
    whole = [r for r in enc if r["kind"] == "whole"]
    assert len(whole) == 3 and all(r["rel_error"] < 1e-6 for r in whole)
    assert len(dec) == 3 and all(r["rel_error"] < 1e-6 for r in dec)
    # a sub-column shift is not a column shift: the interpolated reference is not exact
    assert all(r["rel_error"] > 1e-3 for r in enc if r["kind"] == "sub")
    base = build_baseline(16, 4, token_dim=6, hidden=8)
    b_enc, _ = measure(base, x, cfg)
    b_whole = [r for r in b_enc if r["kind"] == "whole"]
    # raster order: the row ends wrap, so even interior sequence positions disagree
    assert all(r["rel_error_interior"] > 0.05 for r in b_whole), b_whole


def test_batching_does_not_change_the_result():
    x = _images(n=3, seed=1)
    model = build_baseline(16, 4, token_dim=6, hidden=8, seed=2)
    a, _ = measure(model, x, EquivarianceConfig(max_shift=2, width=32, batch=1))
    b, _ = measure(model, x, EquivarianceConfig(max_shift=2, width=32, batch=3))
    for ra, rb in zip(a, b):
        assert ra["rel_error"] == pytest.approx(rb["rel_error"], rel=1e-5)


def test_tiny_column_tokenizer_interior_is_exact_beyond_its_receptive_field():
    tok_mod = pytest.importorskip("eqcli_core.tokenizer")
    tok = tok_mod.build_tokenizer("tiny").eval()
    if getattr(tok, "encode_context", None) is None:
        pytest.skip("tokenizer has no bounded receptive field")
    ctx = tok.encode_context
    cw = tok.column_width
    width = (2 * ctx + 4) * cw  # leaves an interior after a one-column shift
    x = _images(n=1, h=tok.height, w=width + 3 * cw, seed=3)
    enc, dec = measure(tok, x, EquivarianceConfig(max_shift=1, sub_shifts_px=(cw // 2,), width=width, border=ctx))
    whole = enc[0]
    assert whole["kind"] == "whole" and whole["interior_positions"] > 0
    assert whole["rel_error_interior"] < 1e-5 < whole["rel_error_border"]


def test_prepare_images_covers_without_squashing():
    sq = np.zeros((20, 20, 3), np.uint8)
    sq[:, :10] = 255  # left half white
    out = prepare_images([sq], 16, 48)  # must be scaled up to 48x48 and centre-cropped
    assert out.shape == (1, 3, 16, 48)
    assert out[0, :, :, :20].min() > 0.9 and out[0, :, :, 28:].max() < -0.9


def test_cli_equivariance_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import eqcli_core.tokenizer as tokmod
    from eqcli.main import app

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 80, 3), dtype=np.uint8)).save(d / f"{i}.png")
    monkeypatch.setattr(tokmod, "load_tokenizer", lambda path=None, device="cpu": ColumnLinear(), raising=False)
    plot = tmp_path / "eq.png"
    res = CliRunner().invoke(app, ["analyze", "equivariance", "--tokenizer", str(tmp_path / "tok.pt"), "--data", str(d), "--max-shift", "2",
                                   "--width", "32", "--border", "1", "--baseline", "--baseline-steps", "2", "--device", "cpu",
                                   "--plot", str(plot), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"] == 2 and doc["column_width"] == 4 and plot.stat().st_size > 1000
    assert max(r["rel_error"] for r in doc["encode"] if r["kind"] == "whole") < 1e-6
    assert min(r["rel_error_interior"] for r in doc["baseline"]["encode"] if r["kind"] == "whole") > 0.01
    res = CliRunner().invoke(app, ["analyze", "equivariance", "--tokenizer", "x", "--data", str(d), "--width", "30"])
    assert res.exit_code != 0
