"""kill -9 at random moments (seeded) during tokenize, train-tokenizer, train and sample
--save-tokens: every file present afterwards loads, and resuming loses no finished work.
Two runs on one output: the second refuses with exit 7."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_common import EQIMG, SUB_ENV, TINY_GEN_SET, json_error, run_cli, run_sub, save_tiny_models, write_images  # noqa: E402

TRAIN = ["--preset", "tiny", "--batch", 2, "--micro-batch", 2, "--val-fraction", 0, "--device", "cpu", "--val-every", 0,
         "--checkpoint-every", 2, "--log-every", 1, "--set", TINY_GEN_SET]


def _kill_at_random(args, ready, rng: random.Random, max_delay: float, timeout: float = 60) -> bool:
    """Start `eqimg ARGS`, wait until `ready` (a path that exists, or a callable that returns True,
    once work has begun), sleep a random moment, kill -9.
    Returns True when the process was killed (False when it finished first)."""
    is_ready = ready if callable(ready) else ready.exists
    p = subprocess.Popen(EQIMG + [str(a) for a in args], env=SUB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not is_ready() and p.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.02)
    time.sleep(rng.uniform(0, max_delay))
    killed = p.poll() is None
    if killed:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return killed


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    m = save_tiny_models(d / "models")
    data = write_images(d / "data", n=40, h=32, w=96, classes=("mountains", "coast"))
    big = write_images(d / "big", n=60, h=32, w=2048, classes=("mountains", "coast"))  # slow enough to be caught mid-run
    return {"d": d, "data": data, "big": big, **m}


def _tokens(path):
    from eqcli_core.latents import open_latents

    with open_latents(path) as lf:
        n = int(lf.offsets[-1] + lf.widths[-1])
        return lf.paths, lf.read_columns(0, n), lf.read_columns(0, n, mirrored=True)


@pytest.mark.slow
def test_kill_tokenize(env, tmp_path, capsys):
    rng = random.Random(0)
    ref = tmp_path / "ref.h5"
    args = ["--data", env["big"], "--tokenizer", env["tok"], "--batch", 2, "--commit-every", 2, "--device", "cpu"]
    assert run_cli(["tokenize", *args, "--out", ref], capsys)[0] == 0
    out, partial = tmp_path / "x.h5", tmp_path / "x.h5.partial"
    kills = 0
    for trial in range(4):
        kills += _kill_at_random(["tokenize", *args, "--out", out], partial, rng, 0.6)
        if out.exists():  # finished before the kill: complete and loadable
            _tokens(out)
            break
    assert kills >= 2
    code, stdout, err = run_cli(["tokenize", *args, "--out", out, "--json"], capsys)  # resume to the end
    assert code == 0, err[-2000:]
    a, b = _tokens(out), _tokens(ref)
    assert a[0] == b[0]  # every image, in order
    # resumed batches group images differently, which moves float16 results by an ulp at most
    np.testing.assert_allclose(a[1], b[1], rtol=0, atol=2e-3)
    np.testing.assert_allclose(a[2], b[2], rtol=0, atol=2e-3)
    assert not partial.exists()


@pytest.mark.slow
def test_kill_train_generator(env, tmp_path, capsys):
    from eqcli_core.io import load_checkpoint

    lat = tmp_path / "lat.h5"
    assert run_cli(["tokenize", "--data", env["data"], "--out", lat, "--tokenizer", env["tok"], "--device", "cpu"], capsys)[0] == 0
    ref, run = tmp_path / "ref", tmp_path / "run"
    steps = 200  # about 4 s of training here: three kills at most 0.5 s after a checkpoint all land mid-run
    # every run in a fresh process with the same environment, so the bitwise comparison is fair
    r = run_sub(["train", "--latents", lat, "--out", ref, "--steps", steps, *TRAIN])
    assert r.returncode == 0, r.stderr[-2000:]
    rng, kills, seen_steps = random.Random(1), 0, []
    state = run / "train_state.pt"
    for trial in range(3):
        # kill only after this process wrote a checkpoint of its own, so every trial is caught mid-run
        # (an early kill of the first trial would otherwise leave no run to resume at all)
        before = state.stat().st_mtime_ns if state.exists() else None
        new_checkpoint = lambda: state.exists() and state.stat().st_mtime_ns != before  # noqa: E731
        resume = ["--resume"] if state.exists() else []
        kills += _kill_at_random(["train", "--latents", lat, "--out", run, "--steps", steps, *TRAIN, *resume],
                                 new_checkpoint, rng, 0.5)
        for name in ("train_state.pt", "generator.pt"):
            if (run / name).exists():  # whatever is on disk is complete
                doc = load_checkpoint(run / name)
                if name == "train_state.pt":
                    seen_steps.append(int(doc["step"]))
    assert kills >= 2
    assert seen_steps == sorted(seen_steps)  # checkpoints only move forward: no finished work lost
    r = run_sub(["train", "--latents", lat, "--out", run, "--steps", steps, "--resume", *TRAIN[-2:]])
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_checkpoint(run / "generator.pt", kind="generator")
    b = load_checkpoint(ref / "generator.pt", kind="generator")
    for k, v in b["state_dict"].items():  # interrupted + resumed == uninterrupted, bit for bit
        assert torch.equal(v, a["state_dict"][k]), k


@pytest.mark.slow
def test_kill_train_tokenizer(env, tmp_path, capsys):
    from eqcli_core.io import load_checkpoint
    from eqcli_core.tokenizer import load_tokenizer

    data = write_images(tmp_path / "data", n=8, h=128, w=256)
    run = tmp_path / "run"
    base = ["train-tokenizer", "--data", data, "--out", run, "--preset", "tiny", "--steps", 8, "--batch", 1, "--no-perceptual",
            "--val-every", 2, "--device", "cpu", "--threads", 1]
    rng, kills, seen = random.Random(2), 0, []
    for trial in range(3):
        resume = ["--resume"] if (run / "state.pt").exists() else []
        kills += _kill_at_random(base + resume, run / "state.pt", rng, 1.5)
        if (run / "state.pt").exists():
            seen.append(int(load_checkpoint(run / "state.pt", kind="tokenizer-train-state")["step"]))
        if (run / "tokenizer.pt").exists():
            load_tokenizer(run / "tokenizer.pt")
    assert kills >= 1
    assert seen == sorted(seen)
    code, out, err = run_cli(base + ["--resume", "--json"], capsys)
    assert code == 0, err[-2000:]
    assert load_checkpoint(run / "state.pt", kind="tokenizer-train-state")["step"] == 8


@pytest.mark.slow
def test_kill_sample_save_tokens(env, tmp_path, capsys):
    from eqcli_core.saved_tokens import load_sample_tokens

    rng = random.Random(3)
    png, h5 = tmp_path / "s.png", tmp_path / "s.h5"
    args = ["sample", "-g", env["gen"], "-t", env["tok"], "--width", 2048, "--num", 2, "--steps", 2, "--class", "coast",
            "-o", png, "--save-tokens", h5, "--device", "cpu"]
    from PIL import Image

    for trial in range(3):
        _kill_at_random(args + ["--seed", trial], tmp_path / "nonexistent", rng, 4.0, timeout=0)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("s.png", "s.h5")]
        # kill -9 can leave a temporary file, but only a hidden one next to its target
        assert all(n.startswith((".s.png.", ".s.h5.")) for n in leftovers), leftovers
        if png.exists():
            Image.open(png).load()
        if h5.exists():
            try:
                tokens = load_sample_tokens(h5).tokens
            except Exception as exc:  # a token file that exists must be complete
                raise AssertionError(f"trial {trial}: {h5} present but unreadable: {exc}")
            assert tokens.shape[:2] == (2, 2048 // 4), tokens.shape  # complete: every image, every column
    code, out, err = run_cli(args + ["--seed", 9], capsys)
    assert code == 0, err[-2000:]
    Image.open(png).load()
    assert load_sample_tokens(h5).tokens.shape[:2] == (2, 2048 // 4)


@pytest.mark.slow
def test_two_runs_same_output_second_refuses(env, tmp_path, capsys):
    out = tmp_path / "x.h5"
    args = ["tokenize", "--data", env["big"], "--tokenizer", env["tok"], "--batch", 1, "--commit-every", 1, "--device", "cpu",
            "--out", out]
    first = subprocess.Popen(EQIMG + [str(a) for a in args], env=SUB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not Path(str(out) + ".partial").exists() and time.time() - t0 < 60:
            time.sleep(0.02)
        assert first.poll() is None, "the first run finished too early for this test"
        code, stdout, err = run_cli(args + ["--json"], capsys)  # in-process: no start-up delay
        assert code == 7, err[-1500:]
        assert json_error(stdout)["error"] == "locked"
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    from eqcli_core.latents import open_latents

    with open_latents(out) as lf:
        assert lf.num_images == 60


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_train_saves_and_exits(env, tmp_path, capsys, sig, code):
    """Ctrl-C / SIGTERM: training finishes its step, saves a checkpoint, exits 130 / 143; --resume continues."""
    from eqcli_core.io import load_checkpoint

    lat = tmp_path / "lat.h5"
    assert run_cli(["tokenize", "--data", env["data"], "--out", lat, "--tokenizer", env["tok"], "--device", "cpu"], capsys)[0] == 0
    run = tmp_path / "run"
    args = ["train", "--latents", lat, "--out", run, "--steps", 100000, *TRAIN]
    args[args.index("--checkpoint-every") + 1] = 100000  # only the signal makes a checkpoint
    p = subprocess.Popen(EQIMG + [str(a) for a in args], env=SUB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "log.jsonl").exists() and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err[-2000:]
    step = int(load_checkpoint(run / "train_state.pt", kind="generator-train-state")["step"])
    assert step >= 1
    r = run_sub(["train", "--latents", lat, "--out", run, "--resume", "--steps", step + 1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(load_checkpoint(run / "train_state.pt")["step"]) == step + 1
