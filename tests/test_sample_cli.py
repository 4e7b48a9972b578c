"""`eqimg sample` and `eqimg outpaint` end to end, on tiny untrained models saved to disk."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eqcli.main import main
from eqcli_core.generator import save_generator
from eqcli_core.tokenizer import save_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import NAMES, tiny_generator, tiny_tokenizer  # noqa: E402

EQIMG = [sys.executable, "-m", "eqcli"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    fp = save_tokenizer(tok, d / "tok.pt")
    save_generator(tiny_generator(), d / "gen.pt", class_names=NAMES, meta={"latent_fingerprint": fp})
    save_generator(tiny_generator(), d / "gen_other.pt", class_names=NAMES, meta={"latent_fingerprint": "0" * 16})
    return ["--generator", str(d / "gen.pt"), "--tokenizer", str(d / "tok.pt")], d


def run(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_png_and_json(ckpts, capsys, tmp_path):
    m, _ = ckpts
    out = tmp_path / "a.png"
    code, stdout, _ = run(["sample", *m, "--class", "coast", "--width", "64", "--num", "2", "--seed", "3", "--steps", "2",
                           "-o", str(out), "--save-tokens", str(tmp_path / "a.h5"), "--json"], capsys)
    assert code == 0
    doc = json.loads(stdout)
    assert doc["width"] == 64 and doc["height"] == 32 and doc["num"] == 2 and doc["classes"] == ["coast", "coast"]
    assert doc["peak_memory_mb"] > 0 and doc["columns_per_s"] > 0 and doc["seed"] == 3
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 64, 3)  # two images stacked vertically
    # same seed, same image
    out2 = tmp_path / "b.png"
    assert run(["sample", *m, "--class", "1", "--width", "64", "--num", "2", "--seed", "3", "--steps", "2", "-o", str(out2)], capsys)[0] == 0
    assert np.array_equal(np.asarray(Image.open(out2)), img)


@pytest.mark.parametrize("args,code,fragment", [
    (["--width", "250"], 2, "248"),
    (["--width", "64", "--class", "desert"], 2, "unknown class"),
    (["--width", "64", "--class", "coast:0-32,forest:40-64"], 2, "gap"),
    (["--width", "0"], 2, "--stream"),
    (["--width", str(4 * 2**28)], 6, "MiB"),
])
def test_sample_usage_errors(ckpts, capsys, tmp_path, args, code, fragment):
    m, _ = ckpts
    c, stdout, stderr = run(["sample", *m, *args, "-o", str(tmp_path / "x.png")], capsys)
    assert c == code
    assert fragment in stderr
    assert "Traceback" not in stderr


def test_mismatched_tokenizer_and_missing_files(ckpts, capsys, tmp_path):
    m, d = ckpts
    c, _, err = run(["sample", "--generator", str(d / "gen_other.pt"), "--tokenizer", str(d / "tok.pt"), "--width", "8", "-o", str(tmp_path / "x.png")], capsys)
    assert c == 4 and "mismatched tokenizer" in err
    c, _, err = run(["sample", "--generator", str(d / "nope.pt"), "--tokenizer", str(d / "tok.pt"), "-o", str(tmp_path / "x.png")], capsys)
    assert c == 4 and "not found" in err


def test_endless_stream_to_dir(ckpts, capsys, tmp_path):
    m, _ = ckpts
    d = tmp_path / "tiles"
    code, stdout, _ = run(["sample", *m, "--width", "0", "--stream", str(d), "--tile-width", "32", "--max-tiles", "3",
                           "--class", "mountains:0-32,forest:32-", "--json"], capsys)
    assert code == 0
    doc = json.loads(stdout)
    assert doc["tiles"] == 3 and doc["stopped"] == "done"
    files = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert files == ["tile_000000.png", "tile_000001.png", "tile_000002.png"]
    assert all(np.asarray(Image.open(d / f)).shape == (32, 32, 3) for f in files)


def test_png_to_stdout_and_outpaint_from_stdin(ckpts, capsysbinary, monkeypatch, tmp_path):
    m, _ = ckpts
    code, png, _ = run(["sample", *m, "--class", "forest", "--width", "48", "--steps", "2", "-o", "-"], capsysbinary)
    assert code == 0
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (32, 48, 3)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png)))
    code, out, err = run(["outpaint", "-", *m, "--width", "96", "--direction", "both", "--class", "coast", "--steps", "2",
                          "-o", str(tmp_path / "o.png"), "--json"], capsysbinary)
    assert code == 0, err
    doc = json.loads(out)
    x0, x1 = doc["original_x"]
    res = np.asarray(Image.open(tmp_path / "o.png"))
    assert res.shape == (32, 96, 3) and np.array_equal(res[:, x0:x1], img)
    assert doc["seams"] == [24, 72] and doc["seam_ratio"] > 0
    # bad input image: one clear error, exit code 3
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = run(["outpaint", str(tmp_path / "bad.png"), *m, "--width", "96", "-o", str(tmp_path / "p.png")], capsysbinary)
    assert code == 3 and b"Traceback" not in err


def test_raw_frames_broken_pipe(ckpts):
    # a real process: the consumer of raw frames goes away after two frames
    m, _ = ckpts
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    frame = 32 * 32 * 3
    p = subprocess.Popen([*EQIMG, "sample", *m, "--width", "0", "--stream", "-", "--tile-width", "32", "--class", "coast", "--steps", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    data = p.stdout.read(2 * frame)
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert len(data) == 2 * frame
    assert p.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_interrupt_ends_stream_cleanly(ckpts, capsys, tmp_path, monkeypatch):
    # Ctrl-C arrives as KeyboardInterrupt wherever Python is; here: inside the sampler, mid-tile
    import eqcli_core.sampling as sampling

    real = sampling.iter_columns

    def interrupted(*args, **kwargs):
        for i, col in enumerate(real(*args, **kwargs)):
            # the decoder emits 32 columns (4 tiles of 8) once 36 are sampled, the next 32 at 68
            if i == 60:
                raise KeyboardInterrupt
            yield col

    monkeypatch.setattr(sampling, "iter_columns", interrupted)
    m, _ = ckpts
    d = tmp_path / "t"
    code, out, _ = run(["sample", *m, "--width", "0", "--stream", str(d), "--tile-width", "32", "--class", "coast", "--steps", "1",
                        "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["stopped"] == "interrupted" and doc["tiles"] == 4
    names = sorted(x.name for x in d.iterdir() if x.name != ".eqimg.lock")
    assert names == [f"tile_{i:06d}.png" for i in range(doc["tiles"])]  # complete tiles only, no temp files
    for n in names:
        assert np.asarray(Image.open(d / n)).shape == (32, 32, 3)


def test_no_bundled_models_is_a_clear_error(capsys, tmp_path, monkeypatch):
    import eqcli_core.generator as generator
    import eqcli_core.tokenizer as tokenizer

    monkeypatch.setattr(tokenizer, "BUNDLED_TOKENIZER", tmp_path / "missing_tokenizer.pt")
    monkeypatch.setattr(generator, "BUNDLED_GENERATOR", tmp_path / "missing_generator.pt")
    code, _, err = run(["sample", "--class", "0", "-o", str(tmp_path / "x.png")], capsys)
    assert code == 4 and "bundled" in err and "Traceback" not in err
