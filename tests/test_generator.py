"""Generator: official equivalence, windowed mask, label dropout, loss, checkpoints."""
from __future__ import annotations

import torch
import pytest

from eqcli_core.errors import CheckpointError, UsageError
from eqcli_core.generator import (EquivariantGenerator, GeneratorConfig, load_generator, make_config, save_generator,
                                  window_mask, GENERATOR_PRESETS)
from eqcli_core.io import save_checkpoint
from eqcli_core.official_generator import convert_release_generator
from eqcli_core.sampling import sample_tokens


def tiny(**kw) -> EquivariantGenerator:
    cfg = dict(token_dim=8, width=32, depth=1, num_heads=4, num_classes=5, class_tokens=2, head_width=32,
               head_depth=2, train_length=8, sampling_steps=3, diffusion_batch_mul=2)
    torch.manual_seed(0)
    model = EquivariantGenerator(make_config("tiny", **{**cfg, **kw}))
    with torch.no_grad():  # random weights everywhere (the head's output layer starts at zero)
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


# ---------------------------------------------------------------- official equivalence

def test_official_fixture_forward(official_dir):
    d = torch.load(official_dir / "official_generator.pt")
    m = convert_release_generator(official_dir / "official_generator.pt")
    assert m.config.window == 3 and m.config.depth == 2 and m.config.class_tokens == 4
    with torch.no_grad():
        assert (m.forward_transformer(d["tokens"], d["labels"]) - d["z"]).abs().max() < 1e-5
        assert (m.forward_transformer(d["tokens"], None) - d["z_null"]).abs().max() < 1e-5
        assert (m.forward_transformer(d["tokens"], torch.full((3,), -1)) - d["z_null"]).abs().max() < 1e-5
        assert (m.head(d["head_x"], d["head_t"], d["head_c"]) - d["head_velocity"]).abs().max() < 1e-5


def test_release_checkpoint_uses_ema(official_dir):
    e = torch.load(official_dir / "release_expected.pt")
    m = convert_release_generator(official_dir / "release_generator.pth")
    assert m.config.latent_scale == pytest.approx(0.05493)
    with torch.no_grad():
        assert (m.forward_transformer(e["tokens"], e["labels"]) - e["generator_z"]).abs().max() < 1e-5
    g = torch.Generator().manual_seed(e["sample_seed"])
    s = sample_tokens(m, e["labels"], 12, cfg=3.0, generator=g) * m.latent_scale
    assert (s - e["generator_sample_cfg3"]).abs().max() < 1e-4
    # the raw (non-EMA) weights give something else: the converter really picked the EMA copy
    from eqcli_core.io import load_raw
    from eqcli_core.official_generator import convert_state_dict
    raw = load_raw(official_dir / "release_generator.pth")["model"]
    m.load_state_dict(convert_state_dict(raw))
    with torch.no_grad():
        assert (m.forward_transformer(e["tokens"], e["labels"]) - e["generator_z"]).abs().max() > 1e-3


def test_convert_rejects_non_official(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"hello": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError):
        convert_release_generator(bad)


# ---------------------------------------------------------------- attention pattern

def test_window_mask_matches_definition():
    m = window_mask(7, 3)
    for i in range(7):
        for j in range(7):
            assert bool(m[i, j]) == (i - 3 <= j <= i)
    assert torch.equal(window_mask(5, None), torch.ones(5, 5).tril().bool())


def test_outputs_only_see_the_window():
    model = tiny(depth=1)  # one layer: z[:, i] sees tokens i-4 .. i-1 (slot i-1 and 3 before it)
    x = torch.randn(2, 14, 8)
    y = x.clone()
    y[:, 5] += 1.0
    with torch.no_grad():
        diff = (model.forward_transformer(x, torch.tensor([1, 2])) - model.forward_transformer(y, torch.tensor([1, 2]))).abs().amax(dim=(0, 2))
    changed = [i for i in range(14) if diff[i] > 1e-6]
    assert changed == [6, 7, 8, 9]


def test_full_causal_baseline_sees_everything():
    model = tiny(depth=1, window=None)
    x = torch.randn(1, 14, 8)
    y = x.clone()
    y[:, 0] += 1.0
    with torch.no_grad():
        diff = (model.forward_transformer(x, torch.tensor([0])) - model.forward_transformer(y, torch.tensor([0]))).abs().amax(dim=(0, 2))
    assert diff[0] < 1e-7 and bool((diff[1:] > 1e-6).all())


def test_learned_position_baseline_limits_length():
    model = tiny(position="learned", max_length=10)
    with torch.no_grad():
        assert model.forward_transformer(torch.randn(1, 10, 8), torch.tensor([0])).shape == (1, 10, 32)
        with pytest.raises(UsageError, match="at most 10"):
            model.forward_transformer(torch.randn(1, 11, 8), torch.tensor([0]))


# ---------------------------------------------------------------- training

