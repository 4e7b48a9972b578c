"""Procedural landscapes: determinism, any width, class identity, stationarity, count independence."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from eqcli_core.data.landscapes import LANDSCAPE_CLASSES, image_seed, make_landscapes, render_landscape
from eqcli_core.errors import UsageError


def test_at_least_six_classes():
    assert len(LANDSCAPE_CLASSES) >= 6 and len(set(LANDSCAPE_CLASSES)) == len(LANDSCAPE_CLASSES)


@pytest.mark.parametrize("cls", LANDSCAPE_CLASSES)
def test_deterministic_and_seed_dependent(cls):
    a = render_landscape(cls, 32, 48, 7)
    b = render_landscape(cls, 32, 48, 7)
    c = render_landscape(cls, 32, 48, 8)
    assert a.dtype == np.uint8 and a.shape == (32, 48, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0


@pytest.mark.parametrize("width", [1, 5, 33, 300])
def test_any_width(width):
    for cls in LANDSCAPE_CLASSES:
        img = render_landscape(cls, 16, width, 3)
        assert img.shape == (16, width, 3)
        assert img.std() > 0 or width == 1  # not a blank frame


def test_images_are_not_flat_noise():
    # a plausible scene has structure: its rows differ a lot more than neighbouring pixels do
    for cls in LANDSCAPE_CLASSES:
        img = render_landscape(cls, 64, 128, 11).astype(float)
        neighbour = np.abs(np.diff(img, axis=1)).mean()
        global_spread = img.reshape(-1, 3).std(0).mean()
        assert global_spread > 2 * neighbour, cls


def test_classes_differ_in_mean_colour():
    means = {c: np.mean([render_landscape(c, 32, 64, image_seed(0, c, i)).reshape(-1, 3).mean(0) for i in range(6)], 0)
             for c in LANDSCAPE_CLASSES}
    for a, b in itertools.combinations(LANDSCAPE_CLASSES, 2):
        assert np.abs(means[a] - means[b]).max() > 8.0, (a, b, means[a], means[b])


def test_stationary_left_half_matches_right_half():
    # column statistics must not depend on x: a long render's halves agree closely,
    # while the per-column means themselves do vary (there is content, not a constant)
    for cls in LANDSCAPE_CLASSES:
        cols = render_landscape(cls, 16, 4096, 5).astype(float).mean(0)  # (W, 3)
        left, right = cols[:2048].mean(0), cols[2048:].mean(0)
        assert np.abs(left - right).max() < 3.0, (cls, left, right)
        blocks = cols.reshape(8, 512, 3).mean(1)  # no drift anywhere along x either
        assert np.abs(blocks - cols.mean(0)).max() < 7.0, (cls, blocks)
        assert cols.std(0).max() > 2.0, cls


def test_wide_render_height_128_works():
    img = render_landscape("city_night", 128, 4096, 0)
    assert img.shape == (128, 4096, 3)


def test_image_seed_is_per_class_and_index():
    seeds = {image_seed(0, c, i) for c in LANDSCAPE_CLASSES for i in range(5)}
    assert len(seeds) == 5 * len(LANDSCAPE_CLASSES)
    assert image_seed(0, "coast", 3) == image_seed(0, "coast", 3) != image_seed(1, "coast", 3)


def test_dataset_independent_of_count_and_subset(tmp_path):
    m2 = make_landscapes(tmp_path / "a", 2, 16, 40, seed=4, classes="coast,forest")
    make_landscapes(tmp_path / "b", 3, 16, 40, seed=4)
    assert m2["counts"] == {"coast": 2, "forest": 2} and m2["total"] == 4
    for cls in ("coast", "forest"):
        for i in range(2):
            a = np.asarray(Image.open(tmp_path / "a" / cls / f"{cls}_{i:05d}.png"))
            b = np.asarray(Image.open(tmp_path / "b" / cls / f"{cls}_{i:05d}.png"))
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, render_landscape(cls, 16, 40, image_seed(4, cls, i)))
    doc = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert doc["classes"] == list(LANDSCAPE_CLASSES) and doc["seed"] == 4 and (doc["height"], doc["width"]) == (16, 40)
    assert doc["generator_version"] >= 1
    assert len(list((tmp_path / "b").glob("*/*.png"))) == 3 * len(LANDSCAPE_CLASSES)


def test_workers_agree_with_single_process(tmp_path):
    make_landscapes(tmp_path / "one", 2, 16, 24, seed=9, classes=["desert", "lake"])
    make_landscapes(tmp_path / "two", 2, 16, 24, seed=9, classes=["desert", "lake"], workers=2)
    for p in sorted((tmp_path / "one").glob("*/*.png")):
        q = tmp_path / "two" / p.relative_to(tmp_path / "one")
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))


@pytest.mark.parametrize("kwargs", [
    dict(classes="volcano"), dict(classes="coast,coast"), dict(count=0), dict(height=4), dict(width=0), dict(workers=0),
])
def test_bad_arguments_raise_usage_error(tmp_path, kwargs):
    args = dict(count=1, height=16, width=16, seed=0)
    args.update(kwargs)
    with pytest.raises(UsageError):
        make_landscapes(tmp_path / "x", **args)


def test_render_rejects_unknown_class_and_huge_size():
    with pytest.raises(UsageError):
        render_landscape("volcano", 16, 16, 0)
    with pytest.raises(UsageError):
        render_landscape("coast", 1 << 16, 1 << 16, 0)


def test_warns_when_folder_holds_another_dataset(tmp_path):
    from eqcli_core.progress import Reporter

    class Rec(Reporter):
        def __init__(self):
            self.warnings = []

        def warn(self, message):
            self.warnings.append(message)

    rec = Rec()
    make_landscapes(tmp_path, 1, 16, 16, seed=0, classes="coast", reporter=rec)
    make_landscapes(tmp_path, 1, 16, 16, seed=0, classes="coast", reporter=rec)
    assert rec.warnings == []  # same settings: a rerun is fine
    make_landscapes(tmp_path, 1, 16, 24, seed=0, classes="coast", reporter=rec)
    assert len(rec.warnings) == 1 and "width" in rec.warnings[0]


def test_refuses_before_writing_when_disk_is_too_small(tmp_path):
    from eqcli_core.errors import ResourceError

    with pytest.raises(ResourceError, match="free"):
        make_landscapes(tmp_path / "new" / "deep", 10**9, 128, 128)
    assert not (tmp_path / "new").exists()
