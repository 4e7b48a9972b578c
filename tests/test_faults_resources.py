"""Disk full while writing (the previous file survives, exit 8) and requests too big for memory
(refused up front with an estimate and a suggestion, exit 6)."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_common import TINY_GEN_SET, assert_no_traceback, json_error, run_cli, save_tiny_models, write_images  # noqa: E402

TRAIN = ["--preset", "tiny", "--batch", 2, "--micro-batch", 2, "--val-fraction", 0, "--device", "cpu", "--val-every", 0,
         "--set", TINY_GEN_SET]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("res_faults")
    m = save_tiny_models(d / "models")
    data = write_images(d / "data", n=6, h=32, w=64, classes=("mountains", "coast"))
    return {"d": d, "data": data, **m}


def _fail_fsync_for(monkeypatch, fragment: str):
    """os.fsync raises ENOSPC for files whose name contains `fragment` (a full disk surfacing at flush)."""
    real = os.fsync

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if fragment in os.path.basename(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _half_write_torch_save(monkeypatch):
    """torch.save writes half the bytes, then the disk is full."""
    real = torch.save

    def save(obj, f, *a, **k):
        import io

        buf = io.BytesIO()
        real(obj, buf)
        with open(f, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("how", ["write", "fsync"])
def test_disk_full_during_training_checkpoint(env, tmp_path, capsys, monkeypatch, how):
    from eqcli_core.io import load_checkpoint

    lat = tmp_path / "lat.h5"
    assert run_cli(["tokenize", "--data", env["data"], "--out", lat, "--tokenizer", env["tok"], "--device", "cpu"], capsys)[0] == 0
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--latents", lat, "--out", run, "--steps", 1, *TRAIN], capsys)
    assert code == 0, err[-2000:]
    state, gen = run / "train_state.pt", run / "generator.pt"
    before = {p: p.read_bytes() for p in (state, gen)}
    if how == "write":
        _half_write_torch_save(monkeypatch)
    else:
        _fail_fsync_for(monkeypatch, ".pt.")
    code, out, err = run_cli(["train", "--latents", lat, "--out", run, "--resume", "--steps", 2, "--json"], capsys)
    monkeypatch.undo()
    assert code == 8, (code, err[-2000:])
    doc = json_error(out)
    assert doc["error"] == "write_failed" and "No space left" in doc["message"] and "intact" in doc["message"], doc
    assert_no_traceback(err)
    for p, b in before.items():  # the previous checkpoint is intact and still loads
        assert p.read_bytes() == b, p
    assert load_checkpoint(state, kind="generator-train-state")["step"] == 1
    assert _leftovers(run) == []
    # and the run continues from it once there is space again
    code, out, err = run_cli(["train", "--latents", lat, "--out", run, "--resume", "--steps", 2], capsys)
    assert code == 0, err[-2000:]
    assert load_checkpoint(state, kind="generator-train-state")["step"] == 2


def test_disk_full_during_tokenizer_save(env, tmp_path, capsys, monkeypatch):
    """convert/save of a tokenizer checkpoint over an existing one: the old file survives."""
    from eqcli_core.tokenizer import load_tokenizer, save_tokenizer
    from test_pipeline import tiny_tokenizer

    target = tmp_path / "tok.pt"
    fp_old = save_tokenizer(tiny_tokenizer(seed=0), target)
    _half_write_torch_save(monkeypatch)
    from eqcli_core.errors import WriteError

    with pytest.raises(WriteError, match="No space left"):
        save_tokenizer(tiny_tokenizer(seed=1), target)
    monkeypatch.undo()
    assert load_tokenizer(target).fingerprint == fp_old
    assert _leftovers(tmp_path) == []


def test_disk_full_while_committing_latents_then_resume(env, tmp_path, capsys, monkeypatch):
    """ENOSPC in the middle of tokenizing: exit 8, committed work kept, the rerun resumes and the
    result equals an uninterrupted run."""
    import eqcli_core.latents as L
    from eqcli_core.latents import open_latents

    ref = tmp_path / "ref.h5"
    assert run_cli(["tokenize", "--data", env["data"], "--out", ref, "--tokenizer", env["tok"], "--batch", 2, "--device", "cpu"], capsys)[0] == 0
    out = tmp_path / "x.h5"
    real_commit, calls = L._commit, []

    def commit(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_commit(*a, **k)

    monkeypatch.setattr(L, "_commit", commit)
    code, stdout, err = run_cli(["tokenize", "--data", env["data"], "--out", out, "--tokenizer", env["tok"], "--batch", 2,
                                 "--commit-every", 2, "--device", "cpu", "--json"], capsys)
    monkeypatch.undo()
    assert code == 8, err[-2000:]
    assert "No space left" in json_error(stdout)["message"]
    assert not out.exists() and Path(str(out) + ".partial").exists()
    code, stdout, err = run_cli(["tokenize", "--data", env["data"], "--out", out, "--tokenizer", env["tok"], "--batch", 2,
                                 "--commit-every", 2, "--device", "cpu", "--json"], capsys)
    assert code == 0, err[-2000:]
    import json

    assert json.loads(stdout)["resumed_from"] == 2
    with open_latents(out) as a, open_latents(ref) as b:
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.read_columns(0, a.offsets[-1] + a.widths[-1]), b.read_columns(0, b.offsets[-1] + b.widths[-1]))


def test_disk_full_while_finalizing_latents_keeps_old_file(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.h5"
    assert run_cli(["tokenize", "--data", env["data"], "--out", out, "--tokenizer", env["tok"], "--device", "cpu"], capsys)[0] == 0
    old = out.read_bytes()
    _fail_fsync_for(monkeypatch, ".h5.tmp")
    code, stdout, err = run_cli(["tokenize", "--data", env["data"], "--out", out, "--tokenizer", env["tok"], "--overwrite",
                                 "--device", "cpu", "--json"], capsys)
    monkeypatch.undo()
    assert code == 8, err[-2000:]
    assert "No space left" in json_error(stdout)["message"]
    assert out.read_bytes() == old
    assert _leftovers(tmp_path) == []


def test_disk_full_writing_sample_png(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.png"
    args = ["sample", "-g", env["gen"], "-t", env["tok"], "--width", 32, "--steps", 1, "--class", "coast", "-o", out, "--device", "cpu"]
    assert run_cli(args, capsys)[0] == 0
    old = out.read_bytes()
    _fail_fsync_for(monkeypatch, ".png")
    code, stdout, err = run_cli(args + ["--seed", 5, "--json"], capsys)
    monkeypatch.undo()
    assert code == 8, err[-2000:]
    assert json_error(stdout)["error"] == "write_failed"
    assert out.read_bytes() == old


# ----------------------------------------------------------------------------- memory

@pytest.mark.parametrize("args", [
    ["sample", "--width", 40_000_000, "--num", 64],
    ["sample", "--width", 4_000_000, "--num", 2000, "--batch", 2000],
    ["sample", "--width", 0, "--stream", "{tmp}/tiles", "--tile-width", 400_000_000, "--max-tiles", 1],
    ["outpaint", "{img}", "--width", 4_000_000_000],
])
def test_too_big_is_refused_up_front(env, tmp_path, capsys, args):
    img = next(env["data"].rglob("*.png"))
    args = [str(a).format(tmp=tmp_path, img=img, data=env["data"]) for a in args]
    args += ["-g" if args[0] != "eval" else "--generator", env["gen"], "-t" if args[0] != "eval" else "--tokenizer", env["tok"],
             "--steps", 1, "--device", "cpu"]
    if args[0] in ("sample", "outpaint") and "--stream" not in args:
        args += ["-o", tmp_path / "big.png"]
    if args[0] == "eval":
        args += ["--plot", tmp_path / "p.png"]
    code, out, err = run_cli(args + ["--json"], capsys)
    assert code == 6, (args, code, err[-2000:])
    doc = json_error(out)
    assert "MiB" in doc["message"] or "GiB" in doc["message"], doc  # an estimate
    assert doc.get("hint"), doc  # a suggestion
    assert_no_traceback(err)
    assert not (tmp_path / "big.png").exists()


def test_train_huge_batch_is_refused_up_front(env, tmp_path, capsys):
    import time

    lat = tmp_path / "lat.h5"
    assert run_cli(["tokenize", "--data", env["data"], "--out", lat, "--tokenizer", env["tok"], "--device", "cpu"], capsys)[0] == 0
    args = [a for a in TRAIN]
    i = args.index("--batch")
    args[i + 1] = args[i + 3] = 4_000_000  # --batch and --micro-batch
    t0 = time.monotonic()
    code, out, err = run_cli(["train", "--latents", lat, "--out", tmp_path / "run", "--steps", 1, *args, "--json"], capsys)
    took = time.monotonic() - t0
    assert code == 6, (code, err[-2000:])
    doc = json_error(out)
    assert "MiB" in doc["message"] and "--micro-batch" in doc["hint"], doc
    assert took < 2.0, took  # refused before assembling any batch
    assert_no_traceback(err)
    assert not (tmp_path / "run" / "train_state.pt").exists()


def test_train_memory_estimate_scales_and_guards():
    from eqcli_core.errors import ResourceError
    from eqcli_core.generator import make_config
    from eqcli_core.training import check_train_memory, estimate_train_bytes

    g = make_config("tiny", token_dim=8, num_classes=2)
    small = estimate_train_bytes(g, 32, 32)
    # the activation part grows with the micro-batch, the crop part with the batch
    assert estimate_train_bytes(g, 64, 32) > small and estimate_train_bytes(g, 32, 16) < small
    assert 1 << 20 < small < 1 << 32  # a sane order of magnitude for the tiny preset
    assert check_train_memory(g, 32, 32, torch.device("cpu"), available=10 * small) == small
    with pytest.raises(ResourceError, match="MiB"):
        check_train_memory(g, 32, 32, torch.device("cpu"), available=small // 2)
