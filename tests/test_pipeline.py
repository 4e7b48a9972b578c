"""Generation pipelines: fixed width, endless tiles, region control, outpainting, seams."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from eqcli_core import regions as R
from eqcli_core.decode import to_uint8
from eqcli_core.errors import CheckpointError, ResourceError, UsageError
from eqcli_core.generator import EquivariantGenerator, make_config
from eqcli_core.pipeline import (SampleConfig, check_memory, check_pair, generate_image, generate_stream, outpaint,
                                 prepare_image, seam_ratio)
from eqcli_core.sampling import sample_tokens
from eqcli_core.tokenizer import TokenizerConfig, build_tokenizer

NAMES = ["mountains", "coast", "forest"]


def tiny_tokenizer(seed=0):
    torch.manual_seed(seed)
    cfg = TokenizerConfig(arch="fast", height=32, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), len_down_scale=1,
                          z_channels=8, token_dim=8, stem=2, kernel=3, mlp_ratio=2, tail_ch=8)
    return build_tokenizer(cfg).eval()  # 32 px tall, 4-px columns


def tiny_generator(seed=0, token_dim=8):
    torch.manual_seed(seed)
    cfg = make_config("tiny", token_dim=token_dim, num_classes=3, depth=2, width=32, num_heads=2, head_width=32, head_depth=1,
                      sampling_steps=3, train_length=8)
    g = EquivariantGenerator(cfg).eval()
    with torch.no_grad():  # untrained models zero-init their output layers: make every input matter
        for p in g.parameters():
            if not p.any():
                p.normal_(0, 0.2)
        g.class_emb.weight.normal_(0, 1.0)
    g.class_names = list(NAMES)
    g.meta = {}
    return g


@pytest.fixture(scope="module")
def models():
    return tiny_generator(), tiny_tokenizer()


# ----------------------------------------------------------------------------- regions

def _parse(spec, width=256):
    return R.parse_regions(spec, class_names=NAMES, num_classes=3, column_width=4, width=width)


def test_regions_parse():
    r = _parse("mountains:0-128,Coast:128-200,2:200-256")
    assert [(x.class_id, x.start, x.end) for x in r] == [(0, 0, 32), (1, 32, 50), (2, 50, 64)]
    sched = R.make_schedule(r, batch=2)
    assert sched(0).tolist() == [0, 0] and sched(31).tolist() == [0, 0] and sched(32).tolist() == [1, 1] and sched(63).tolist() == [2, 2]
    assert [(x.class_id, x.start, x.end) for x in _parse("forest")] == [(2, 0, None)]
    open_end = R.parse_regions("coast:0-64,forest:64-", class_names=NAMES, num_classes=3, column_width=4, width=None)
    assert R.class_at(open_end, 10_000) == 2


@pytest.mark.parametrize("spec,fragment", [
    ("mountains:0-100,coast:128-256", "gap"),
    ("mountains:0-128,coast:120-256", "overlap"),
    ("mountains:0-128,desert:128-256", "unknown class 'desert'"),
    ("mountains:0-130,coast:130-256", "column boundary"),
    ("mountains:0-128,coast:128-200", "image is 256 px wide"),
    ("mountains:4-256", "should start at 0"),
    ("5", "out of range"),
    ("mountains:0-", None),
    ("mountains", None),
    ("mountains:0-x", "cannot parse"),
])
def test_regions_errors(spec, fragment):
    if fragment is None:
        _parse(spec)
        return
    with pytest.raises(UsageError) as e:
        _parse(spec)
    assert fragment in e.value.message


def test_regions_endless_needs_open_end():
    with pytest.raises(UsageError, match="open"):
        R.parse_regions("coast:0-64", class_names=NAMES, num_classes=3, column_width=4, width=None)


# ----------------------------------------------------------------------------- fixed width

def test_generate_image_matches_sample_then_decode(models):
    gen, tok = models
    cfg = SampleConfig(width=96, num=2, seed=5, classes="coast", cfg=2.0, cfg_schedule="linear", decode_chunk=5)
    res = generate_image(gen, tok, cfg)
    assert res.images.shape == (2, 32, 96, 3) and res.images.dtype == np.uint8
    assert res.grid.shape == (64, 96, 3)
    # path 2: whole token sequence, then one whole decode
    g = torch.Generator().manual_seed(5)
    toks = sample_tokens(gen, torch.tensor([1, 1]), 24, cfg=2.0, cfg_schedule="linear", generator=g)
    with torch.no_grad():
        ref = to_uint8(tok.decode(toks))
    diff = np.abs(ref.astype(int) - res.images.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    # same seed, same image; another seed, another image
    assert np.array_equal(generate_image(gen, tok, cfg).images, res.images)
    assert not np.array_equal(generate_image(gen, tok, SampleConfig(width=96, num=2, seed=6, classes="coast", cfg=2.0)).images, res.images)


@pytest.mark.parametrize("width", [4, 8, 36, 128])
def test_shapes_at_many_widths(models, width):
    gen, tok = models
    res = generate_image(gen, tok, SampleConfig(width=width, num=1, classes="0", cfg=1.0, decode_chunk=3))
    assert res.images.shape == (1, 32, width, 3)
    assert res.columns_per_s > 0


def test_default_width_and_random_classes(models):
    gen, tok = models
    res = generate_image(gen, tok, SampleConfig(num=3, seed=1))
    assert res.images.shape[2] == gen.config.train_length * tok.column_width
    assert len(res.class_ids) == 3 and all(0 <= c < 3 for c in res.class_ids)


def test_bad_width_names_neighbours(models):
    gen, tok = models
    with pytest.raises(UsageError) as e:
        generate_image(gen, tok, SampleConfig(width=250, classes="coast"))
    assert "248" in e.value.message


def test_region_control_changes_only_the_right_part(models):
    gen, tok = models
    a = generate_image(gen, tok, SampleConfig(width=128, seed=3, classes="mountains", cfg=3.0, cfg_schedule="constant")).images
    b = generate_image(gen, tok, SampleConfig(width=128, seed=3, classes="mountains:0-64,forest:64-128", cfg=3.0, cfg_schedule="constant")).images
    ctx_px = (tok.decode_context + 1) * tok.column_width  # the decoder mixes a few columns across the switch
    assert np.array_equal(a[..., : 64 - ctx_px, :], b[..., : 64 - ctx_px, :])
    assert not np.array_equal(a[..., 64:, :], b[..., 64:, :])


def test_save_tokens_hdf5(models, tmp_path):
    gen, tok = models
    path = tmp_path / "t.h5"
    generate_image(gen, tok, SampleConfig(width=40, num=3, batch=2, seed=2, classes="forest"), save_tokens=path)
    with h5py.File(path, "r") as f:
        toks = f["tokens"][()]
        assert toks.shape == (3, 10, 8)
        assert f.attrs["seed"] == 2 and f.attrs["classes"] == "forest"
    # batch 0 uses the seed itself, batch 1 (images 2..) seed + 2
    g = torch.Generator().manual_seed(2)
    ref = sample_tokens(gen, torch.tensor([2, 2]), 10, cfg=3.0, cfg_schedule="linear", generator=g)
    assert np.allclose(toks[:2], ref.numpy(), atol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_memory_guard(models):
    gen, tok = models
    with pytest.raises(ResourceError) as e:
        generate_image(gen, tok, SampleConfig(width=4 * 2**28, classes="coast"))
    assert "MiB" in e.value.message and "--stream" in e.value.hint
    assert check_memory(1024, 32, 1, 8, 4, available=10**9) > 0


def test_mismatched_tokenizer(models):
    gen, tok = models
    with pytest.raises(CheckpointError, match="mismatched tokenizer"):
        check_pair(tiny_generator(token_dim=16), tok)
    g2 = tiny_generator()
    g2.meta = {"latent_fingerprint": "0123456789abcdef"}
    tok.fingerprint = "fedcba9876543210"
    with pytest.raises(CheckpointError, match="mismatched tokenizer"):
        check_pair(g2, tok)
    tok.fingerprint = None


# ----------------------------------------------------------------------------- endless

def test_stream_tiles_equal_fixed_width_image(models):
    gen, tok = models
    kw = dict(seed=4, classes="coast", cfg=2.0, cfg_schedule="constant", decode_chunk=4)
    img = generate_image(gen, tok, SampleConfig(width=160, **kw)).images[0]
    tiles = list(generate_stream(gen, tok, SampleConfig(width=160, tile_width=64, **kw)))
    assert [t.shape[1] for t in tiles] == [64, 64, 32]
    assert np.array_equal(np.concatenate(tiles, axis=1), img)


def test_endless_stream_max_tiles_is_a_prefix(models):
    gen, tok = models
    kw = dict(width=0, seed=7, classes="mountains:0-32,coast:32-", cfg=2.0, tile_width=32, decode_chunk=3)
    two = list(generate_stream(gen, tok, SampleConfig(max_tiles=2, **kw)))
    three = list(generate_stream(gen, tok, SampleConfig(max_tiles=3, **kw)))
    assert len(two) == 2 and len(three) == 3 and all(t.shape == (32, 32, 3) for t in three)
    assert all(np.array_equal(a, b) for a, b in zip(two, three))
    # an endless iterator can also simply be abandoned
    it = generate_stream(gen, tok, SampleConfig(**kw))
    first = [next(it) for _ in range(2)]
    it.close()
    assert all(np.array_equal(a, b) for a, b in zip(first, two))


# ----------------------------------------------------------------------------- outpainting

def _photo(h=32, w=48):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 5) % 256, (y * 7) % 256, ((x + y) * 3) % 256], -1)
    return img.astype(np.uint8)


@pytest.mark.parametrize("direction", ["right", "left", "both"])
def test_outpaint_keeps_original_pixels(models, direction):
    gen, tok = models
    img = _photo()
    res = outpaint(gen, tok, img, SampleConfig(width=96, seed=1, classes="coast"), direction=direction)
    x0, x1 = res.original_x
    assert res.image.shape == (32, 96, 3) and x1 - x0 == 48
    assert np.array_equal(res.image[:, x0:x1], img)
    assert {"right": [48], "left": [48], "both": [24, 72]}[direction] == res.seams
    assert np.isfinite(res.seam_ratio)


def test_outpaint_resizes_and_crops(models):
    gen, tok = models
    img = _photo(64, 102)  # -> 32 x 51 -> cropped to 48
    arr = prepare_image(img, 32, 4)
    assert arr.shape == (32, 48, 3)
    with pytest.raises(UsageError):
        outpaint(gen, tok, img, SampleConfig(width=40, classes="coast"))  # not wider than the image
    with pytest.raises(UsageError):
        outpaint(gen, tok, img, SampleConfig(width=96, classes="coast"), direction="up")


def test_outpaint_blend_hides_reconstruction_error(models):
    gen, tok = models
    img = _photo()
    cfg = SampleConfig(width=96, seed=1, classes="coast")
    raw = outpaint(gen, tok, img, cfg, blend_columns=0)
    blended = outpaint(gen, tok, img, cfg, blend_columns=2)
    assert np.array_equal(raw.image[:, 56:], blended.image[:, 56:])  # only 2 columns (8 px) change
    assert blended.seam_ratio < raw.seam_ratio


def test_seam_ratio():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-3, 4, size=(16, 64, 3)), axis=1).clip(0, 255) + 100
    img = smooth.clip(0, 255).astype(np.uint8)
    step = img.copy()
    step[:, 32:] = (step[:, 32:].astype(int) + 80).clip(0, 255).astype(np.uint8)
    assert seam_ratio(step, [32]) > 5 * seam_ratio(img, [32])
    assert 0.2 < seam_ratio(img, [32]) < 5


# ----------------------------------------------------------------------------- official release layout

def test_official_fixture_models(official_dir):
    official = pytest.importorskip("eqcli_core.official_generator")
    from eqcli_core.tokenizer.official import convert_release_tokenizer

    tok = convert_release_tokenizer(official_dir / "release_tokenizer.ckpt").eval()
    gen = official.convert_release_generator(official_dir / "release_generator.pth").eval()
    check_pair(gen, tok)
    assert tok.decode_context is None and tok.column_width == 4 and tok.height == 32
    res = generate_image(gen, tok, SampleConfig(width=48, num=1, seed=0, classes="4", cfg=3.0))
    assert res.images.shape == (1, 32, 48, 3)
    # the streamed decode of a short image (one window) is the whole decode of the same tokens
    toks = sample_tokens(gen, torch.tensor([4]), 12, cfg=3.0, cfg_schedule="linear", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = to_uint8(tok.decode(toks))
    assert np.abs(ref.astype(int) - res.images.astype(int)).max() <= 1
    img = _photo(32, 40)
    out = outpaint(gen, tok, img, SampleConfig(width=80, seed=0, classes="2"), direction="both")
    assert np.array_equal(out.image[:, out.original_x[0]:out.original_x[1]], img)
    assert np.isfinite(out.seam_ratio)


def test_blend_seam_removes_a_colour_step_but_keeps_texture():
    from eqcli_core.pipeline import blend_seam

    g = torch.Generator().manual_seed(0)
    H, w, k = 64, 40, 16
    rows = torch.linspace(-0.5, 0.5, H)
    recon_edge = torch.stack([rows, -rows, rows * 0.5])  # (3, H) smooth decoded last original column
    orig_edge = recon_edge + 0.05  # the decoder's (small) error
    texture = torch.randn(3, H, w, generator=g) * 0.02
    gen = recon_edge[..., None] + 0.3 + texture  # generated side: a colour step of 0.3, plus texture
    out = blend_seam(gen, orig_edge, recon_edge, k)
    first_step = (out[..., 0] - orig_edge).abs().mean()
    assert first_step < 0.05 < (gen[..., 0] - orig_edge).abs().mean()  # the 0.35 step is gone
    assert torch.equal(out[..., k:], gen[..., k:])  # beyond the blend: untouched
    # texture survives at the seam (copying the edge column would make this 0)
    assert (out[..., 0] - orig_edge).std() > 0.5 * texture[..., 0].std()
    assert torch.equal(blend_seam(gen, orig_edge, recon_edge, 0), gen)
