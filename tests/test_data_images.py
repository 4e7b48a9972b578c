"""Robust image input: a corpus of awkward and broken files, generated in tmp_path."""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eqcli_core.data.images import ImageCropDataset, load_for_tokenize, load_rgb, scan_image_folder
from eqcli_core.errors import BadInputError, UsageError


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h (a decompression bomb needs no real pixels to be refused)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _exif_jpeg(path: Path, w: int, h: int, orientation: int) -> None:
    im = Image.fromarray(_noise(h, w))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", exif=exif.tobytes())


@pytest.fixture
def corpus(tmp_path) -> dict:
    """root/good/*, root/bad/*, root/empty/ and a symlink loop. Returns expectations."""
    root = tmp_path / "corpus"
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    (root / "empty").mkdir()
    Image.fromarray(_noise(24, 40)).save(good / "plain.png")
    Image.fromarray(_noise(24, 40)).save(good / "my photo.png")  # space in the name
    with open(os.path.join(os.fsencode(good), b"caf\xe9.png"), "wb") as fh:  # non-UTF-8 name
        Image.fromarray(_noise(24, 40, 1)).save(fh, format="PNG")
    Image.fromarray((np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) * 60)).save(good / "sixteen.png")
    Image.new("CMYK", (40, 24), (10, 200, 30, 5)).save(good / "cmyk.jpg")
    pal = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) % 4, (24, 1)), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    pal.save(good / "palette.png", transparency=0)
    Image.fromarray(np.dstack([np.full((24, 40), 80, np.uint8), np.full((24, 40), 128, np.uint8)]), "LA").save(good / "la.png")
    frames = [Image.new("RGB", (40, 24), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(good / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    _exif_jpeg(good / "rotated.jpg", 20, 10, 6)
    (good / "notes.txt").write_text("not an image")  # skipped by extension
    os.symlink(good, good / "loop")  # symlink loop back to the class folder

    (bad / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format="PNG")
    (bad / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format="JPEG", quality=95)
    (bad / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (bad / "text.jpg").write_text("hello, I am not a JPEG")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(bad / "one.png")
    Image.new("RGB", (100000, 1), (1, 2, 3)).save(bad / "line.png")
    _png_header_only(bad / "bomb.png", 7000, 7000)
    return {"root": root, "good": good, "bad": bad, "n_good": 9, "n_bad_scan": 1, "n_bad_load": 6}


# -- load_rgb -----------------------------------------------------------------------------


def test_every_good_file_loads_as_rgb8(corpus):
    for p in sorted(Path(corpus["good"]).glob("*")):
        if p.suffix in (".txt",) or p.is_symlink():
            continue
        im = load_rgb(p)
        assert im.mode == "RGB" and min(im.size) >= 1, p


def test_modes_convert_as_documented(corpus):
    g = corpus["good"]
    la = np.asarray(load_rgb(g / "la.png"))
    # L=80 at alpha 128 over white: 80*128/255 + 255*(127/255) ~= 167
    assert abs(int(la[0, 0, 0]) - 167) <= 2 and (la[..., 0] == la[..., 2]).all()
    pal = np.asarray(load_rgb(g / "palette.png"))
    assert tuple(pal[0, 0]) == (255, 255, 255)  # transparent index 0 -> white
    assert tuple(pal[0, 1]) == (0, 255, 0)
    six = np.asarray(load_rgb(g / "sixteen.png"))
    src = (np.arange(24 * 40).reshape(24, 40) * 60) % 65536
    np.testing.assert_allclose(six[..., 1].astype(float), np.round(src / 257.0), atol=1)
    cmyk = np.asarray(load_rgb(g / "cmyk.jpg")).reshape(-1, 3).mean(0)
    assert cmyk[1] < 120 < cmyk[0] and cmyk[2] > 150  # lots of magenta ink -> little green
    anim = np.asarray(load_rgb(g / "anim.gif"))
    assert anim[..., 0].mean() > 200 and anim[..., 2].mean() < 50  # first (red) frame


def test_float_and_int32_images(tmp_path):
    Image.fromarray(np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20), "F").save(tmp_path / "f.tif")
    Image.fromarray((np.arange(200, dtype=np.int32).reshape(10, 20) * 300), "I").save(tmp_path / "i.tif")
    f = np.asarray(load_rgb(tmp_path / "f.tif"))
    assert f.shape == (10, 20, 3) and f[0, 0, 0] == 0 and f[-1, -1, 0] == 255
    i = np.asarray(load_rgb(tmp_path / "i.tif"))
    assert i[-1, -1, 0] == round(199 * 300 / 257)


def test_exif_orientation_applied(corpus):
    assert load_rgb(corpus["good"] / "rotated.jpg").size == (10, 20)  # 20x10, orientation 6 -> 10x20


@pytest.mark.parametrize("name,words", [
    ("zero.png", "empty"), ("trunc.png", "truncated"), ("trunc.jpg", "truncated"),
    ("text.jpg", "not an image"), ("bomb.png", "limit"),
])
def test_bad_files_refused_with_one_line(corpus, name, words):
    with pytest.raises(BadInputError) as ei:
        load_rgb(corpus["bad"] / name)
    msg = ei.value.message
    assert "\n" not in msg and words in msg and name in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadInputError, match="cannot read"):
        load_rgb(tmp_path / "nope.png")
    with pytest.raises(BadInputError, match="directory"):
        load_rgb(tmp_path)


def test_pixel_limit_is_configurable(corpus):
    with pytest.raises(BadInputError, match="limit"):
        load_rgb(corpus["good"] / "plain.png", max_pixels=100)


# -- scanning -------------------------------------------------------------------------------


def test_scan_class_tree(corpus):
    samples, classes, skipped = scan_image_folder(corpus["root"])
    assert classes == ["bad", "good"]  # "empty" has no images: dropped, with a reason
    labels = [l for _, l in samples]
    assert labels.count(1) == corpus["n_good"] and labels.count(0) == 6  # zero.png skipped at scan
    reasons = {Path(p).name: r for p, r in skipped}
    assert "empty" in reasons["zero.png"] and "extension" in reasons["notes.txt"]
    assert "loop" in reasons["loop"] and "no usable images" in reasons["empty"]
    assert any(os.fsencode(p).endswith(b"caf\xe9.png") for p, _ in samples)


def test_scan_flat_folder_is_one_class(tmp_path):
    flat = tmp_path / "flat pics"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(_noise(12, 12, i)).save(flat / f"{i}.png")
    samples, classes, skipped = scan_image_folder(flat)
    assert classes == ["flat pics"] and len(samples) == 3 and skipped == []


def test_scan_refuses_empty_or_missing(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "readme.md").write_text("x")
    for root in (tmp_path / "e", tmp_path / "missing", tmp_path / "e" / "readme.md"):
        with pytest.raises(BadInputError):
            scan_image_folder(root)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read anything")
def test_scan_skips_unreadable_dir(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Image.fromarray(_noise(12, 12)).save(a / "x.png")
    Image.fromarray(_noise(12, 12)).save(b / "y.png")
    b.chmod(0)
    try:
        samples, classes, skipped = scan_image_folder(tmp_path)
        assert classes == ["a"] and any("cannot" in r for _, r in skipped)
    finally:
        b.chmod(0o755)


# -- dataset ----------------------------------------------------------------------------------


def test_dataset_skips_bad_files_and_counts_them(corpus):
    ds = ImageCropDataset(corpus["root"], 16, 16, seed=1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1  # warned once
    for x, y in items:
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert ds.skipped == corpus["n_bad_scan"] + corpus["n_bad_load"] + 3  # + notes.txt, loop, empty/
    bad_names = {Path(p).name for p, _ in ds.skipped_files}
    assert {"trunc.png", "trunc.jpg", "text.jpg", "one.png", "line.png", "bomb.png"} <= bad_names
    assert all(y == ds.class_to_idx["good"] for _, y in items)  # every bad index got a good substitute


def test_dataset_all_bad_raises(tmp_path):
    (tmp_path / "x.jpg").write_text("nope")
    ds = ImageCropDataset(tmp_path, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadInputError, match="could be loaded"):
            ds[0]


def test_random_crop_is_a_window_of_the_full_resize(tmp_path):
    Image.fromarray(_noise(32, 160, 3)).save(tmp_path / "pano.png")
    full = load_for_tokenize(tmp_path / "pano.png", 16, 8)  # height 16 -> width 80
    assert full.shape == (3, 16, 80)
    ds = ImageCropDataset(tmp_path, 16, 24, seed=5)
    offsets = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        x, _ = ds[0]
        # only the window is resampled: equal to the full resize up to one 8-bit level
        err = [float((full[:, :, o:o + 24] - x).abs().max()) for o in range(80 - 24 + 1)]
        hits = [o for o, e in enumerate(err) if e <= 1.01 / 127.5]
        assert len(hits) == 1, sorted(err)[:3]
        offsets.add(hits[0])
        assert torch.equal(x, ds[0][0])  # same (seed, epoch, index) -> same crop
    assert len(offsets) > 1  # crops move between epochs
    centre = ImageCropDataset(tmp_path, 16, 24, random_crop=False)[0][0]
    assert float((centre - full[:, :, 28:52]).abs().max()) <= 1.01 / 127.5


def test_narrow_image_is_cropped_not_squashed(tmp_path):
    tall = np.zeros((80, 20, 3), np.uint8)
    tall[:40] = 255  # top half white, bottom black
    Image.fromarray(tall).save(tmp_path / "tall.png")
    x, _ = ImageCropDataset(tmp_path, 16, 16, random_crop=False)[0]
    # 20x80 -> width 16, height 64 -> central 16 rows straddle the boundary evenly
    assert x.shape == (3, 16, 16)
    assert x[:, :6].mean() > 0.9 and x[:, -6:].mean() < -0.9


def test_load_for_tokenize_widths(tmp_path):
    Image.fromarray(_noise(30, 100)).save(tmp_path / "a.png")
    t = load_for_tokenize(tmp_path / "a.png", 12, 8)  # 12 x 40 -> 40 is a multiple of 8
    assert t.shape == (3, 12, 40)
    t = load_for_tokenize(tmp_path / "a.png", 12, 16)  # 40 -> 32
    assert t.shape == (3, 12, 32)
    t = load_for_tokenize(tmp_path / "a.png", 12, 8, max_width=24)
    assert t.shape == (3, 12, 24)
    Image.fromarray(_noise(100, 10)).save(tmp_path / "narrow.png")
    assert load_for_tokenize(tmp_path / "narrow.png", 12, 8).shape == (3, 12, 8)  # >= one column
    with pytest.raises(UsageError):
        load_for_tokenize(tmp_path / "a.png", 12, 0)
    Image.fromarray(_noise(2, 20000)).save(tmp_path / "long.png")  # 2 x 20000 -> 12 x 120000
    assert load_for_tokenize(tmp_path / "long.png", 12, 8, max_width=64).shape == (3, 12, 64)
    with pytest.raises(BadInputError):
        load_for_tokenize(tmp_path / "missing.png", 12, 8)


def test_error_for_non_utf8_name_is_printable(tmp_path):
    bad = os.path.join(os.fsencode(tmp_path), b"r\xe9sum\xe9.jpg")
    with open(bad, "wb") as fh:
        fh.write(b"not a jpeg at all")
    with pytest.raises(BadInputError) as ei:
        load_rgb(os.fsdecode(bad))
    ei.value.message.encode("utf-8")  # no lone surrogates: safe for any console or JSON
    assert "\\udce9" in ei.value.message or "\\xe9" in ei.value.message
