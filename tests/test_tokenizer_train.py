"""Tokenizer training: exact resume, all loss terms, CLI train-tokenizer and reconstruct."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eqcli_core.errors import BadInputError, CheckpointError, UsageError
from eqcli_core.io import load_checkpoint
from eqcli_core.tokenizer import TokenizerConfig, load_tokenizer, to_pixels
from eqcli_core.tokenizer.train import TrainTokenizerConfig, psnr_ssim, train_tokenizer


def _mini() -> TokenizerConfig:
    return TokenizerConfig(arch="fast", height=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), len_down_scale=1,
                           z_channels=8, token_dim=8, noise_std=0.5, stem=4, kernel=5, mlp_ratio=2, tail_ch=8)


def _write_images(root, n: int, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        img = np.stack([np.sin(a * xx + b * yy + c), np.cos(b * xx - a * yy), np.sin(c * xx * yy + a)], -1)
        img = ((img * 0.5 + 0.5) * 255).astype(np.uint8)
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{i % 2}" / f"{i}.png")


def _cfg(**kw) -> TrainTokenizerConfig:
    base = dict(preset="mini", batch=2, perceptual=False, val_every=2, val_images=2, warmup=50)
    base.update(kw)
    return TrainTokenizerConfig(**base)


def test_resume_is_exact(tmp_path):
    data = tmp_path / "data"
    _write_images(data, 12, 32, 64)
    a = train_tokenizer(data, tmp_path / "a", train_config=_cfg(), model_config=_mini(), steps=4)
    train_tokenizer(data, tmp_path / "b", train_config=_cfg(), model_config=_mini(), steps=2)
    b = train_tokenizer(data, tmp_path / "b", train_config=_cfg(), steps=4, resume=True)
    assert a["steps"] == b["steps"] == 4 and b["session_steps"] == 2
    sa = load_checkpoint(tmp_path / "a" / "state.pt", kind="tokenizer-train-state")
    sb = load_checkpoint(tmp_path / "b" / "state.pt", kind="tokenizer-train-state")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for k, v in sa["ema"]["shadow"].items():
        assert torch.equal(v, sb["ema"]["shadow"][k]), k
    assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9)
    # the run directory holds the documented files; tokenizer.pt loads
    for name in ("state.pt", "tokenizer.pt", "preview.png", "log.jsonl"):
        assert (tmp_path / "a" / name).is_file()
    tok = load_tokenizer(tmp_path / "a" / "tokenizer.pt")
    assert tok.column_width == 8 and tok.height == 32
    assert len((tmp_path / "a" / "log.jsonl").read_text().splitlines()) == 3  # steps 2, 4 and the final one


def test_run_dir_guards(tmp_path):
    data = tmp_path / "data"
    _write_images(data, 4, 32, 32)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_tokenizer(data, tmp_path / "r", train_config=_cfg(), model_config=_mini(), steps=1, resume=True)
    train_tokenizer(data, tmp_path / "r", train_config=_cfg(), model_config=_mini(), steps=1)
    with pytest.raises(UsageError, match="already holds"):
        train_tokenizer(data, tmp_path / "r", train_config=_cfg(), model_config=_mini(), steps=1)
    with pytest.raises(UsageError):
        train_tokenizer(data, tmp_path / "s", train_config=_cfg(), model_config=_mini())
    with pytest.raises(BadInputError):
        train_tokenizer(tmp_path / "nowhere", tmp_path / "t", train_config=_cfg(), model_config=_mini(), steps=1)


def _mini_ldm() -> TokenizerConfig:
    return TokenizerConfig(arch="ldm", height=32, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(8,),
                           len_down_scale=4, z_channels=4, token_dim=8)


@pytest.mark.parametrize("arch", ["fast", "ldm"])
def test_all_loss_terms_and_bad_files(tmp_path, arch):
    data = tmp_path / "data"
    _write_images(data, 10, 32, 48)
    (data / "c0" / "broken.png").write_bytes(b"\x89PNG garbage")
    s = train_tokenizer(data, tmp_path / "run", model_config=_mini() if arch == "fast" else _mini_ldm(), steps=2,
                        train_config=_cfg(perceptual=True, perceptual_every=1, perceptual_size=32, feature_align=True, gan_start=1))
    assert s["perceptual"] and s["feature_align"] and s["gan"]
    assert np.isfinite(s["psnr"])


def test_cli_train_and_reconstruct(tmp_path):
    from eqcli.main import main

    data = tmp_path / "data"
    _write_images(data, 6, 128, 160)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train-tokenizer", "--data", str(data), "--out", str(run), "--steps", "2", "--batch", "2", "--no-perceptual",
              "--threads", "1", "--json"])
    assert e.value.code in (0, None)
    img = data / "c0" / "0.png"
    out = tmp_path / "rec.png"
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(["reconstruct", str(img), "--tokenizer", str(run / "tokenizer.pt"), "-o", str(out), "--json"])
    assert e.value.code in (0, None)
    doc = json.loads(buf.getvalue())
    # the CLI's PSNR equals the library path computed here (centre crop 160 -> 160: whole columns)
    tok = load_tokenizer(run / "tokenizer.pt")
    arr = np.array(Image.open(img).convert("RGB"))
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        rec = to_pixels(tok.decode(tok.encode(x)))
    assert doc["psnr"] == pytest.approx(psnr_ssim(arr[None], rec)[0], abs=1e-6)
    assert doc["tokens"] == 20
    side = np.asarray(Image.open(out))
    assert side.shape == (128, 320, 3) and np.array_equal(side[:, 160:], rec[0])
    # bad width for the command -> clear error exit code, no traceback
    Image.fromarray(arr[:, :5]).save(tmp_path / "narrow.png")
    with pytest.raises(SystemExit) as e:
        main(["reconstruct", str(tmp_path / "narrow.png"), "--tokenizer", str(run / "tokenizer.pt"), "-o", str(out)])
    assert e.value.code == 3


def test_held_out_images_are_readable_and_skips_are_counted(tmp_path):
    from eqcli_core.tokenizer.train import list_images, split_files, usable_files

    data = tmp_path / "data"
    _write_images(data, 3, 32, 48)
    (data / "c0" / "text.png").write_text("not a png")
    (data / "c1" / "half.png").write_bytes((data / "c1" / "1.png").read_bytes()[:60])
    (data / "c1" / "empty.jpg").write_bytes(b"")
    (data / "c0" / "narrow.png").write_bytes(b"")
    Image.fromarray(np.zeros((32, 8, 3), np.uint8)).save(data / "c0" / "narrow.png")  # narrower than the 32 px crop
    files, scan_skips = list_images(data)
    assert len(files) == 6 and len(scan_skips) == 1  # the 0-byte file is dropped at scan time
    ok, bad = usable_files(files, 32, 32)
    assert sorted(p.name for p in ok) == ["0.png", "1.png", "2.png"] and len(bad) == 3
    for seed in range(20):  # any seed: the held-out image is one that loads
        train, val = split_files(ok, 2, seed)
        assert set(val) <= set(ok) and set(train) | set(val) == set(ok)
    s = train_tokenizer(data, tmp_path / "run", model_config=_mini(), steps=1, train_config=_cfg(val_every=0))
    assert s["skipped"] == 4 and s["train_images"] + s["val_images"] == 3
    # only unusable files: one clear error
    only_bad = tmp_path / "bad"
    (only_bad / "c").mkdir(parents=True)
    (only_bad / "c" / "x.png").write_text("junk")
    with pytest.raises(BadInputError, match="could be used"):
        train_tokenizer(only_bad, tmp_path / "run2", model_config=_mini(), steps=1, train_config=_cfg())


# ----------------------------------------------------------------------------- decoder fine-tuning


def test_decoder_finetune_keeps_the_latent_space_and_resumes_exactly(tmp_path):
    from eqcli_core.generator import save_generator
    from eqcli_core.latents import open_latents, tokenize_folder
    from eqcli_core.pipeline import check_pair

    data = tmp_path / "data"
    _write_images(data, 12, 32, 64)
    train_tokenizer(data, tmp_path / "src", train_config=_cfg(), model_config=_mini(), steps=2)
    src = load_tokenizer(tmp_path / "src" / "tokenizer.pt")
    ft = _cfg(decoder_from=str(tmp_path / "src" / "tokenizer.pt"), lr=3e-3)
    res = train_tokenizer(data, tmp_path / "ft", train_config=ft, steps=4)
    assert res["latent_fingerprint"] == src.fingerprint
    tok = load_tokenizer(tmp_path / "ft" / "tokenizer.pt")
    assert tok.fingerprint != src.fingerprint and tok.latent_fingerprint == src.fingerprint
    a, b = dict(src.named_parameters()), dict(tok.named_parameters())
    enc = {n for n, p in src.named_parameters() if any(p is q for q in src.encoder_parameters())}
    assert enc and all(torch.equal(a[n], b[n]) for n in enc)  # encoder bit-identical
    assert any(not torch.equal(a[n], b[n]) for n in a if n not in enc)  # decoder trained
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(src.encode(x), tok.encode(x))

    # everything made with the source stays valid with the fine-tuned tokenizer, and vice versa
    lat_src, lat_ft = tmp_path / "src.h5", tmp_path / "ft.h5"
    tokenize_folder(src, data, lat_src)
    tokenize_folder(tok, data, lat_ft)
    with open_latents(lat_src) as l1, open_latents(lat_ft) as l2:
        assert l1.fingerprint == l2.fingerprint == src.fingerprint
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import NAMES, tiny_generator

    gen_path = tmp_path / "gen.pt"
    save_generator(tiny_generator(token_dim=8), gen_path, class_names=NAMES, meta={"latent_fingerprint": src.fingerprint})
    from eqcli_core.generator import load_generator

    check_pair(load_generator(gen_path), tok)  # no "mismatched tokenizer"
    other = load_tokenizer(tmp_path / "src" / "tokenizer.pt")
    other.fingerprint = "f" * 16
    with pytest.raises(CheckpointError, match="mismatched tokenizer"):
        check_pair(load_generator(gen_path), other)

    # resume: interrupted + resumed == uninterrupted
    train_tokenizer(data, tmp_path / "ft2", train_config=ft, steps=2)
    train_tokenizer(data, tmp_path / "ft2", train_config=_cfg(), steps=4, resume=True)
    s1 = load_checkpoint(tmp_path / "ft" / "state.pt", kind="tokenizer-train-state")
    s2 = load_checkpoint(tmp_path / "ft2" / "state.pt", kind="tokenizer-train-state")
    for k, v in s1["model"].items():
        assert torch.equal(v, s2["model"][k]), k
    assert load_tokenizer(tmp_path / "ft2" / "tokenizer.pt").latent_fingerprint == src.fingerprint


def test_decoder_finetune_refuses_a_source_that_is_not_a_tokenizer(tmp_path, capsys):
    from eqcli.main import main
    from eqcli_core.generator import save_generator

    data = tmp_path / "data"
    _write_images(data, 4, 32, 64)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import NAMES, tiny_generator

    save_generator(tiny_generator(), tmp_path / "gen.pt", class_names=NAMES)
    with pytest.raises(SystemExit) as e:
        main(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "o"), "--steps", "1", "--device", "cpu",
              "--decoder-from", str(tmp_path / "gen.pt")])
    assert e.value.code == 4
    err = capsys.readouterr().err
    assert "generator" in err and "Traceback" not in err


def test_latent_fingerprint_of_duck_typed_tokenizers():
    from types import SimpleNamespace

    from eqcli_core.tokenizer import latent_fingerprint_of

    assert latent_fingerprint_of(SimpleNamespace(fingerprint="a" * 16)) == "a" * 16
    assert latent_fingerprint_of(SimpleNamespace(fingerprint="a" * 16, latent_fingerprint="b" * 16)) == "b" * 16
    assert latent_fingerprint_of(SimpleNamespace()) is None
