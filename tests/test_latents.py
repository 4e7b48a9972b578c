"""HDF5 column latents: tokenize_folder round trip, resume, refusal, corruption, LatentDataset."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from eqcli_core.errors import BadInputError, LatentFileError, UsageError
from eqcli_core.latents import LatentDataset, open_latents, tokenize_folder

sys.path.insert(0, str(Path(__file__).parent))
from latents_helpers import CW, IMAGES, FakeConfig, FakeTokenizer, make_folder, real_tiny_tokenizer  # noqa: E402

from eqcli_core.data.images import load_for_tokenize as LOAD, scan_image_folder as SCAN  # noqa: E402


def _tok(tmp_path, **kw):
    return dict(**kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tokenizer():
    return FakeTokenizer().eval()


@pytest.fixture(scope="module")
def latents(folder, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "latents.h5"
    res = tokenize_folder(tokenizer, folder, out, batch_size=2, commit_every=3)
    return out, res


def _file_contents(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in f}
        attrs = {k: v for k, v in f.attrs.items()}
    return data, attrs


def _assert_same_file(a, b):
    da, aa = _file_contents(a)
    db, ab = _file_contents(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert np.array_equal(da[k], db[k]), k
    assert aa == ab or {k: str(v) for k, v in aa.items()} == {k: str(v) for k, v in ab.items()}


@pytest.mark.parametrize("which,dtype,atol", [("fake", "float16", 2e-2), ("fake", "float32", 1e-5), ("real", "float32", 1e-4)])
def test_round_trip_matches_encode_of_image_and_mirror(folder, tmp_path, which, dtype, atol):
    tok = FakeTokenizer().eval() if which == "fake" else real_tiny_tokenizer()
    if tok is None:
        pytest.skip("the project tokenizer is not available yet")
    if which == "real":  # widths are given at height 8: aspect 1 and 1.5
        folder = make_folder(tmp_path / "data_real", images=[("a", "x.png", 8), ("b", "y.png", 12)], broken=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: two intra-op threads spin and run ~50x slower
    try:
        _check_round_trip(tok, folder, tmp_path, which, dtype, atol)
    finally:
        torch.set_num_threads(threads)


def _check_round_trip(tok, folder, tmp_path, which, dtype, atol):
    out = tmp_path / "l.h5"
    res = tokenize_folder(tok, folder, out, dtype=dtype, batch_size=3, commit_every=4)
    samples, classes, _ = SCAN(folder)
    with open_latents(out, expected_fingerprint=tok.fingerprint) as lf:
        assert lf.class_names == classes and lf.dtype == dtype
        assert res.images == lf.num_images == sum(1 for p, _ in samples if not p.endswith("zz_broken.png"))
        by_path = {os.path.relpath(p, folder): y for p, y in samples}
        with torch.no_grad():
            for i, rel in enumerate(lf.paths):
                x = LOAD(folder / rel, tok.height, tok.column_width)[None]
                want = tok.encode(x)[0].numpy()
                want_m = tok.encode(x.flip(-1))[0].numpy()
                assert lf.widths[i] == x.shape[-1] // tok.column_width == want.shape[0]
                assert lf.labels[i] == by_path[rel]
                np.testing.assert_allclose(lf.image_tokens(i), want, atol=atol, rtol=atol)
                np.testing.assert_allclose(lf.image_tokens(i, mirrored=True), want_m, atol=atol, rtol=atol)
                # the mirror copy is an encoding of the flipped image, not flipped tokens
                assert not np.allclose(want_m, want[::-1], atol=1e-3) or which == "real"


def test_variable_widths_offsets_and_skips(latents, folder):
    out, res = latents
    with open_latents(out) as lf:
        assert sorted(lf.widths.tolist()) == sorted(w // CW for _, _, w in IMAGES)
        assert lf.offsets.tolist() == np.concatenate([[0], np.cumsum(lf.widths)[:-1]]).tolist()
        assert lf.num_columns == sum(w // CW for _, _, w in IMAGES) == res.columns
        assert [p for p, _ in lf.skipped()] == [os.path.join("lake", "zz_broken.png")]
        assert lf.verify_finite()
        s = lf.summary()
    assert res.skipped == 1 and "zz_broken" in res.skipped_examples[0][0]
    assert s["images"] == 8 and s["width_columns"]["min"] == 2 and s["width_columns"]["max"] == 10
    assert s["images_per_class"] == [4, 4]


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(latents, folder, tokenizer, tmp_path):
    ref, _ = latents
    out = tmp_path / "l.h5"

    def stop_after_two(done):
        if done >= 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        tokenize_folder(tokenizer, folder, out, batch_size=2, commit_every=3, on_commit=stop_after_two)
    assert not out.exists() and (tmp_path / "l.h5.partial").exists()
    with pytest.raises(LatentFileError, match="unfinished"):
        open_latents(tmp_path / "l.h5.partial")
    res = tokenize_folder(tokenizer, folder, out, batch_size=2, commit_every=3)
    assert res.resumed_from == 6 and res.images == 8
    assert not (tmp_path / "l.h5.partial").exists()
    _assert_same_file(ref, out)


def test_resume_refuses_other_tokenizer_or_listing(folder, tokenizer, tmp_path):
    out = tmp_path / "l.h5"

    def stop(done):
        raise Interrupt

    with pytest.raises(Interrupt):
        tokenize_folder(tokenizer, folder, out, commit_every=3, on_commit=stop)
    other = FakeTokenizer(FakeConfig(seed=1))
    with pytest.raises(LatentFileError, match=f"made by tokenizer {tokenizer.fingerprint} but the given tokenizer is {other.fingerprint}"):
        tokenize_folder(other, folder, out, commit_every=3)
    with pytest.raises(LatentFileError, match="another file list"):
        tokenize_folder(tokenizer, folder, out, commit_every=3, dtype="float32")
    data2 = tmp_path / "data2"
    shutil.copytree(folder, data2)
    make_folder(data2, images=[("lake", "new.png", 16)], broken=False)
    with pytest.raises(LatentFileError, match="another file list"):
        tokenize_folder(tokenizer, data2, out, commit_every=3)
    # the partial file is untouched by the refusals and still resumes
    assert tokenize_folder(tokenizer, folder, out, commit_every=3).resumed_from == 3


def test_open_latents_refuses_other_tokenizer(latents, tokenizer):
    out, _ = latents
    with pytest.raises(LatentFileError, match=f"latents.h5 was made by tokenizer {tokenizer.fingerprint} but tok.ckpt is abc"):
        open_latents(out, expected_fingerprint="abc", tokenizer_name="tok.ckpt")


def test_bad_arguments(folder, tokenizer, tmp_path, latents):
    with pytest.raises(UsageError, match="already exists"):
        tokenize_folder(tokenizer, folder, latents[0])
    with pytest.raises(UsageError):
        tokenize_folder(tokenizer, folder, tmp_path / "x.h5", dtype="int8")
    with pytest.raises(BadInputError):
        tokenize_folder(tokenizer, tmp_path / "missing", tmp_path / "x.h5")
    only_broken = tmp_path / "broken"
    (only_broken / "c").mkdir(parents=True)
    (only_broken / "c" / "x.png").write_bytes(b"junk")
    with pytest.raises(BadInputError):
        tokenize_folder(tokenizer, only_broken, tmp_path / "y.h5")
    assert not (tmp_path / "y.h5").exists() and not (tmp_path / "y.h5.partial").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip_bytes"])
def test_corrupt_files_give_latent_file_error(latents, tmp_path, damage):
    src, _ = latents
    bad = tmp_path / "bad.h5"
    raw = src.read_bytes()
    if damage == "truncate":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    else:  # overwrite everything after the superblock with garbage
        bad.write_bytes(raw[:48] + bytes(np.random.default_rng(1).integers(0, 256, len(raw) - 48, dtype=np.uint8)))
    with pytest.raises(LatentFileError):
        with open_latents(bad) as lf:
            for i in range(lf.num_images):
                lf.image_tokens(i)
    with pytest.raises(LatentFileError):
        LatentDataset(bad, 2)


def test_nan_values_detected(latents, tmp_path):
    bad = tmp_path / "nan.h5"
    shutil.copy(latents[0], bad)
    with h5py.File(bad, "r+") as f:
        f["tokens"][5, 0] = np.nan
    with open_latents(bad) as lf:
        assert not lf.verify_finite()
        lf.image_tokens(1, mirrored=True)  # another range is fine
        with pytest.raises(LatentFileError, match="NaN"):
            for i in range(lf.num_images):
                lf.image_tokens(i)
    with h5py.File(bad, "r+") as f:
        f.attrs["all_finite"] = False
    with pytest.raises(LatentFileError, match="NaN"):
        open_latents(bad)


def test_dataset_crops_are_deterministic_and_split_is_disjoint(latents):
    out, _ = latents
    ds = LatentDataset(out, 3, split="all", seed=7)
    assert ds.num_too_narrow == 1 and len(ds) == 7 and ds.token_dim == 6
    ds.set_epoch(2)
    a = [ds[i] for i in range(len(ds))]
    b = [LatentDataset(out, 3, split="all", seed=7)]
    b[0].set_epoch(2)
    for (x, y), (x2, y2) in zip(a, [b[0][i] for i in range(len(ds))]):
        assert torch.equal(x, x2) and y == y2 and x.shape == (3, 6) and x.dtype == torch.float32
    plans = {e: [ds.crop_plan(i) for i in range(len(ds))] for e in range(4) if ds.set_epoch(e) is None}
    assert len({tuple(p) for p in plans.values()}) > 1  # epochs differ
    assert any(m for p in plans.values() for _, _, m in p) and not all(m for p in plans.values() for _, _, m in p)
    # each crop is the stored columns of its image (or of its mirror copy)
    ds.set_epoch(3)
    for i in range(len(ds)):
        img, start, mirrored = ds.crop_plan(i)
        full = ds.image_tokens(int(np.nonzero(ds.image_indices == img)[0][0]), mirrored=mirrored)
        assert torch.equal(ds[i][0], full[start : start + 3])
    nomirror = LatentDataset(out, 3, split="all", mirror=False)
    assert not any(nomirror.crop_plan(i)[2] for i in range(len(nomirror)))
    tr, va = LatentDataset(out, 1, split="train", val_fraction=0.25), LatentDataset(out, 1, split="val", val_fraction=0.25)
    assert va.num_images == 2 and tr.num_images == 6
    assert set(tr.paths).isdisjoint(va.paths) and len(set(tr.paths) | set(va.paths)) == 8
    assert LatentDataset(out, 1, split="val", val_fraction=0.25, seed=3).paths == va.paths  # split independent of seed
    with pytest.raises(UsageError):
        LatentDataset(out, 0)
    with pytest.raises(UsageError):
        LatentDataset(out, 2, split="test")
    with pytest.raises(LatentFileError, match="made by tokenizer"):
        LatentDataset(out, 2, expected_fingerprint="0000")


def test_dataloader_with_two_workers(latents):
    out, _ = latents
    ds = LatentDataset(out, 2, split="all", seed=1)
    ds.set_epoch(5)
    want = [ds[i] for i in range(len(ds))]
    ds.close()
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    xs, ys = zip(*[(x, y) for x, y in loader])
    assert torch.equal(torch.cat(xs), torch.stack([w[0] for w in want]))
    assert torch.cat(ys).tolist() == [w[1] for w in want]


_KILL_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from latents_helpers import FakeTokenizer
    from eqcli_core.latents import tokenize_folder
    def mark(done):
        open({marker!r}, "a").write(f"{{done}}\\n")
    tokenize_folder(FakeTokenizer().eval(), {data!r}, {out!r}, batch_size=2, commit_every=1, on_commit=mark)
""")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path):
    images = [("c%d" % (i % 3), f"{i:03d}.png", 8 * (1 + i % 5)) for i in range(60)]  # ~60 commits
    data = make_folder(tmp_path / "data", images=images, broken=False)
    tok = FakeTokenizer().eval()
    ref = tmp_path / "ref.h5"
    tokenize_folder(tok, data, ref, commit_every=7)
    out, marker = tmp_path / "out" / "l.h5", tmp_path / "marker"
    script = _KILL_CHILD.format(tests=str(Path(__file__).parent), marker=str(marker), data=str(data), out=str(out))
    rng = np.random.default_rng(0)
    progress = []
    for attempt in range(1):  # one kill (a child costs seconds of imports), then resume here
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0, 0.03)))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the child finished before it could be killed"
        assert not out.exists() and out.with_name("l.h5.partial").exists()
        progress.append(len(marker.read_text().split()))
    res = tokenize_folder(tok, data, out, batch_size=2, commit_every=1)
    assert 0 < res.resumed_from < 60
    _assert_same_file(ref, out)
