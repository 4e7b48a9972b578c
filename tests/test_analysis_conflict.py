"""`eqimg analyze conflict`: zero-shot positions (masked training) and the gradient-conflict matrix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eqcli.main import main
from eqcli_core.analysis.conflict import gradient_conflict, shared_parameters
from eqcli_core.analysis.positions import fixed_noise, per_position_loss, t_grid
from eqcli_core.generator import EquivariantGenerator, make_config

C = 4


def write_latents(path: Path, n_images: int = 24, seed: int = 0) -> Path:
    """Learnable tiny latents: smooth class-dependent columns, 9..16 columns wide."""
    import h5py

    rng = np.random.default_rng(seed)
    widths = rng.integers(9, 17, n_images)
    labels = np.arange(n_images) % 2
    cols = []
    for w, y in zip(widths, labels):
        t = np.arange(w)[:, None]
        cols.append((np.sin(0.7 * t + rng.uniform(0, 6.28) + np.arange(C)[None]) + (1.5 if y else -1.5)
                     + 0.05 * rng.standard_normal((w, C))).astype(np.float32))
    tokens = np.concatenate(cols)
    with h5py.File(path, "w") as f:
        f["tokens"], f["tokens_mirror"] = tokens, np.concatenate([c[::-1] for c in cols])
        f["offsets"] = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        f["widths"], f["labels"] = widths.astype(np.int64), labels.astype(np.int64)
        f.create_dataset("paths", data=[f"c{y}/img{i}.png" for i, y in enumerate(labels)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=["dark", "light"], dtype=h5py.string_dtype())
        f.attrs.update(format="eqimg-latents", format_version=1, complete=True, token_dim=C, column_width=4, height=8,
                       tokenizer_fingerprint="synthetic0001", tokenizer_config="{}", dtype="float32",
                       token_std=float(tokens.std()), token_mean=float(tokens.mean()), all_finite=True)
    return path


def _model(**kw):
    torch.manual_seed(0)
    cfg = make_config("tiny", depth=1, width=32, num_heads=2, head_width=32, head_depth=1, class_tokens=2, train_length=6,
                      token_dim=C, num_classes=2, diffusion_batch_mul=1, **kw)
    m = EquivariantGenerator(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return m.eval()


@pytest.mark.parametrize("kind", ["equivariant", "baseline"])
def test_conflict_matrix_symmetric_unit_diagonal(kind):
    model = _model() if kind == "equivariant" else _model(window=None, position="learned", max_length=6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, C, generator=g), torch.tensor([0, 1] * 4)
    M = gradient_conflict(model, x, y, batches=2, batch=4, t_draws=2, seed=0)
    assert M.shape == (6, 6)
    assert np.allclose(M, M.T, atol=1e-10)
    assert np.allclose(np.diag(M), 1.0, atol=1e-10)
    assert (np.abs(M) <= 1 + 1e-10).all()
    names = [n for n, _ in shared_parameters(model)]
    assert ("pos_embed" in dict(model.named_parameters())) == (kind == "baseline") and "pos_embed" not in names


def test_conflict_entry_matches_a_direct_gradient_computation():
    """One entry, recomputed from two separate backward passes of the per-position losses."""
    model = _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 6, C, generator=g), torch.tensor([0, 1, 0, 1])
    M = gradient_conflict(model, x, y, batches=1, batch=4, t_draws=2, seed=3)
    from eqcli_core.analysis.positions import noise_seed

    noise = fixed_noise((2, 4, 6, C), noise_seed(3, 6, 0, 0xC0F1), "cpu")
    params = [p for _, p in shared_parameters(model)]

    def grad(i):
        loss = per_position_loss(model, x, y, noise, t_grid(2)[:, None, None]).mean(0)[i]
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(gg if gg is not None else torch.zeros_like(p)).flatten() for gg, p in zip(gs, params)]).double()

    g2, g5 = grad(2), grad(5)
    assert M[2, 5] == pytest.approx(float(g2 @ g5 / (g2.norm() * g5.norm())), abs=1e-6)


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code or 0, capsys.readouterr().out


def test_cli_quick_end_to_end(tmp_path, capsys):
    lat = write_latents(tmp_path / "l.h5")
    plot = tmp_path / "c.png"
    code, out = _run(capsys, "analyze", "conflict", "--latents", lat, "--quick", "--steps", "4", "--mask", "even",
                     "--val-fraction", "0.25", "--device", "cpu", "--plot", plot, "--out", tmp_path / "runs", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["trained_positions"] == [0, 2, 4, 6] and doc["steps"] == 4
    for name in ("equivariant", "baseline"):
        m = doc["models"][name]
        assert m["steps"] == 4 and len(m["per_position"]) == doc["train_length"] == 8
        M = np.asarray(m["conflict_matrix"])
        assert np.allclose(M, M.T) and np.allclose(np.diag(M), 1.0)
        a = np.asarray(m["per_position"])
        assert m["trained_loss"] == pytest.approx(a[[2, 4, 6]].mean())   # position 0 excluded
        assert m["untrained_loss"] == pytest.approx(a[[1, 3, 5, 7]].mean())
        assert m["gap_ratio"] == pytest.approx(m["untrained_loss"] / m["trained_loss"])
    assert doc["models"]["equivariant"]["window"] == 3 and doc["models"]["baseline"]["window"] is None
    assert doc["models"]["baseline"]["position"] == "learned"
    assert plot.stat().st_size > 1000
    assert (tmp_path / "runs" / "equivariant" / "generator.pt").exists() and (tmp_path / "runs" / "baseline" / "generator.pt").exists()


def test_cli_errors(tmp_path, capsys):
    lat = write_latents(tmp_path / "l.h5", n_images=8)
    assert _run(capsys, "analyze", "conflict", "--latents", lat, "--steps", "2", "--mask", "all", "--quick")[0] == 2
    assert _run(capsys, "analyze", "conflict", "--latents", lat, "--mask", "even")[0] == 2  # no budget
    assert _run(capsys, "analyze", "conflict", "--latents", tmp_path / "missing.h5", "--quick")[0] == 3
