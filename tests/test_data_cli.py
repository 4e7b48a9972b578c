"""`eqimg data ...` commands and the photo-texture dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from eqcli.main import main
from eqcli_core.data.images import ImageCropDataset
from eqcli_core.data.landscapes import image_seed, render_landscape
from eqcli_core.data.textures import TEXTURE_CLASSES, crop_texture, make_textures, source_image, texture_seed
from eqcli_core.errors import UsageError


def _run(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ei:
        main(list(argv))
    return ei.value.code or 0, capsys.readouterr().out


def test_cli_landscapes_json_and_files(tmp_path, capsys):
    out = tmp_path / "ls"
    code, stdout = _run(capsys, "data", "landscapes", str(out), "--count", "2", "--height", "16", "--width", "40",
                        "--seed", "3", "--classes", "forest,city_night", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["classes"] == ["forest", "city_night"] and doc["total"] == 4 and doc["counts"]["forest"] == 2
    img = np.asarray(Image.open(out / "city_night" / "city_night_00001.png"))
    np.testing.assert_array_equal(img, render_landscape("city_night", 16, 40, image_seed(3, "city_night", 1)))
    # the output is a valid ImageFolder for the dataset loader
    ds = ImageCropDataset(out, 16, 16)
    assert len(ds) == 4 and ds.classes == ["city_night", "forest"] and ds.skipped == 0


def test_cli_bad_class_is_usage_error(tmp_path, capsys):
    code, stdout = _run(capsys, "data", "landscapes", str(tmp_path / "x"), "--classes", "volcano", "--json")
    assert code == 2
    doc = json.loads(stdout)
    assert doc["error"] == "usage_error" and "volcano" in doc["message"]


def test_cli_textures(tmp_path, capsys):
    code, stdout = _run(capsys, "data", "textures", str(tmp_path / "tx"), "--count", "2", "--size", "32",
                        "--classes", "brick,coffee", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["classes"] == ["brick", "coffee"] and doc["sources"]["brick"] == "skimage.data.brick"
    img = np.asarray(Image.open(tmp_path / "tx" / "coffee" / "coffee_00001.png"))
    np.testing.assert_array_equal(img, crop_texture("coffee", 32, texture_seed(0, "coffee", 1)))


def test_every_texture_source_is_local_and_distinct():
    means = []
    for cls in TEXTURE_CLASSES:
        src = source_image(cls)
        assert src.dtype == np.uint8 and src.ndim == 3 and src.shape[2] == 3 and min(src.shape[:2]) >= 128
        means.append(src.reshape(-1, 3).mean(0))
    means = np.array(means)
    d = np.abs(means[:, None] - means[None]).max(-1) + np.eye(len(means)) * 1e3
    assert d.min() > 1.0  # no two classes are the same photo


def test_texture_crops_are_windows_of_the_source():
    a = crop_texture("gravel", 64, 5)
    np.testing.assert_array_equal(a, crop_texture("gravel", 64, 5))
    assert not np.array_equal(a, crop_texture("gravel", 64, 6))
    big = crop_texture("chelsea", 400, 1)  # larger than the 300-px photo: upscaled whole-height crop
    assert big.shape == (400, 400, 3)
    # size == source side: the crop is the (possibly flipped) source itself
    full = crop_texture("brick", 512, 0)
    brick = source_image("brick")
    assert np.array_equal(full, brick) or np.array_equal(full, brick[:, ::-1])


def test_make_textures_errors(tmp_path):
    with pytest.raises(UsageError):
        make_textures(tmp_path / "a", 1, 32, classes="nope")
    with pytest.raises(UsageError):
        make_textures(tmp_path / "a", 0, 32)
    with pytest.raises(UsageError):
        make_textures(tmp_path / "a", 1, 4)
