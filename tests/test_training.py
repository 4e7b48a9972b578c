"""Generator training: exact resume, signals, NaN stop, DDP == single process, loss mask, lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eqcli_core.errors import LockedError, TrainingDivergedError, UsageError
from eqcli_core.io import OutputLock, load_checkpoint
from eqcli_core.training import (TrainConfig, data_position, parse_loss_mask, train_config_from_args,
                                 train_generator, validation_loss)

C = 4  # token dim
# A model small enough that a step takes a few milliseconds on one core.
TINY = {"depth": 1, "width": 32, "num_heads": 2, "head_width": 32, "head_depth": 1, "train_length": 6,
        "class_tokens": 2, "diffusion_batch_mul": 1, "shift_range": 4}


def write_latents(path: Path, n_images: int = 24, seed: int = 0) -> Path:
    """A tiny, learnable latent file in the eqimg-latents layout: smooth class-dependent columns."""
    import h5py

    rng = np.random.default_rng(seed)
    widths = rng.integers(6, 14, n_images)
    labels = np.arange(n_images) % 2
    cols, cols_m = [], []
    for w, y in zip(widths, labels):
        phase = rng.uniform(0, 6.28)
        t = np.arange(w)[:, None]
        base = np.sin(0.7 * t + phase + np.arange(C)[None]) + (1.5 if y else -1.5)
        tok = (base + 0.05 * rng.standard_normal((w, C))).astype(np.float32)
        cols.append(tok)
        cols_m.append(tok[::-1].copy())
    tokens, tokens_m = np.concatenate(cols), np.concatenate(cols_m)
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    with h5py.File(path, "w") as f:
        f["tokens"], f["tokens_mirror"] = tokens, tokens_m
        f["offsets"], f["widths"], f["labels"] = offsets.astype(np.int64), widths.astype(np.int64), labels.astype(np.int64)
        f.create_dataset("paths", data=[f"c{y}/img{i}.png" for i, y in enumerate(labels)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=["dark", "light"], dtype=h5py.string_dtype())
        f.attrs.update(format="eqimg-latents", format_version=1, complete=True, token_dim=C, column_width=4, height=8,
                       tokenizer_fingerprint="synthetic0001", tokenizer_config="{}", dtype="float32",
                       token_std=float(tokens.std()), token_mean=float(tokens.mean()), all_finite=True)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest and avoids OpenMP spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    return write_latents(tmp_path_factory.mktemp("lat") / "tiny.h5")


def cfg(latents, out, **kw) -> TrainConfig:
    base = dict(latents=str(latents), out=str(out), model_overrides=dict(TINY), steps=6, batch=8, micro_batch=4,
                lr=2e-3, ema=0.9, val_every=3, val_batches=2, log_every=2, ckpt_every=1000, val_fraction=0.2,
                device="cpu", deterministic=True, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def state(out) -> dict:
    return load_checkpoint(Path(out) / "train_state.pt", kind="generator-train-state")


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- resume

def test_resume_after_step_limit_is_bit_exact(latents, tmp_path):
    full = train_generator(cfg(latents, tmp_path / "full"))
    assert full["stopped"] == "steps" and full["step"] == 6 and Path(full["generator"]).exists()
    part = train_generator(cfg(latents, tmp_path / "part", steps=2))
    assert part["step"] == 2
    res = train_generator(cfg(latents, tmp_path / "part", steps=6, resume=True))
    assert res["start_step"] == 2 and res["step"] == 6
    a, b = state(tmp_path / "full"), state(tmp_path / "part")
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"], b["ema"])
    assert a["data"] == b["data"] == data_position(6, 8, len_train(latents))
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # the log of the resumed run lines up with the uninterrupted one
    la = [json.loads(l) for l in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    pick = lambda log: [(r["step"], r["loss"]) for r in log if "loss" in r]
    assert pick(la) == pick(lb)
    vals = lambda log: [(r["step"], r["val_loss"]) for r in log if "val_loss" in r and r["step"] % 3 == 0]
    assert vals(la) == vals(lb) and len(vals(la)) == 2  # (part also validated at its end, step 2)


def len_train(latents) -> int:
    from eqcli_core.latents import LatentDataset

    return len(LatentDataset(latents, TINY["train_length"], split="train", val_fraction=0.2, seed=3))


def test_sigterm_finishes_step_checkpoints_and_resumes_exactly(latents, tmp_path):
    train_generator(cfg(latents, tmp_path / "full", steps=5, val_every=0))

    def send_sigterm(step, metrics):  # a real signal, delivered during training
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    res = train_generator(cfg(latents, tmp_path / "int", steps=5, val_every=0), after_step=send_sigterm)
    assert signal.getsignal(signal.SIGTERM) is old  # handlers restored
    assert res["stopped"] == "SIGTERM" and res["step"] == 3 and res["generator"] is None
    assert state(tmp_path / "int")["step"] == 3
    res = train_generator(cfg(latents, tmp_path / "int", steps=5, val_every=0, resume=True))
    assert res["stopped"] == "steps"
    assert_same_tensors(state(tmp_path / "full")["model"], state(tmp_path / "int")["model"])


def test_loader_workers_do_not_change_the_batches(latents, tmp_path):
    a = train_generator(cfg(latents, tmp_path / "w0", steps=2, val_every=0, deterministic=False))
    b = train_generator(cfg(latents, tmp_path / "w1", steps=2, val_every=0, deterministic=False, workers=1))
    assert a["loss"] == b["loss"]
    assert_same_tensors(state(tmp_path / "w0")["model"], state(tmp_path / "w1")["model"])


def test_resume_refuses_changed_settings_and_fresh_run_refuses_existing(latents, tmp_path):
    train_generator(cfg(latents, tmp_path / "r", steps=1))
    with pytest.raises(UsageError, match="--resume"):
        train_generator(cfg(latents, tmp_path / "r", steps=2))
    with pytest.raises(UsageError, match="batch"):
        train_generator(cfg(latents, tmp_path / "r", steps=2, batch=4, resume=True))
    # CLI-style: flags not given are taken from the saved run
    c = train_config_from_args(latents=str(latents), out=str(tmp_path / "r"), resume=True, steps=2)
    assert c.batch == 8 and c.lr == 2e-3 and c.model_overrides == TINY and c.steps == 2


def test_lock_refuses_second_run(latents, tmp_path):
    with OutputLock(tmp_path / "busy"):
        with pytest.raises(LockedError):
            train_generator(cfg(latents, tmp_path / "busy", steps=1))


# ----------------------------------------------------------------------------- divergence

def test_nan_stops_with_last_good_checkpoint_intact(latents, tmp_path):
    out = tmp_path / "nan"

    def poison(step, model):
        if step == 4:  # after the checkpoint at step 3
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError) as err:
        train_generator(cfg(latents, out, steps=8, ckpt_every=3), before_step=poison)
    assert "step 5" in err.value.message and "train_state.pt" in err.value.message and "step 3" in err.value.message
    good = state(out)
    assert good["step"] == 3
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    from eqcli_core.generator import load_generator

    load_generator(out / "train_state.pt")  # loadable (its EMA weights)


# ----------------------------------------------------------------------------- what is trained

def test_loss_mask_parsing():
    assert parse_loss_mask("even", 6).tolist() == [True, False, True, False, True, False]
    assert parse_loss_mask("first-half", 6).tolist() == [True] * 3 + [False] * 3
    assert parse_loss_mask("1,4", 6).nonzero().flatten().tolist() == [1, 4]
    assert parse_loss_mask(None, 6) is None
    for bad in ("7", "x,y", "-1"):
        with pytest.raises(UsageError):
            parse_loss_mask(bad, 6)


def test_loss_mask_really_masks():
    """Only position 0 trained: tokens at positions >= 1 get exactly no gradient through the loss."""
    from eqcli_core.generator import make_config
    from eqcli_core.training import _build_generator

    torch.manual_seed(0)
    model = _build_generator(make_config("tiny", **TINY, token_dim=C, num_classes=2)).train()
    x = torch.randn(3, 6, C, requires_grad=True)
    model.loss(x, torch.tensor([0, 1, 1]), loss_mask=parse_loss_mask("0", 6))["loss"].backward()
    assert x.grad[:, 1:].abs().max() == 0 and x.grad[:, 0].abs().max() > 0
    x.grad = None
    model.loss(x, torch.tensor([0, 1, 1]), loss_mask=parse_loss_mask("odd", 6))["loss"].backward()
    assert x.grad[:, 1:].abs().max() > 0


def test_short_training_lowers_validation_loss(latents, tmp_path):
    losses = []
    res = train_generator(cfg(latents, tmp_path / "learn", steps=20, lr=3e-3, val_every=1, log_every=5, deterministic=False),
                          after_step=lambda s, m: losses.append(m["loss"]) and None)
    log = [json.loads(l) for l in (tmp_path / "learn" / "log.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in vals] == list(range(1, 21))
    assert len(vals[0]["val_per_position"]) == TINY["train_length"]
    assert res["val_loss"] == vals[-1]["val_loss"] < 0.7 * vals[0]["val_loss"], (vals[0]["val_loss"], res["val_loss"])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert [r["tokens_per_s"] > 0 for r in log if "loss" in r] == [True] * 4


def test_validation_numbers_are_reproducible_and_leave_the_rng_alone():
    from eqcli_core.generator import make_config
    from eqcli_core.training import _build_generator

    torch.manual_seed(0)
    model = _build_generator(make_config("tiny", **TINY, token_dim=C, num_classes=2)).train()
    batches = [(torch.randn(3, 6, C), torch.tensor([0, 1, 0]))]
    before = torch.get_rng_state()
    a = validation_loss(model, batches, seed=1, device=torch.device("cpu"))
    b = validation_loss(model, batches, seed=1, device=torch.device("cpu"))
    c = validation_loss(model, batches, seed=2, device=torch.device("cpu"))
    assert a == b and a["val_loss"] != c["val_loss"] and model.training
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------------- DDP

def test_two_gloo_processes_match_one(latents, tmp_path):
    one = train_generator(cfg(latents, tmp_path / "one", steps=3, val_every=0))
    two = train_generator(cfg(latents, tmp_path / "two", steps=3, val_every=0, nproc=2))
    assert two["world_size"] == 2 and one["world_size"] == 1
    l1 = [json.loads(l) for l in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    l2 = [json.loads(l) for l in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    losses1 = [r["loss"] for r in l1 if "loss" in r]
    losses2 = [r["loss"] for r in l2 if "loss" in r]
    assert len(losses1) == len(losses2) > 0
    np.testing.assert_allclose(losses1, losses2, rtol=1e-5)
    a, b = state(tmp_path / "one")["model"], state(tmp_path / "two")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_batch_not_divisible_by_processes_is_a_usage_error(latents, tmp_path):
    with pytest.raises(UsageError, match="micro-batch"):
        train_generator(cfg(latents, tmp_path / "x", batch=8, micro_batch=8, nproc=2))
    with pytest.raises(UsageError, match="--steps"):
        train_generator(cfg(latents, tmp_path / "x", steps=None))
    with pytest.raises(UsageError, match="cosine"):
        train_generator(cfg(latents, tmp_path / "x", steps=None, minutes=1.0, schedule="cosine"))


# ----------------------------------------------------------------------------- CLI, kill -9

@pytest.mark.slow
def test_cli_kill9_then_resume_matches_uninterrupted(latents, tmp_path):
    common = ["--latents", str(latents), "--preset", "tiny", "--batch", "8", "--micro-batch", "4", "--lr", "0.002",
              "--ema", "0.9", "--seed", "3", "--device", "cpu", "--val-fraction", "0.2", "--val-every", "0",
              "--set", json.dumps(TINY)]
    # the uninterrupted reference run, in-process (the CLI must build the same config)
    full = train_generator(cfg(latents, tmp_path / "full", steps=12, val_every=0, deterministic=False))
    assert full["step"] == 12 and full["stopped"] == "steps"
    # a run that is killed -9 as soon as its first checkpoint exists, with steps still running
    proc = subprocess.Popen([sys.executable, "-m", "eqcli", "train", *common, "--out", str(tmp_path / "k"), "--steps", "100000",
                             "--checkpoint-every", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 60
    while not (tmp_path / "k" / "train_state.pt").exists() and time.time() < deadline:
        time.sleep(0.005)  # poll fast: the kill must land before step 12
    proc.kill()
    proc.wait()
    killed_at = state(tmp_path / "k")["step"]
    assert 3 <= killed_at < 12
    # resume in-process from the CLI run's checkpoint, with the settings it saved
    res = train_generator(train_config_from_args(latents=str(latents), out=str(tmp_path / "k"), resume=True, steps=12))
    assert res["start_step"] == killed_at and res["step"] == 12
    assert_same_tensors(state(tmp_path / "full")["model"], state(tmp_path / "k")["model"])


def test_cli_in_process_json_resume_and_bad_flag(latents, tmp_path, capsys):
    from eqcli.main import main
    from eqcli_core.generator import load_generator

    def run(argv) -> int:
        with pytest.raises(SystemExit) as exc:  # typer exits even on success
            main(argv)
        return exc.value.code

    out = str(tmp_path / "cli")
    args = ["train", "--latents", str(latents), "--out", out, "--batch", "8", "--micro-batch", "4", "--lr", "0.002",
            "--val-fraction", "0.2", "--val-every", "0", "--device", "cpu", "--set", json.dumps(TINY), "--json"]
    assert run([*args, "--steps", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["step"] == 2 and doc["stopped"] == "steps" and doc["peak_lr"] == 0.002
    assert run(["train", "--latents", str(latents), "--out", out, "--resume", "--steps", "3", "--json"]) == 0  # saved settings
    doc = json.loads(capsys.readouterr().out)
    assert doc["start_step"] == 2 and doc["step"] == 3 and doc["peak_lr"] == 0.002
    gen = load_generator(doc["generator"])
    assert gen.class_names == ["dark", "light"] and gen.config.token_dim == C and gen.config.depth == 1
    assert run([*args, "--out", str(tmp_path / "bad"), "--steps", "2", "--loss-mask", "9"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "usage_error"


def test_resume_with_another_thread_count_warns(latents, tmp_path):
    from eqcli_core.progress import Reporter

    class Record(Reporter):
        def __init__(self):
            self.warnings = []

        def warn(self, message: str) -> None:
            self.warnings.append(message)

    train_generator(cfg(latents, tmp_path / "r", steps=1))
    assert state(tmp_path / "r")["num_threads"] == torch.get_num_threads() == 1
    same = Record()
    train_generator(cfg(latents, tmp_path / "r", steps=2, resume=True), reporter=same)
    assert not any("thread" in w for w in same.warnings), same.warnings
    other = Record()
    torch.set_num_threads(2)
    try:
        train_generator(cfg(latents, tmp_path / "r", steps=3, resume=True), reporter=other)
    finally:
        torch.set_num_threads(1)
    assert any("1 torch thread(s), now 2" in w for w in other.warnings), other.warnings
