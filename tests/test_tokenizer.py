"""Column tokenizer: official compatibility, shapes, equivariance, chunked decode, save/load, errors."""
from __future__ import annotations

import copy
import subprocess

import pytest
import torch

from eqcli_core.errors import CheckpointError, UsageError
from eqcli_core.io import save_checkpoint
from eqcli_core.tokenizer import (
    TOKENIZER_PRESETS, ColumnTokenizer, TokenizerConfig, build_tokenizer, load_tokenizer, save_tokenizer, to_pixels,
)
from eqcli_core.tokenizer.official import config_from_ddconfig, convert_release_tokenizer, infer_config, parse_yaml_subset

TOL = 1e-5


def _mini_fast(**kw) -> TokenizerConfig:
    # the tiny preset's design at 32 px tall: same code paths, ~1/50 of the cost
    base = dict(arch="fast", height=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), len_down_scale=1,
                z_channels=8, token_dim=8, noise_std=0.5, stem=4, kernel=5, mlp_ratio=2, tail_ch=8)
    base.update(kw)
    return TokenizerConfig(**base)


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random init leaves residual branches small; perturb every weight so tests see real mixing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


# -- official compatibility ------------------------------------------------------------------

def test_official_fixture_matches(official_dir):
    d = torch.load(official_dir / "official_tokenizer.pt", weights_only=True)
    tok = convert_release_tokenizer(official_dir / "official_tokenizer.pt")
    assert tok.column_width == 4 and tok.token_dim == 8 and tok.decode_context is None
    with torch.no_grad():
        mean = tok.encode(d["image"])
        assert mean.shape == d["latent_mean"].shape
        assert (mean - d["latent_mean"]).abs().max() <= TOL
        assert (tok.decode(mean) - d["reconstruction"]).abs().max() <= TOL
        assert (tok.decode(d["decode_input"]) - d["decode_output"]).abs().max() <= TOL


def test_official_shapes_inferred_config_is_equivalent(official_dir):
    d = torch.load(official_dir / "official_tokenizer.pt", weights_only=True)
    stored = config_from_ddconfig(d["ddconfig"], d["embed_dim"])
    inferred = infer_config(d["state_dict"])
    a, b = ColumnTokenizer(stored).eval(), ColumnTokenizer(inferred).eval()
    a.load_state_dict(d["state_dict"])
    b.load_state_dict(d["state_dict"])
    with torch.no_grad():
        assert torch.equal(a.encode(d["image"]), b.encode(d["image"]))
        assert torch.equal(a.decode(d["decode_input"]), b.decode(d["decode_input"]))


def test_release_checkpoint_uses_ema_weights(official_dir):
    e = torch.load(official_dir / "release_expected.pt", weights_only=True)
    tok = convert_release_tokenizer(official_dir / "release_tokenizer.ckpt")
    with torch.no_grad():
        mean = tok.encode(e["tokenizer_image"])
        assert (mean - e["tokenizer_latent_mean"]).abs().max() <= TOL
        assert (tok.decode(mean) - e["tokenizer_reconstruction"]).abs().max() <= TOL
    # the raw (non-EMA) weights give other outputs: the converter really picked the EMA copies
    raw = torch.load(official_dir / "release_tokenizer.ckpt", weights_only=True)["state_dict"]
    plain = ColumnTokenizer(copy.deepcopy(tok.config)).eval()
    plain.load_state_dict({k: v for k, v in raw.items() if k.split(".")[0] in ("encoder", "decoder", "quant_layer", "post_quant_layer")})
    with torch.no_grad():
        assert (plain.encode(e["tokenizer_image"]) - e["tokenizer_latent_mean"]).abs().max() > 1e-3