def test_label_dropout_and_null_class():
    model = tiny(label_drop=1.0).train()
    x = torch.randn(3, 6, 8)
    torch.manual_seed(1)
    a = model.loss(x, torch.tensor([0, 1, 2]))["loss"]
    torch.manual_seed(1)
    b = model.loss(x, torch.tensor([3, 4, 0]))["loss"]
    assert torch.allclose(a, b)  # every label was dropped to the null class
    model.config.label_drop = 0.0
    torch.manual_seed(1)
    c = model.loss(x, torch.tensor([0, 1, 2]))["loss"]
    torch.manual_seed(1)
    d = model.loss(x, torch.tensor([3, 4, 0]))["loss"]
    assert not torch.allclose(c, d)


def test_loss_mask_and_per_position():
    model = tiny()
    x, y = torch.randn(2, 5, 8), torch.tensor([0, 1])
    torch.manual_seed(3)
    full = model.loss(x, y)
    torch.manual_seed(3)
    only2 = model.loss(x, y, loss_mask=torch.tensor([False, False, True, False, False]))
    assert full["per_position"].shape == (5,)
    assert torch.allclose(full["loss"], full["per_position"].mean(), atol=1e-6)
    assert torch.allclose(only2["loss"], full["per_position"][2], atol=1e-6)
    with pytest.raises(UsageError):
        model.loss(x, y, loss_mask=torch.ones(4, dtype=torch.bool))


def test_grad_checkpointing_same_gradients():
    a, b = tiny(depth=2), tiny(depth=2, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(2, 6, 8), torch.tensor([0, 1])
    grads = []
    for m in (a, b):
        m.train()
        torch.manual_seed(4)
        m.loss(x, y)["loss"].backward()
        grads.append(m.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_loss_decreases_on_toy_batch():
    torch.manual_seed(0)
    model = EquivariantGenerator(make_config("tiny", token_dim=8, width=32, depth=1, num_heads=4, num_classes=3,
                                             head_width=32, head_depth=2, train_length=8, label_drop=0.0))
    x = torch.randn(4, 8, 8) * 0.5 + torch.arange(8.0)[None, :, None] * 0.1
    y = torch.tensor([0, 1, 2, 0])

    def fixed_loss():
        model.eval()
        torch.manual_seed(123)  # same noise and t before and after
        with torch.no_grad():
            return model.loss(x, y)["loss"].item()

    before = fixed_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        model.loss(x, y)["loss"].backward()
        opt.step()
    assert fixed_loss() < 0.8 * before


# ---------------------------------------------------------------- config and files

def test_presets_and_overrides():
    assert set(GENERATOR_PRESETS) >= {"paper-S", "paper-B", "paper-L", "paper-H", "tiny"}
    c = make_config("paper-L", token_dim=12, num_classes=30)
    assert (c.depth, c.width, c.num_heads, c.head_width, c.head_depth, c.class_tokens, c.window) == (32, 1024, 16, 1280, 12, 16, 3)
    assert c.token_dim == 12 and c.num_classes == 30
    with pytest.raises(UsageError):
        make_config("paper-XL")
    with pytest.raises(UsageError):
        make_config("tiny", no_such_field=1)
    with pytest.raises(UsageError):
        GeneratorConfig(width=30, num_heads=4)


def test_save_load_roundtrip(tmp_path):
    model = tiny(latent_scale=0.5)
    path = tmp_path / "g.pt"
    save_generator(model, path, class_names=list("abcde"), meta={"note": 1})
    loaded = load_generator(path)
    assert loaded.class_names == list("abcde") and loaded.latent_scale == 0.5 and loaded.meta == {"note": 1}
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        assert torch.equal(model.forward_transformer(x, torch.tensor([2])), loaded.forward_transformer(x, torch.tensor([2])))
    with pytest.raises(UsageError):
        save_generator(model, tmp_path / "h.pt", class_names=["a"])


def test_load_train_state_uses_ema(tmp_path):
    model, ema = tiny(), tiny()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    from dataclasses import asdict
    save_checkpoint({"config": asdict(model.config), "state_dict": model.state_dict(), "ema_state_dict": ema.state_dict(),
                     "class_names": list("abcde")}, tmp_path / "s.pt", kind="generator-train-state")
    loaded = load_generator(tmp_path / "s.pt")
    assert torch.equal(loaded.null_class, ema.null_class)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError):
        load_generator(tmp_path / "missing.pt")
    save_checkpoint({"config": {}}, tmp_path / "t.pt", kind="tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_generator(tmp_path / "t.pt")
    model = tiny()
    from dataclasses import asdict
    cfg = asdict(model.config)
    cfg["width"] = 64
    save_checkpoint({"config": cfg, "state_dict": model.state_dict()}, tmp_path / "bad.pt", kind="generator")
    with pytest.raises(CheckpointError, match="do not match"):
        load_generator(tmp_path / "bad.pt")


def test_random_rope_offset_only_in_training(monkeypatch):
    model = tiny(shift_range=5, label_drop=0.0)
    seen = []
    inner = model.forward_transformer

    def spy(x, ids, *, position_offset=0):
        seen.append(position_offset)
        return inner(x, ids, position_offset=position_offset)

    monkeypatch.setattr(model, "forward_transformer", spy)
    x, y = torch.randn(1, 4, 8), torch.tensor([0])
    model.train()
    torch.manual_seed(0)
    for _ in range(30):
        model.loss(x, y)
    assert set(seen) == set(range(5))
    seen.clear()
    model.eval()
    model.loss(x, y)
    assert seen == [0]
