"""EfficientNet-Lite0 feature network: our implementation vs the reference package, sanity on photos."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqcli_core.errors import EqimgError
from eqcli_core.features import EMBED_DIM, WEIGHTS_ENV, build_feature_network, load_feature_network, weights_path


@pytest.fixture(scope="module")
def net():
    return load_feature_network("cpu")


def _reference(image_size):
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    try:
        ref = lite.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        ref.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    except Exception as exc:  # the reference cannot be built offline here
        pytest.skip(f"reference EfficientNet-Lite0 unavailable: {exc}")
    return ref.eval()


def test_matches_reference_logits_at_224(net):
    ref = _reference(224)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = net.logits(x)
        theirs = ref(((x + 1) / 2 - net.mean) / net.std)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_matches_reference_trunk_at_non_square_size(net):
    # Our "SAME" padding is computed per input; the reference computes it for a fixed size.
    ref = _reference((64, 96))
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours, _ = net._trunk(net._normalize(x))
        theirs = ref.extract_features(net._normalize(x))
    assert ours.shape == theirs.shape == (1, EMBED_DIM, 2, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_classifies_photos_sensibly(net):
    data = pytest.importorskip("skimage.data")
    topk = {}
    for name in ("chelsea", "coffee"):
        img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            topk[name] = set(net.logits(img).topk(5).indices[0].tolist())
    assert topk["chelsea"] & set(range(281, 286)), topk  # a domestic cat class
    assert topk["coffee"] & {504, 967, 968}, topk  # coffee mug / espresso / cup


def test_feature_maps_shapes_and_gradients(net):
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    maps = net.feature_maps(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 32, 32), (2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4), (2, 320, 2, 2)]
    sum(m.square().mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    parent = torch.nn.Sequential(net)
    parent.train()  # a loss module holding the network must not switch its BatchNorm to batch stats
    assert not net.training and not any(m.training for m in net.modules())


def test_embed_resizes_and_caches(net):
    assert load_feature_network("cpu") is net
    x = torch.rand(3, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        e = net.embed(x)
        manual = net.embed(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True))
    assert e.shape == (3, EMBED_DIM)
    torch.testing.assert_close(e, manual, atol=1e-5, rtol=1e-5)
    with pytest.raises(EqimgError):
        net.embed(torch.zeros(1, 1, 8, 8))


def test_missing_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(EqimgError, match="does not point to a file"):
        build_feature_network()
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(2)}, bad)
    monkeypatch.setenv(WEIGHTS_ENV, str(bad))
    with pytest.raises(EqimgError, match="does not match EfficientNet-Lite0"):
        build_feature_network()
