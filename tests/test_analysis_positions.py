"""`eqimg analyze positions`: per-position held-out loss, at and beyond the training length."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eqcli.main import main
from eqcli_core.analysis.positions import PositionsConfig, analyze_positions, build_sequences, per_position_loss
from eqcli_core.generator import EquivariantGenerator, make_config, save_generator
from eqcli_core.latents import LatentDataset

C = 4
T = 6  # training length of the tiny generators
TINY = dict(depth=1, width=32, num_heads=2, head_width=32, head_depth=1, class_tokens=2, train_length=T,
            token_dim=C, num_classes=2, diffusion_batch_mul=2, shift_range=4)


def write_latents(path: Path, widths, seed: int = 0) -> Path:
    """A tiny eqimg-latents file; the mirror tokens differ from the flipped tokens (as with a real tokenizer)."""
    import h5py

    rng = np.random.default_rng(seed)
    widths = np.asarray(widths)
    labels = np.arange(len(widths)) % 2
    cols = [rng.standard_normal((w, C)).astype(np.float32) + y for w, y in zip(widths, labels)]
    mirror = [(c[::-1] + 0.1).astype(np.float32) for c in cols]
    with h5py.File(path, "w") as f:
        f["tokens"], f["tokens_mirror"] = np.concatenate(cols), np.concatenate(mirror)
        f["offsets"] = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        f["widths"], f["labels"] = widths.astype(np.int64), labels.astype(np.int64)
        f.create_dataset("paths", data=[f"c{y}/img{i}.png" for i, y in enumerate(labels)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=["a", "b"], dtype=h5py.string_dtype())
        f.attrs.update(format="eqimg-latents", format_version=1, complete=True, token_dim=C, column_width=4, height=8,
                       tokenizer_fingerprint="synthetic0001", tokenizer_config="{}", dtype="float32",
                       token_std=1.0, token_mean=0.0, all_finite=True)
    return path


def tiny_model(seed: int = 0, **kw) -> EquivariantGenerator:
    torch.manual_seed(seed)
    g = EquivariantGenerator(make_config("tiny", **{**TINY, **kw})).eval()
    with torch.no_grad():  # zero-initialised output layers would make the head ignore its inputs
        for p in g.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return g


def _model_loss_draws(B, N, m, seed):
    """The noise and t that model.loss draws (eval mode: no label dropout, no RoPE offset)."""
    torch.manual_seed(seed)
    noise = torch.randn(m * B * N, C)
    t = torch.rand(m * B * N) * (1 - 1e-5) + 1e-5
    return noise.view(m, B, N, C), t.view(m, B, N)


@pytest.mark.parametrize("mask_kind", ["none", "positions", "per_sample"])
def test_per_position_loss_agrees_with_model_loss(mask_kind):
    model = tiny_model(latent_scale=0.7)
    B, N = 3, 9
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, N, C, generator=g), torch.tensor([0, 1, 0])
    mask = {"none": None, "positions": torch.arange(N) % 2 == 0,
            "per_sample": torch.rand(B, N, generator=g) < 0.5}[mask_kind]
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = model.loss(x, y, loss_mask=mask)
        noise, t = _model_loss_draws(B, N, model.config.diffusion_batch_mul, 5)
    per = per_position_loss(model, x, y, noise, t)  # (B,N)
    w = torch.ones(B, N) if mask is None else mask.expand(B, N).float()
    assert torch.allclose((per * w).sum() / w.sum(), ref["loss"], atol=1e-6, rtol=1e-5)
    assert torch.allclose(per.mean(0), ref["per_position"], atol=1e-6, rtol=1e-5)


def test_per_position_loss_is_differentiable_and_causal():
    model = tiny_model()  # depth 1: the token at p is conditioned on slot p-1, which sees tokens p-1-window..p-1
    w = model.config.window
    x = torch.randn(2, 10, C, requires_grad=True)
    noise, t = torch.randn(1, 2, 10, C), torch.full((1, 1, 1), 0.5)
    per = per_position_loss(model, x, torch.tensor([0, 1]), noise, t)
    (gx,) = torch.autograd.grad(per[:, 8].sum(), x)
    assert gx[:, 9:].abs().max() == 0 and gx[:, 8].abs().max() > 0           # nothing to the right
    assert gx[:, 8 - 1 - w:8].abs().min(dim=-1).values.max() > 0              # the window is seen
    assert gx[:, :8 - 1 - w].abs().max() == 0                                 # nothing beyond it


def test_sequences_natural_and_mirror_tiled(tmp_path):
    lat = write_latents(tmp_path / "l.h5", [7, 20, 9, 13])
    ds = LatentDataset(lat, T, split="all")
    toks, labels, kinds = build_sequences(ds, 12, 4, fill="mirror", seed=0)
    assert toks.shape == (4, 12, C) and sorted(kinds) == ["mirror-tiled"] * 2 + ["natural"] * 2
    for s, y, k in zip(toks, labels, kinds):
        # find the source image by label and content
        found = False
        for i in range(ds.num_images):
            img, mir, w = ds.image_tokens(i), ds.image_tokens(i, mirrored=True), ds.image_width(i)
            if k == "natural" and w >= 12:
                found |= any(torch.equal(s, img[a:a + 12]) for a in range(w - 11))
            elif k == "mirror-tiled" and w < 12:
                found |= torch.equal(s, torch.cat([img, mir, img])[:12])
            if found:
                assert int(y) == ds.image_label(i)
                break
        assert found
    toks, _, kinds = build_sequences(ds, 12, 4, fill="require", seed=0)
    assert toks.shape[0] == 2 and set(kinds) == {"natural"}
    # distance of every token to its source image's nearest edge; mirror seams count as edges
    _, _, kinds2, dist = build_sequences(ds, 12, 4, fill="mirror", seed=0, return_columns=True)
    assert dist.shape == (4, 12)
    for k, d in zip(kinds2, dist):
        if k == "mirror-tiled":  # widths 7 or 9: image [0, w), then its mirror image
            w = 7 if d[6] == 0 and d[7] == 0 else 9
            expect = torch.tensor([min(c % w, w - 1 - c % w) for c in range(12)])
            assert torch.equal(d, expect)
        else:
            assert d.min() >= 0 and (d[1:] - d[:-1]).abs().max() <= 1


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code or 0, capsys.readouterr().out


def test_cli_end_to_end(tmp_path, capsys):
    lat = write_latents(tmp_path / "l.h5", [8, 14, 30, 9, 12, 26, 40, 7])
    ckpt = tmp_path / "g.pt"
    save_generator(tiny_model(), ckpt, class_names=["a", "b"])
    plot = tmp_path / "p.png"
    code, out = _run(capsys, "analyze", "positions", "--generator", ckpt, "--latents", lat, "--lengths", "1,2,4",
                     "--num", "3", "--t-draws", "2", "--val-fraction", "0.5", "--device", "cpu", "--plot", plot, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert [r["length"] for r in doc["lengths"]] == [T, 2 * T, 4 * T]
    assert doc["held_out_images"] == 4
    for r in doc["lengths"]:
        assert len(r["per_position"]) == r["length"] and r["sequences"] == 3
        assert r["natural"] + r["mirror_tiled"] == 3
        assert np.isclose(r["mean"], np.mean(r["per_position"]))
    assert doc["lengths"][0]["mean_beyond_train_length"] is None and doc["lengths"][1]["mean_beyond_train_length"] > 0
    assert plot.stat().st_size > 1000

    # the library call gives the same numbers (fixed noise: fully deterministic); with edge 0 the
    # interior curve is the plain one, with a larger edge it averages fewer tokens
    again = analyze_positions(ckpt, lat, PositionsConfig(lengths=(2,), num=3, t_draws=2, val_fraction=0.5, edge=0))
    assert np.allclose(again["lengths"][0]["per_position"], doc["lengths"][1]["per_position"])
    assert np.allclose(again["lengths"][0]["per_position_interior"], doc["lengths"][1]["per_position"])
    inner = doc["lengths"][2]["per_position_interior"]
    assert len(inner) == 4 * T and any(v is not None for v in inner)


def test_learned_positions_skip_lengths_beyond_the_table(tmp_path):
    lat = write_latents(tmp_path / "l.h5", [8, 14, 30, 9, 12, 26])
    model = tiny_model(window=None, position="learned", max_length=2 * T)
    doc = analyze_positions(model, lat, PositionsConfig(lengths=(1, 2, 4), num=2, t_draws=1, val_fraction=0.5))
    assert "skipped" in doc["lengths"][2] and "per_position" in doc["lengths"][1]


def test_bad_inputs(tmp_path, capsys):
    lat = write_latents(tmp_path / "l.h5", [8, 14, 30, 9])
    ckpt = tmp_path / "g.pt"
    save_generator(tiny_model(token_dim=6), ckpt, class_names=["a", "b"])
    code, _ = _run(capsys, "analyze", "positions", "--generator", ckpt, "--latents", lat, "--device", "cpu",
                   "--plot", tmp_path / "p.png")
    assert code == 3
    code, _ = _run(capsys, "analyze", "positions", "--generator", ckpt, "--latents", lat, "--lengths", "1,x")
    assert code == 2
