"""`eqimg eval long`: quality per distance bucket along very wide generated images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eqcli.main import main
from eqcli_core.analysis.long_range import LongConfig, bucket_edges, generated_tile_features, real_tiles_from_landscapes
from eqcli_core.errors import UsageError
from eqcli_core.generator import EquivariantGenerator, make_config, save_generator
from eqcli_core.metrics import make_extractor, square_tiles
from eqcli_core.pipeline import SampleConfig, generate_image
from eqcli_core.tokenizer import TokenizerConfig, build_tokenizer, save_tokenizer

NAMES = ["mountains", "coast", "forest"]
H = 32


def tiny_tokenizer():
    torch.manual_seed(0)
    cfg = TokenizerConfig(arch="fast", height=H, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), len_down_scale=1,
                          z_channels=8, token_dim=8, stem=2, kernel=3, mlp_ratio=2, tail_ch=8)
    return build_tokenizer(cfg).eval()  # 32 px tall, 4-px columns


def tiny_generator():
    torch.manual_seed(0)
    cfg = make_config("tiny", token_dim=8, num_classes=3, depth=1, width=32, num_heads=2, head_width=32, head_depth=1,
                      sampling_steps=2, train_length=8)  # training width 32 px = one square tile
    g = EquivariantGenerator(cfg).eval()
    with torch.no_grad():
        for p in g.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    g.class_names = list(NAMES)
    g.meta = {}
    return g


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    save_tokenizer(tiny_tokenizer(), d / "tok.pt")
    save_generator(tiny_generator(), d / "gen.pt", class_names=NAMES)
    return d / "gen.pt", d / "tok.pt"


@pytest.mark.parametrize("n_tiles", [1, 2, 7, 8, 64, 100])
@pytest.mark.parametrize("k", [1, 3, 6, 20])
@pytest.mark.parametrize("spacing", ["log", "linear"])
def test_buckets_partition_the_tiles(n_tiles, k, spacing):
    spans = bucket_edges(n_tiles, k, spacing)
    assert spans[0][0] == 0 and spans[-1][1] == n_tiles and len(spans) <= k
    assert all(a < b for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    if spacing == "log" and k > 1 and n_tiles > 1:
        assert spans[0] == (0, 1)  # the first bucket is one tile: the training width for square training


def test_bucket_errors():
    with pytest.raises(UsageError):
        bucket_edges(8, 3, "cubic")
    with pytest.raises(UsageError):
        bucket_edges(0, 3)


def test_streamed_tile_features_equal_whole_image_tiles():
    gen, tok = tiny_generator(), tiny_tokenizer()
    ext = make_extractor("efficientnet-lite0", None, "cpu")
    cfg = LongConfig(width=4 * H, num=2, class_name="coast", seed=3, steps=2, cfg=2.0)
    feats, idx, classes, _ = generated_tile_features(gen, tok, cfg, ext, torch.device("cpu"))
    assert classes == ["coast", "coast"] and idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    img = generate_image(gen, tok, SampleConfig(width=4 * H, num=2, seed=3, classes="coast", cfg=2.0, steps=2)).images
    ref = ext([t for k in range(4) for j in range(2) for t in [square_tiles(img[j])[k]]])
    assert np.allclose(feats, ref, atol=1e-4)


@pytest.mark.parametrize("n", [2, 7, 40])
def test_fast_frechet_agrees_with_metrics(n):
    from eqcli_core.analysis.long_range import FrechetReference
    from eqcli_core.metrics import feature_statistics, frechet_distance

    rng = np.random.default_rng(n)
    d = 24  # the identity holds in any dimension; n = 40 > d takes the D x D branch
    ref = rng.standard_normal((30, d)) @ rng.standard_normal((d, d)) * 0.3
    fake = rng.standard_normal((n, d)) + 0.5
    fast = FrechetReference(ref)(fake)
    assert fast == pytest.approx(frechet_distance(*feature_statistics(fake), *feature_statistics(ref)), rel=1e-6, abs=1e-8)


def test_real_landscape_tiles_are_fresh_renders():
    tiles = real_tiles_from_landscapes(["coast", "forest"], H, 20, seed=0)
    assert len(tiles) == 20 and all(t.shape == (H, H, 3) and t.dtype == np.uint8 for t in tiles)
    with pytest.raises(UsageError):
        real_tiles_from_landscapes(["cats"], H, 4, seed=0)


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code or 0, capsys.readouterr().out


def test_cli_end_to_end_landscapes(ckpts, tmp_path, capsys):
    gen, tok = ckpts
    plot = tmp_path / "long.png"
    code, out = _run(capsys, "eval", "long", "--generator", gen, "--tokenizer", tok, "--width", 8 * H, "--real-landscapes",
                     "--num", "3", "--buckets", "4", "--real-tiles", "12", "--steps", "2", "--device", "cpu",
                     "--plot", plot, "--json")
    assert code == 0, out
    doc = json.loads(out)
    b = doc["buckets"]
    assert [(r["start_px"], r["end_px"]) for r in b] == [(0, H), (H, 2 * H), (2 * H, 4 * H), (4 * H, 8 * H)]
    assert [r["tiles"] for r in b] == [3, 3, 6, 12] and doc["equal_n"] == 3
    assert doc["classes"] == NAMES and doc["train_width_px"] == H and b[-1]["end_x_train"] == 8
    assert all(r["fd"] is not None and r["fd"] >= 0 for r in b)
    assert b[0]["fd"] == pytest.approx(b[0]["fd_all_tiles"]) and b[0]["fd_subset_std"] == 0  # n == equal_n: one subset
    assert b[-1]["fd_subset_std"] > 0
    assert b[-1]["kid_mean"] is not None and b[0]["kid_mean"] is None  # KID needs >= 10 tiles
    assert doc["real_floor_fd"] is not None and doc["comparable_with_published_fid"] is False
    assert plot.stat().st_size > 1000


def test_cli_real_dir_and_errors(ckpts, tmp_path, capsys):
    gen, tok = ckpts
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # 64 px tall: scaled to 32 px, 3 tiles each
        Image.fromarray(rng.integers(0, 256, (2 * H, 3 * 2 * H, 3), dtype=np.uint8)).save(real / f"{i}.png")
    code, out = _run(capsys, "eval", "long", "--generator", gen, "--tokenizer", tok, "--width", 3 * H, "--real", real,
                     "--class", "forest", "--num", "2", "--buckets", "3", "--spacing", "linear", "--steps", "2",
                     "--device", "cpu", "--plot", tmp_path / "p.png", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["real_tiles"] == 6 and doc["classes"] == ["forest"] and [r["tiles"] for r in doc["buckets"]] == [2, 2, 2]
    base = ["eval", "long", "--generator", gen, "--tokenizer", tok, "--device", "cpu", "--plot", tmp_path / "q.png"]
    assert _run(capsys, *base, "--width", 3 * H + 2, "--real", real)[0] == 2          # not a multiple of the column
    assert _run(capsys, *base, "--width", 3 * H, "--real", real, "--real-landscapes")[0] == 2  # two references
    assert _run(capsys, *base, "--width", 3 * H, "--real-landscapes", "--class", "cats")[0] == 2
    assert _run(capsys, *base, "--width", 3 * H, "--real", tmp_path / "nothing")[0] == 3


def test_cli_refuses_absurd_width_up_front(ckpts, tmp_path, capsys):
    import time

    gen, tok = ckpts
    base = ["eval", "long", "--generator", gen, "--tokenizer", tok, "--real-landscapes", "--device", "cpu",
            "--plot", tmp_path / "p.png", "--json"]
    t0 = time.monotonic()
    code, out = _run(capsys, *base, "--width", 4_000_000_000)
    assert code == 2 and time.monotonic() - t0 < 5.0, out
    doc = json.loads(out)
    assert "--max-width" in doc["message"] and "--max-width" in doc["hint"], doc
    # the limit is the flag's: a lower one refuses an ordinary width as well
    code, out = _run(capsys, *base, "--width", 3 * H, "--max-width", 2 * H)
    assert code == 2 and "--max-width" in json.loads(out)["message"]
    assert not (tmp_path / "p.png").exists()