def test_yaml_config_reader(tmp_path, official_dir):
    text = """model:
  base_learning_rate: 1.92e-4
  params:
    embed_dim: 8
    std: 2.5   # noise
    ddconfig:
      double_enc: false
      z_channels: 4
      resolution: 32
      ch: 32
      ch_mult:
      - 1
      - 1
      - 2
      num_res_blocks: 1
      attn_resolutions: [8]
      len_down_scale: 4
    lossconfig:
      target: some.Loss
"""
    y = parse_yaml_subset(text)
    assert y["model"]["base_learning_rate"] == pytest.approx(1.92e-4)
    assert y["model"]["params"]["ddconfig"]["ch_mult"] == [1, 1, 2]
    assert y["model"]["params"]["ddconfig"]["double_enc"] is False
    p = tmp_path / "tokenizer_config.yaml"
    p.write_text(text)
    tok = convert_release_tokenizer(official_dir / "release_tokenizer.ckpt", config_path=p)
    e = torch.load(official_dir / "release_expected.pt", weights_only=True)
    with torch.no_grad():
        assert (tok.encode(e["tokenizer_image"]) - e["tokenizer_latent_mean"]).abs().max() <= TOL


def test_release_yaml_gives_paper_preset():
    repo = "/work/.mirror/drx-code+EquivariantModeling/repo"
    try:
        text = subprocess.run(["git", "-C", repo, "show", "HEAD:configs/first_stage/tokenizer_config.yaml"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("official mirror not available")
    p = parse_yaml_subset(text)["model"]["params"]
    cfg = config_from_ddconfig(p["ddconfig"], p["embed_dim"], p["std"])
    assert cfg == TOKENIZER_PRESETS["paper"]
    assert cfg.column_width == 16 and cfg.post_channels == 4096


def test_convert_rejects_non_tokenizer(tmp_path, official_dir):
    with pytest.raises(CheckpointError):
        convert_release_tokenizer(official_dir / "official_generator.pt")
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        convert_release_tokenizer(bad)


# -- shapes, equivariance, chunked decode ------------------------------------------------------

def test_presets():
    tiny, paper = TOKENIZER_PRESETS["tiny"], TOKENIZER_PRESETS["paper"]
    assert (tiny.height, tiny.column_width, tiny.token_dim) == (128, 8, 32)
    assert (paper.height, paper.column_width, paper.token_dim) == (256, 16, 256)
    tok = build_tokenizer("tiny")
    assert tok.decode_context is not None and tok.decode_context > 0
    with pytest.raises(UsageError):
        build_tokenizer("huge")


@pytest.mark.parametrize("cfg", [_mini_fast(), _mini_fast(learned_logvar=True, len_down_scale=2)], ids=["fast", "fast-logvar-cw16"])
def test_round_trip_shapes_many_widths(cfg):
    tok = ColumnTokenizer(cfg).eval()
    cw = tok.column_width
    for n in (1, 2, 3, 5, 8, 13):
        x = torch.rand(2, 3, cfg.height, n * cw) * 2 - 1
        with torch.no_grad():
            z = tok.encode(x)
            mean, logvar = tok.encode_distribution(x)
            y = tok.decode(z)
        assert z.shape == (2, n, cfg.token_dim) and logvar.shape == mean.shape
        assert y.shape == x.shape
        px = to_pixels(y)
        assert px.shape == (2, cfg.height, n * cw, 3) and px.dtype.name == "uint8"


def test_round_trip_shapes_ldm_many_widths(official_dir):
    tok = convert_release_tokenizer(official_dir / "official_tokenizer.pt")
    for n in (2, 3, 7, 16):
        x = torch.rand(1, 3, 32, n * 4) * 2 - 1
        with torch.no_grad():
            assert tok.decode(tok.encode(x)).shape == x.shape


def test_shift_by_whole_columns_shifts_tokens():
    torch.manual_seed(0)
    tok = _perturb(ColumnTokenizer(_mini_fast()))
    cw, ctx, n, k = tok.column_width, tok.encode_context, 24, 3
    x = torch.rand(1, 3, 32, (n + k) * cw) * 2 - 1
    with torch.no_grad():
        a = tok.encode(x[..., : n * cw])                 # columns 0..n-1
        b = tok.encode(x[..., k * cw:])                  # columns k..n+k-1
    # interior tokens (away from both borders by the encoder's reach) agree exactly
    assert n - 2 * ctx - k > 0
    ia, ib = a[:, ctx + k: n - ctx], b[:, ctx: n - ctx - k]
    assert (ia - ib).abs().max() <= 1e-5
    # near the border they do differ (padding), so the check above is not vacuous
    assert (a[:, k:k + 1] - b[:, :1]).abs().max() > 1e-4


def test_chunked_decode_equals_whole_decode():
    torch.manual_seed(1)
    tok = _perturb(ColumnTokenizer(_mini_fast()))
    z = torch.randn(2, 40, tok.token_dim)
    with torch.no_grad():
        whole = tok.decode(z)
        for chunk in (1, 5, 16):
            assert (tok.decode_chunked(z, chunk=chunk) - whole).abs().max() <= 1e-5
        # with too little context the result changes: decode_context is needed
        c = tok.decode_context
        part = tok.decode(z[:, 20 - (c - 3): 21 + (c - 3)])[..., (c - 3) * tok.column_width:(c - 2) * tok.column_width]
        assert (part - whole[..., 20 * tok.column_width: 21 * tok.column_width]).abs().max() > 1e-6


def test_chunked_decode_tiny_preset():
    torch.manual_seed(2)
    tok = _perturb(build_tokenizer("tiny"))
    n = 2 * tok.decode_context + 6
    z = torch.randn(1, n, tok.token_dim)
    with torch.no_grad():
        assert (tok.decode_chunked(z, chunk=4) - tok.decode(z)).abs().max() <= 1e-5


# -- errors ----------------------------------------------------------------------------------

def test_bad_inputs_raise_usage_errors():
    tok = ColumnTokenizer(_mini_fast()).eval()
    for shape in [(1, 3, 32, 12), (1, 3, 40, 16), (1, 4, 32, 16), (3, 32, 16), (1, 3, 32, 0)]:
        with pytest.raises(UsageError):
            tok.encode(torch.zeros(shape))
    with pytest.raises(UsageError):
        tok.decode(torch.zeros(1, 4, tok.token_dim + 1))
    with pytest.raises(UsageError):
        tok.decode(torch.zeros(4, tok.token_dim))


def test_ldm_needs_two_columns(official_dir):
    tok = convert_release_tokenizer(official_dir / "official_tokenizer.pt")
    with pytest.raises(UsageError, match="multiple"):
        tok.encode(torch.zeros(1, 3, 32, 4))


# -- save / load -----------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    tok = _perturb(ColumnTokenizer(_mini_fast()))
    fp = save_tokenizer(tok, tmp_path / "t.pt", meta={"note": "x"})
    back = load_tokenizer(tmp_path / "t.pt")
    assert back.fingerprint == fp == tok.fingerprint and back.config == tok.config
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back.decode(back.encode(x)), tok.decode(tok.encode(x)))
    # a different model has a different fingerprint
    other = _perturb(ColumnTokenizer(_mini_fast()), seed=5)
    assert save_tokenizer(other, tmp_path / "o.pt") != fp


def test_load_train_state_uses_ema(tmp_path):
    cfg = _mini_fast()
    raw, ema = _perturb(ColumnTokenizer(cfg), 1), _perturb(ColumnTokenizer(cfg), 2)
    from dataclasses import asdict

    save_checkpoint({"config": asdict(cfg), "model": raw.state_dict(), "ema": {"shadow": ema.state_dict()}}, tmp_path / "s.pt",
                    kind="tokenizer-train-state")
    back = load_tokenizer(tmp_path / "s.pt")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ema.state_dict().items())


def test_load_errors(tmp_path, monkeypatch):
    import eqcli_core.tokenizer as T

    monkeypatch.setattr(T, "BUNDLED_TOKENIZER", tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="bundled"):
        load_tokenizer(None)
    save_checkpoint({"config": {}}, tmp_path / "g.pt", kind="generator")
    with pytest.raises(CheckpointError, match="generator"):
        load_tokenizer(tmp_path / "g.pt")
    cfg = _mini_fast()
    from dataclasses import asdict

    save_checkpoint({"config": asdict(_mini_fast(token_dim=16)), "state_dict": ColumnTokenizer(cfg).state_dict()}, tmp_path / "m.pt",
                    kind="tokenizer")
    with pytest.raises(CheckpointError, match="do not match"):
        load_tokenizer(tmp_path / "m.pt")
