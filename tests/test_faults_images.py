"""Hostile image folders end to end: `eqimg tokenize`, `eqimg train-tokenizer` and `eqimg eval fid`
skip what cannot be used (one line each, counted in the summary) and never crash."""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_common import assert_no_traceback, error_lines, json_error, run_cli, run_sub, save_tiny_models  # noqa: E402

H = 32


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


def make_zoo(root: Path) -> dict:
    """Class folders full of awkward files. Returns {"good": [...], "bad": [...], "scan_skips": n}."""
    good, bad = [], []
    a, b, c = root / "alpha", root / "beta", root / "gamma"
    for d in (a, b, c):
        d.mkdir(parents=True)
    # readable oddities (must load)
    Image.fromarray(_rgb(H, 64, 1)).save(a / "plain.png"); good.append(a / "plain.png")
    Image.fromarray((np.random.default_rng(2).integers(0, 65535, (40, 80))).astype(np.uint16)).save(a / "sixteen_bit.png")
    good.append(a / "sixteen_bit.png")
    Image.fromarray(_rgb(48, 96, 3)).convert("CMYK").save(a / "cmyk.jpg"); good.append(a / "cmyk.jpg")
    pal = Image.fromarray(_rgb(H, 48, 4)).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(a / "palette_transparent.png", transparency=0); good.append(a / "palette_transparent.png")
    Image.fromarray(_rgb(1, 1, 5)).save(b / "one_by_one.png"); good.append(b / "one_by_one.png")
    Image.fromarray(_rgb(1, 100000, 6)).save(b / "very_wide_1px.png"); good.append(b / "very_wide_1px.png")
    frames = [Image.fromarray(_rgb(H, 40, s)).convert("P") for s in (7, 8, 9)]
    frames[0].save(b / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0); good.append(b / "animated.gif")
    ex = Image.fromarray(_rgb(64, 32, 10))
    exif = ex.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    ex.save(b / "exif_rotated.jpg", exif=exif.tobytes()); good.append(b / "exif_rotated.jpg")
    Image.fromarray(_rgb(H, 64, 11)).save(c / "name with spaces.png"); good.append(c / "name with spaces.png")
    odd = os.fsdecode(bytes(c) + b"/latin1_\xe9\xff.png")  # not valid UTF-8
    Image.fromarray(_rgb(H, 64, 12)).save(odd, format="PNG"); good.append(Path(odd))
    # unusable files (must be skipped, one reason each)
    (a / "zero_bytes.png").write_bytes(b""); bad.append(a / "zero_bytes.png")
    full = _png_bytes(_rgb(64, 128, 13))
    (a / "truncated.png").write_bytes(full[: len(full) // 2]); bad.append(a / "truncated.png")
    jb = io.BytesIO()
    Image.fromarray(_rgb(64, 128, 14)).save(jb, "JPEG")
    (b / "truncated.jpg").write_bytes(jb.getvalue()[: len(jb.getvalue()) // 3]); bad.append(b / "truncated.jpg")
    (c / "text_named.jpg").write_text("hello, I am not a JPEG\n"); bad.append(c / "text_named.jpg")
    # scan-level oddities: a symlink loop and a class folder without images
    os.symlink(c, c / "loop")
    (root / "empty_class").mkdir()
    (root / "empty_class" / "notes.txt").write_text("no images here")
    return {"good": good, "bad": bad}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    info = make_zoo(d / "data")
    info["root"] = d / "data"
    info["models"] = save_tiny_models(d / "models")
    return info


def test_tokenize_skips_bad_images(zoo, tmp_path, capsys):
    from eqcli_core.latents import open_latents

    out = tmp_path / "z.h5"
    code, stdout, err = run_cli(["tokenize", "--data", zoo["root"], "--out", out, "--tokenizer", zoo["models"]["tok"],
                                 "--batch", 4, "--max-width", 256, "--device", "cpu", "--json"], capsys)
    assert code == 0, err[-3000:]
    assert_no_traceback(err)
    doc = json.loads(stdout)
    with open_latents(out) as lf:
        assert lf.num_images == len(zoo["good"]) == doc["images"]
        stored = {Path(p).name for p in lf.paths}
        assert "latin1_\\xe9\\xff.png" in stored, stored  # the non-UTF-8 name, escaped
        assert "name with spaces.png" in stored and "sixteen_bit.png" in stored
        assert lf.verify_finite()
        assert lf.widths.max() <= 256 // 4  # the 100000x1 image was capped
    # every unusable file is counted (plus the symlink loop and the empty class folder at scan time)
    assert doc["skipped"] >= len(zoo["bad"]), doc
    assert doc["skipped"] <= len(zoo["bad"]) + 3, doc


def test_tokenize_reports_skips_in_one_line_each(zoo, tmp_path):
    r = run_sub(["tokenize", "--data", zoo["root"], "--out", tmp_path / "z.h5", "--tokenizer", zoo["models"]["tok"],
                 "--batch", 4, "--max-width", 256, "--device", "cpu"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_no_traceback(r.stderr)
    assert "skipped" in r.stderr


def test_tokenize_folder_without_images(zoo, tmp_path, capsys):
    only_bad = tmp_path / "bad" / "cls"
    only_bad.mkdir(parents=True)
    (only_bad / "a.png").write_bytes(b"")
    (only_bad / "b.jpg").write_text("not a jpeg")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "bad", empty, tmp_path / "does_not_exist"):
        code, out, err = run_cli(["tokenize", "--data", folder, "--out", tmp_path / "x.h5", "--tokenizer", zoo["models"]["tok"],
                                  "--device", "cpu", "--json"], capsys)
        assert code == 3, (folder, code, err[-2000:])
        assert json_error(out)["error"] == "bad_input"
        assert len(error_lines(err)) == 1
        assert_no_traceback(err)
        assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()


def _train_tok_args(zoo, out, *extra):
    return ["train-tokenizer", "--data", zoo["root"], "--out", out, "--preset", "tiny", "--steps", 2, "--batch", 2,
            "--no-perceptual", "--val-every", 2, "--device", "cpu", "--threads", 1, *extra, "--json"]


def test_train_tokenizer_on_zoo(zoo, tmp_path, capsys):
    from test_faults_common import write_images

    val = write_images(tmp_path / "val", n=2, h=128, w=256)
    code, out, err = run_cli(_train_tok_args(zoo, tmp_path / "run", "--val-data", val), capsys)
    assert code == 0, err[-3000:]
    assert_no_traceback(err)
    doc = json.loads(out)
    assert doc["steps"] == 2
    assert (tmp_path / "run" / "tokenizer.pt").is_file()
    assert "skip" in err  # unusable files are named on stderr


def test_train_tokenizer_on_zoo_default_split_counts_skips(zoo, tmp_path, capsys):
    code, out, err = run_cli(_train_tok_args(zoo, tmp_path / "run", "--seed", 0), capsys)
    assert code == 0, err[-3000:]
    assert json.loads(out).get("skipped", 0) >= len(zoo["bad"])


def test_train_tokenizer_without_images(zoo, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "c").mkdir(parents=True)
    (empty / "c" / "x.png").write_bytes(b"junk")
    code, out, err = run_cli(["train-tokenizer", "--data", empty, "--out", tmp_path / "run", "--preset", "tiny", "--steps", 2,
                              "--batch", 2, "--no-perceptual", "--device", "cpu", "--json"], capsys)
    assert code == 3, (code, err[-2000:])
    json_error(out)
    assert_no_traceback(err)


def test_eval_fid_on_zoo(zoo, tmp_path, capsys):
    code, out, err = run_cli(["eval", "fid", "--real", zoo["root"], "--fake", zoo["root"], "--features", "efficientnet-lite0",
                              "--kid-subsets", 2, "--device", "cpu", "--json"], capsys)
    assert code == 0, err[-3000:]
    assert_no_traceback(err)
    doc = json.loads(out)
    # the 1x1 and 100000x1 images are too small to cut into tiles: skipped as well
    assert doc["real_skipped"] == doc["fake_skipped"] == len(zoo["bad"]) + 2, doc
    assert doc["real_images"] == len(zoo["good"]) - 2, doc
