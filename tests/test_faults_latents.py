"""Damaged or foreign latent files: one clear line and exit code 5 from every command that reads them."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_common import (TINY_GEN_SET, assert_no_traceback, error_lines, json_error, models_images_latents,  # noqa: E402
                                run_cli)

TRAIN = ["--preset", "tiny", "--steps", 1, "--batch", 2, "--micro-batch", 2, "--val-fraction", 0, "--device", "cpu",
         "--set", TINY_GEN_SET]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("lat_faults")
    return {**models_images_latents(d, "good.h5"), "good": d / "good.h5"}


def _damaged(env, tmp: Path, case: str) -> tuple[Path, str]:
    """A damaged copy of the good latent file -> (path, fragment expected in the message)."""
    p = tmp / f"{case}.h5"
    shutil.copy(env["good"], p)
    raw = p.read_bytes()
    if case == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
        return p, "truncated or corrupt"
    if case == "garbage-header":
        p.write_bytes(b"\x00" * 512 + raw[512:])
        return p, "not a readable HDF5"
    if case == "zero-middle":  # the B-tree/heap area zeroed: HDF5 cannot find the datasets
        p.write_bytes(raw[:800] + b"\x00" * (len(raw) - 1600) + raw[-800:])
        return p, "corrupt"
    if case == "text":
        p.write_text("not hdf5 at all\n")
        return p, "not a readable HDF5"
    if case == "empty":
        p.write_bytes(b"")
        return p, "empty"
    with h5py.File(p, "r+") as f:
        if case == "newer-version":
            f.attrs["format_version"] = 99
            return p, "newer eqimg"
        if case == "not-eqimg":
            f.attrs["format"] = "something-else"
            return p, "not an eqimg latent file"
        if case == "unfinished":
            f.attrs["complete"] = False
            return p, "unfinished"
        if case == "nan-flagged":
            f.attrs["all_finite"] = False
            return p, "NaN"
        if case == "nan-hidden":  # NaNs in the data, but the file claims all is finite (bit rot, foreign writer)
            for key in ("tokens", "tokens_mirror"):
                t = f[key][()]
                t[:] = np.nan
                f[key][...] = t
            return p, "NaN"
        if case == "missing-dataset":
            del f["tokens_mirror"]
            return p, "missing the dataset"
        if case == "bad-offsets":
            w = f["widths"][()]
            w[0] += 3
            f["widths"][...] = w
            return p, "do not tile"
    raise AssertionError(case)


CASES = ["truncated", "garbage-header", "zero-middle", "text", "empty", "newer-version", "not-eqimg", "unfinished",
         "nan-flagged", "nan-hidden", "missing-dataset", "bad-offsets"]


@pytest.mark.parametrize("case", CASES)
def test_train_refuses_damaged_latents(env, tmp_path, capsys, case):
    lat, fragment = _damaged(env, tmp_path, case)
    code, out, err = run_cli(["train", "--latents", lat, "--out", tmp_path / "run", *TRAIN, "--json"], capsys)
    assert code == 5, (case, code, err[-2000:])
    doc = json_error(out)
    assert doc["error"] == "bad_latent_file" and fragment in doc["message"], (case, doc)
    assert len(error_lines(err)) == 1
    assert_no_traceback(err)
    assert not (tmp_path / "run" / "generator.pt").exists()


@pytest.mark.parametrize("case", ["truncated", "garbage-header", "text", "empty", "newer-version", "not-eqimg", "missing-dataset"])
def test_info_and_analyze_refuse_damaged_latents(env, tmp_path, capsys, case, monkeypatch):
    lat, fragment = _damaged(env, tmp_path, case)
    monkeypatch.chdir(tmp_path)
    for args in (["info", lat], ["analyze", "positions", "--generator", env["gen"], "--latents", lat, "--num", 1, "--lengths", "1"],
                 ["analyze", "conflict", "--latents", lat, "--quick", "--steps", 1]):
        code, out, err = run_cli(args + ["--json"], capsys)
        assert code == 5, (args[0], case, code, err[-2000:])
        assert fragment in json_error(out)["message"], (args[0], case, out)
        assert_no_traceback(err)


def test_good_file_trains_and_infos(env, tmp_path, capsys):
    """The control: the undamaged file passes the same commands (so the failures above are the damage)."""
    code, out, err = run_cli(["info", env["good"], "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["train", "--latents", env["good"], "--out", tmp_path / "run", *TRAIN, "--json"], capsys)
    assert code == 0, err[-2000:]
    assert (tmp_path / "run" / "generator.pt").is_file()


def test_other_tokenizers_latents_are_refused(env, tmp_path, capsys):
    """Tokenizer fingerprint mismatches: resuming training on another tokenizer's latents; resuming
    a tokenize run with another tokenizer; a generator evaluated on latents it was not trained on."""
    from eqcli_core.latents import tokenize_folder
    from eqcli_core.tokenizer import load_tokenizer, save_tokenizer
    from test_pipeline import tiny_tokenizer

    save_tokenizer(tiny_tokenizer(seed=1), tmp_path / "tok2.pt")
    other = tmp_path / "other.h5"
    tokenize_folder(load_tokenizer(tmp_path / "tok2.pt"), env["data"], other, batch_size=4)

    run = tmp_path / "run"
    assert run_cli(["train", "--latents", env["good"], "--out", run, *TRAIN], capsys)[0] == 0
    code, out, err = run_cli(["train", "--latents", other, "--out", run, "--resume", "--steps", 2, "--json"], capsys)
    assert code == 5 and "not the latent file this run was trained on" in json_error(out)["message"], err[-1500:]

    # an interrupted tokenize (partial file) resumed with another tokenizer
    partial = tmp_path / "t.h5.partial"
    shutil.copy(env["good"], partial)
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = False
    code, out, err = run_cli(["tokenize", "--data", env["data"], "--out", tmp_path / "t.h5", "--tokenizer", tmp_path / "tok2.pt", "--json"], capsys)
    assert code == 5, err[-1500:]
    assert "tokenizer" in json_error(out)["message"]
    assert partial.exists() and not (tmp_path / "t.h5").exists()  # the interrupted run's work is kept


def test_positions_refuses_other_tokenizers_latents(env, tmp_path, capsys):
    from eqcli_core.generator import save_generator
    from test_pipeline import NAMES, tiny_generator

    gen = tmp_path / "gen_other.pt"
    save_generator(tiny_generator(), gen, class_names=NAMES, meta={"latent_fingerprint": "0" * 16})
    code, out, err = run_cli(["analyze", "positions", "--generator", gen, "--latents", env["good"], "--num", 1, "--lengths", "1",
                              "--plot", tmp_path / "p.png", "--json"], capsys)
    assert_no_traceback(err)
    assert code == 5, err[-1500:]
    from eqcli_core.latents import open_latents

    with open_latents(env["good"]) as lf:
        file_fp = lf.fingerprint
    msg = json_error(out)["message"]
    assert "0" * 16 in msg and str(file_fp) in msg, msg  # both fingerprints are named
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("case", ["missing", "directory", "unreadable"])
def test_train_missing_or_unreadable_latents_exit_5(env, tmp_path, capsys, case):
    lat = tmp_path / "nope.h5"
    if case == "directory":
        lat.mkdir()
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        shutil.copy(env["good"], lat)
        lat.chmod(0)
    code, out, err = run_cli(["train", "--latents", lat, "--out", tmp_path / "run", *TRAIN, "--json"], capsys)
    assert code == 5, (case, code, err[-2000:])
    assert json_error(out)["error"] == "bad_latent_file"
    assert len(error_lines(err)) == 1
    assert_no_traceback(err)
