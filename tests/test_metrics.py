"""FID/KID maths, tiling, statistics files, the Inception path (with a stand-in network), and `eqimg eval fid`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eqcli_core.errors import BadInputError, EqimgError, UsageError
from eqcli_core.metrics import (
    FeatureExtractor, FeatureSet, InceptionExtractor, feature_statistics, frechet_distance, image_features,
    kernel_inception_distance, load_stats, make_extractor, save_stats, square_tiles,
)


def _gauss(n, d, seed, shift=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def test_frechet_zero_for_same_set_and_monotone_in_noise():
    base = _gauss(400, 16, 0)
    mu, s = feature_statistics(base)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    noise = _gauss(400, 16, 1)
    vals = [frechet_distance(mu, s, *feature_statistics(base + a * noise)) for a in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals


def test_frechet_methods_agree_and_match_1d_formula():
    a, b = _gauss(300, 8, 2), _gauss(300, 8, 3, shift=0.5, scale=1.5) @ np.random.default_rng(4).normal(size=(8, 8))
    ma, sa = feature_statistics(a)
    mb, sb = feature_statistics(b)
    assert frechet_distance(ma, sa, mb, sb, method="eigh") == pytest.approx(frechet_distance(ma, sa, mb, sb, method="sqrtm"), rel=1e-6)
    # 1-D Gaussians: (m1-m2)^2 + (sd1-sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # rank-deficient covariances (fewer samples than dimensions) stay finite and real
    c, d = _gauss(5, 32, 5), _gauss(5, 32, 6)
    fd = frechet_distance(*feature_statistics(c), *feature_statistics(d))
    assert np.isfinite(fd) and fd > 0
    with pytest.raises(UsageError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_near_zero_for_same_distribution_and_grows():
    x, y = _gauss(300, 16, 7), _gauss(300, 16, 8)
    same, _ = kernel_inception_distance(x, y, subsets=20, subset_size=100)
    vals = [kernel_inception_distance(x, _gauss(300, 16, 8, shift=s), subsets=20, subset_size=100)[0] for s in (0.3, 1.0, 2.0)]
    assert abs(same) < 0.2 * vals[0]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals
    # deterministic for a seed
    assert kernel_inception_distance(x, y, 5, 50, seed=3) == kernel_inception_distance(x, y, 5, 50, seed=3)


def test_square_tiles_never_squash():
    wide = np.arange(32 * 100 * 3, dtype=np.uint8).reshape(32, 100, 3)
    tiles = square_tiles(wide)
    assert len(tiles) == 3 and all(t.shape == (32, 32, 3) for t in tiles)
    np.testing.assert_array_equal(tiles[1], wide[:, 32:64])
    tall = np.zeros((50, 20, 3), np.uint8)
    assert [t.shape for t in square_tiles(tall)] == [(20, 20, 3)]


class MeanColour(FeatureExtractor):
    """A stand-in extractor: per-channel mean and std of each tile."""

    name, dim = "toy", 6

    def __call__(self, tiles):
        return np.stack([np.concatenate([t.mean((0, 1)), t.std((0, 1))]) for t in tiles]).astype(np.float32)


def _write(dir_, sizes, seed=0, bright=0):
    dir_.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        arr = np.clip(rng.integers(0, 200, size=(h, w, 3)) + bright, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(dir_ / f"img{i}.png")
    return dir_


def test_image_features_tiles_batches_and_skips(tmp_path):
    d = _write(tmp_path / "imgs", [(16, 16), (16, 48), (16, 40), (24, 24)])
    (d / "broken.png").write_bytes(b"not a png")
    fs1 = image_features(d, MeanColour(), batch=1)
    fs5 = image_features(d, MeanColour(), batch=5)
    assert fs1.tiles == 1 + 3 + 2 + 1 and fs1.images == 4 and len(fs1.skipped) == 1
    np.testing.assert_allclose(fs1.features, fs5.features)
    # arrays and tensors go through the same path as files
    arr = np.asarray(Image.open(d / "img1.png"))
    fa = image_features([arr, torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1], MeanColour())
    np.testing.assert_allclose(fa.features[:3], fa.features[3:], atol=1e-4)
    with pytest.raises(BadInputError):
        image_features(tmp_path / "missing", MeanColour())


def test_stats_round_trip_and_feature_space_check(tmp_path):
    fs = FeatureSet(_gauss(20, 6, 0).astype(np.float32), "toy", images=10)
    info = save_stats(fs, tmp_path / "s.npz")
    assert info["count"] == 20 and info["stores_features"]
    st = load_stats(tmp_path / "s.npz", expect_space="toy")
    mu, sig = feature_statistics(fs.features)
    np.testing.assert_allclose(st.mu, mu)
    np.testing.assert_allclose(st.sigma, sig)
    assert st.feature_space == "toy" and st.count == 20 and st.features.shape == (20, 6)
    with pytest.raises(UsageError, match="different feature spaces"):
        load_stats(tmp_path / "s.npz", expect_space="efficientnet-lite0")
    np.savez(tmp_path / "plain.npz", mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32))
    assert load_stats(tmp_path / "plain.npz").feature_space == "inception-v3"
    np.savez(tmp_path / "unlabelled.npz", mu=np.zeros(7), sigma=np.eye(7))
    with pytest.raises(BadInputError, match="feature space"):
        load_stats(tmp_path / "unlabelled.npz")


class _Layers(torch.nn.Module):
    def forward(self, x):  # (B,3,299,299) in [-1,1] -> (B,2048,1,1)
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).reshape(x.shape[0], -1)[:, :192].repeat(1, 11)[:, :2048, None, None]


class _FakeInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x):
        return self.layers(x)


def test_inception_path_with_local_weights_and_missing_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("EQIMG_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(EqimgError, match="Inception weights not found"):
        make_extractor("inception", tmp_path / "inception-2015-12-05.pt")
    if not Path("/tmp/inception-2015-12-05.pt").exists():  # clean-fid's cache would be picked up
        with pytest.raises(EqimgError, match="not available offline"):
            make_extractor("inception", None)
        assert make_extractor("auto", None).name == "efficientnet-lite0"
    # a stand-in torchscript file with clean-fid's layout (`.layers`) exercises the whole wiring
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    ex = make_extractor("auto", tmp_path)  # a directory holding the file works too
    assert isinstance(ex, InceptionExtractor) and ex.comparable_with_published_fid
    tiles = [np.full((32, 32, 3), 255, np.uint8), np.zeros((40, 40, 3), np.uint8)]
    f = ex(tiles)
    assert f.shape == (2, 2048)
    np.testing.assert_allclose(f[0], (255 - 128) / 128, atol=1e-4)  # clean-fid's (x-128)/128
    np.testing.assert_allclose(f[1], -1.0, atol=1e-4)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(EqimgError, match="not clean-fid's torchscript"):
        InceptionExtractor(tmp_path / "junk.pt")


def _run_cli(args, capsys):
    from eqcli.main import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr().out
    return code, out


def test_cli_eval_fid_end_to_end(tmp_path, capsys, monkeypatch):
    from typer.testing import CliRunner

    from eqcli.main import app

    monkeypatch.delenv("EQIMG_INCEPTION_WEIGHTS", raising=False)
    real = _write(tmp_path / "real", [(32, 32), (32, 64), (32, 32)], seed=0)
    fake = _write(tmp_path / "fake", [(32, 96), (32, 32)], seed=1, bright=60)
    stats = tmp_path / "real.npz"
    res = CliRunner().invoke(app, ["eval", "fid", "--real", str(real), "--fake", str(fake), "--make-stats", str(stats),
                                   "--features", "efficientnet-lite0", "--kid-subsets", "3", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["feature_space"] == "efficientnet-lite0" and doc["comparable_with_published_fid"] is False
    assert doc["n_real"] == 4 and doc["n_fake"] == 4 and doc["fid"] > 0 and doc["kid_mean"] is not None
    assert stats.is_file() and doc["stats_saved"]["count"] == 4
    # the saved statistics give the same FID (auto picks the stats file's feature space)
    code, out = _run_cli(["eval", "fid", "--real", str(stats), "--fake", str(fake), "--kid-subsets", "3", "--json"], capsys)
    doc2 = json.loads(out)
    assert code == 0 and doc2["fid"] == pytest.approx(doc["fid"], rel=1e-3) and doc2["feature_space"] == "efficientnet-lite0"
    assert doc2["kid_mean"] == pytest.approx(doc["kid_mean"], rel=0.05, abs=1e-4)  # float16-stored features
    # a stats file from another feature space is refused with a usage error
    np.savez(tmp_path / "inc.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    code, out = _run_cli(["eval", "fid", "--real", str(tmp_path / "inc.npz"), "--fake", str(fake), "--features", "efficientnet-lite0", "--json"], capsys)
    assert code == 2 and json.loads(out)["error"] == "usage_error"
    code, out = _run_cli(["eval", "fid", "--real", str(real), "--json"], capsys)
    assert code == 2
    code, out = _run_cli(["eval", "fid", "--real", str(real), "--fake", str(tmp_path / "nope"), "--json"], capsys)
    assert code == 3 and json.loads(out)["error"] == "bad_input"
