"""Samplers: official reproduction, streaming (rolling KV cache) == full recompute, controls."""
from __future__ import annotations

import itertools

import pytest
import torch

from eqcli_core.errors import UsageError
from eqcli_core.official_generator import convert_release_generator
from eqcli_core.sampling import guidance_scale, iter_columns, sample_tokens, sample_tokens_recompute


@pytest.fixture(scope="module")
def fixture_model():
    from tests.conftest import OFFICIAL
    d = torch.load(OFFICIAL / "official_generator.pt")
    return convert_release_generator(OFFICIAL / "official_generator.pt"), d


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cfg,key", [(1.0, "sample_cfg1"), (3.0, "sample_cfg3")])
def test_reproduces_official_samples(fixture_model, cfg, key):
    m, d = fixture_model
    for fn in (sample_tokens, sample_tokens_recompute):
        s = fn(m, d["labels"], 12, cfg=cfg, generator=gen(d["sample_seed"])) * m.latent_scale
        assert (s - d[key]).abs().max() < 1e-4, fn.__name__


@pytest.mark.parametrize("width,cfg", [(1, 1.0), (5, 3.0), (12, 1.0), (21, 2.5)])
def test_streaming_equals_recompute(fixture_model, width, cfg):
    m, _ = fixture_model  # train_length 8: widths 12 and 21 go past it
    labels = torch.tensor([0, 4, 2])
    a = sample_tokens(m, labels, width, cfg=cfg, generator=gen(7))
    b = sample_tokens_recompute(m, labels, width, cfg=cfg, generator=gen(7))
    assert a.shape == (3, width, 8)
    assert (a - b).abs().max() < 1e-5


def test_streaming_equals_recompute_with_prefix(fixture_model):
    m, _ = fixture_model
    labels = torch.tensor([1, 3, 0])
    prefix = torch.randn(3, 6, 8, generator=gen(1)) * 3
    a = sample_tokens(m, labels, 15, cfg=2.0, generator=gen(2), prefix_tokens=prefix)
    b = sample_tokens_recompute(m, labels, 15, cfg=2.0, generator=gen(2), prefix_tokens=prefix)
    assert torch.equal(a[:, :6], prefix)
    assert (a - b).abs().max() < 1e-5
    with pytest.raises(UsageError):
        sample_tokens(m, labels, 15, prefix_tokens=torch.zeros(2, 6, 8))


def test_cache_is_bounded_by_window(fixture_model):
    m, _ = fixture_model
    ctx, caches = m.class_context(torch.tensor([0]), 1), m.new_caches()
    for pos in range(40):
        m.forward_step(torch.randn(1, 8), pos, ctx, caches)
        assert all(len(c) == min(pos + 1, 3) for c in caches)


def test_endless_iteration_matches_fixed_width(fixture_model):
    m, _ = fixture_model
    labels = torch.tensor([2, 2, 1])
    endless = list(itertools.islice(iter_columns(m, labels, cfg=3.0, generator=gen(5)), 20))
    fixed = sample_tokens(m, labels, 20, cfg=3.0, cfg_schedule="linear-window", generator=gen(5))
    assert (torch.stack(endless, 1) - fixed).abs().max() < 1e-6
    with pytest.raises(UsageError, match="linear-window"):
        next(iter_columns(m, labels, cfg=3.0, cfg_schedule="linear"))


def test_guidance_schedules():
    assert guidance_scale(3.0, "linear", 0, 4, 8) == pytest.approx(1.5)
    assert guidance_scale(3.0, "linear", 3, 4, 8) == pytest.approx(3.0)
    assert guidance_scale(3.0, "linear-window", 1, None, 4) == pytest.approx(2.0)
    assert guidance_scale(3.0, "linear-window", 100, None, 4) == pytest.approx(3.0)
    assert guidance_scale(3.0, "constant", 0, 4, 8) == 3.0
    with pytest.raises(UsageError):
        guidance_scale(3.0, "cosine", 0, 4, 8)


def test_temperature_acts(fixture_model):
    m, _ = fixture_model
    labels = torch.tensor([0, 1, 2])
    cold_a = sample_tokens(m, labels, 6, temperature=0.0, generator=gen(1))
    cold_b = sample_tokens(m, labels, 6, temperature=0.0, generator=gen(2))
    assert torch.allclose(cold_a, cold_b)  # no noise left: deterministic
    warm = sample_tokens(m, labels, 6, temperature=1.0, generator=gen(1))
    hot = sample_tokens(m, labels, 6, temperature=1.5, generator=gen(1))
    assert not torch.allclose(warm, hot)


def test_class_schedule(fixture_model):
    m, _ = fixture_model
    labels = torch.tensor([0, 1, 2])
    base = sample_tokens(m, labels, 10, cfg=2.0, generator=gen(3))
    same = sample_tokens(m, None, 10, cfg=2.0, generator=gen(3), class_schedule=lambda i: labels)
    assert torch.allclose(base, same)
    switched = sample_tokens(m, labels, 10, cfg=2.0, generator=gen(3),
                             class_schedule=lambda i: labels if i < 6 else torch.tensor([4, 4, 4]))
    assert torch.allclose(base[:, :6], switched[:, :6])
    assert not torch.allclose(base[:, 6:], switched[:, 6:])


def test_bad_inputs(fixture_model):
    m, _ = fixture_model
    with pytest.raises(UsageError, match="out of range"):
        sample_tokens(m, torch.tensor([9]), 4)
    with pytest.raises(UsageError):
        sample_tokens(m, torch.tensor([0]), 0)
    with pytest.raises(UsageError):
        sample_tokens(m, torch.tensor([0]), 4, steps=0)
    with pytest.raises(UsageError):
        sample_tokens(m, torch.tensor([0]), 4, cfg_schedule="nope")


def test_sampling_keeps_model_mode(fixture_model):
    m, _ = fixture_model
    m.train()
    try:
        sample_tokens(m, torch.tensor([0]), 3, generator=gen(0))
        assert m.training
    finally:
        m.eval()


def test_learned_position_baseline_refuses_long_images():
    from eqcli_core.generator import EquivariantGenerator, make_config
    m = EquivariantGenerator(make_config("tiny", token_dim=4, width=16, depth=1, num_heads=2, head_width=16, head_depth=1,
                                         num_classes=2, position="learned", max_length=6, sampling_steps=2)).eval()
    assert sample_tokens(m, torch.tensor([1]), 6, generator=gen(0)).shape == (1, 6, 4)
    with pytest.raises(UsageError, match="at most 6"):
        sample_tokens(m, torch.tensor([1]), 7)
    with pytest.raises(UsageError):
        iter_columns(m, torch.tensor([1]), cfg_schedule="constant")
