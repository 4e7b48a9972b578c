"""Sampled-token files: `sample --save-tokens` then `decode` gives back the sampled pixels."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from eqcli_core.errors import CheckpointError, LatentFileError, UsageError
from eqcli_core.generator import save_generator
from eqcli_core.pipeline import SampleConfig, generate_image
from eqcli_core.saved_tokens import check_tokenizer, decode_sample_tokens, load_sample_tokens
from eqcli_core.tokenizer import save_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from test_decode import _ldm_tok  # noqa: E402
from test_pipeline import NAMES, tiny_generator, tiny_tokenizer  # noqa: E402
from test_sample_cli import run  # noqa: E402


@pytest.mark.parametrize("which,ncols,num,batch", [("local", 1, 1, None), ("local", 50, 2, None), ("local", 70, 3, 2),
                                                   ("global", 2, 1, None), ("global", 75, 2, None), ("global", 40, 3, 2)])
def test_decoding_saved_tokens_gives_the_sampled_pixels(tmp_path, which, ncols, num, batch):
    # local = finite receptive field (exact chunked decode); global = attention decoder (overlap + crossfade)
    tok = tiny_tokenizer() if which == "local" else _ldm_tok()
    cw = int(tok.column_width)
    width = ncols * cw
    gen = tiny_generator()
    path = tmp_path / "t.h5"
    res = generate_image(gen, tok, SampleConfig(width=width, num=num, seed=5, classes="coast", steps=2, batch=batch), save_tokens=path)
    st = load_sample_tokens(path)
    assert st.tokens.shape == (num, width // cw, int(tok.token_dim))
    assert st.attrs["seed"] == 5 and st.attrs["width"] == width and st.attrs["column_width"] == cw
    assert np.array_equal(decode_sample_tokens(tok, st), res.images)
    last = decode_sample_tokens(tok, st, index=num - 1)
    assert np.array_equal(last[0], res.images[num - 1])


def test_decoded_tokens_match_the_generator_tokens(tmp_path):
    # the file holds the sampler's tokens, not a re-encoding: the recompute sampler gives the same sequence
    from eqcli_core.sampling import sample_tokens_recompute

    tok, gen = tiny_tokenizer(), tiny_generator()
    path = tmp_path / "t.h5"
    generate_image(gen, tok, SampleConfig(width=48, num=1, seed=2, classes="forest", steps=2), save_tokens=path)
    g = torch.Generator().manual_seed(2)
    ref = sample_tokens_recompute(gen, torch.tensor([2]), num_columns=12, generator=g, steps=2, cfg=3.0, cfg_schedule="linear")
    assert torch.allclose(torch.from_numpy(load_sample_tokens(path).tokens), ref.float(), atol=1e-5)


def test_wrong_tokenizer_and_bad_index_are_refused(tmp_path):
    tok, gen = tiny_tokenizer(), tiny_generator()
    tok.fingerprint = "a" * 16
    path = tmp_path / "t.h5"
    generate_image(gen, tok, SampleConfig(width=32, num=2, seed=0, classes="coast", steps=2), save_tokens=path)
    st = load_sample_tokens(path)
    other = tiny_tokenizer(seed=1)
    other.fingerprint = "b" * 16
    with pytest.raises(CheckpointError, match="mismatched tokenizer"):
        check_tokenizer(st, other)
    with pytest.raises(CheckpointError, match="8-dim"):
        check_tokenizer(load_sample_tokens(path), _dim_tok(4))
    with pytest.raises(UsageError, match="out of range"):
        decode_sample_tokens(tok, st, index=2)


def _dim_tok(dim):
    from eqcli_core.tokenizer import TokenizerConfig, build_tokenizer

    cfg = TokenizerConfig(arch="fast", height=32, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), len_down_scale=1,
                          z_channels=8, token_dim=dim, stem=2, kernel=3, mlp_ratio=2, tail_ch=8)
    return build_tokenizer(cfg).eval()


def test_damaged_and_foreign_files_are_refused(tmp_path):
    tok, gen = tiny_tokenizer(), tiny_generator()
    good = tmp_path / "t.h5"
    generate_image(gen, tok, SampleConfig(width=32, num=1, seed=0, classes="coast", steps=2), save_tokens=good)
    data = good.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(LatentFileError):
        load_sample_tokens(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
        f["tokens"] = np.zeros((1, 2, 8), "f4")
    with pytest.raises(LatentFileError, match="not an eqimg sampled-token file"):
        load_sample_tokens(tmp_path / "other.h5")
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f.attrs["format"] = "eqimg-sample-tokens"
        f["tokens"] = np.full((1, 2, 8), np.nan, "f4")
    with pytest.raises(LatentFileError, match="non-finite"):
        load_sample_tokens(tmp_path / "nan.h5")
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f.attrs["format"] = "eqimg-sample-tokens"
        f["tokens"] = np.zeros((2, 8), "f4")
    with pytest.raises(LatentFileError, match="expected"):
        load_sample_tokens(tmp_path / "flat.h5")
    with pytest.raises(LatentFileError, match="not found"):
        load_sample_tokens(tmp_path / "missing.h5")


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    fp = save_tokenizer(tiny_tokenizer(), d / "tok.pt")
    save_tokenizer(tiny_tokenizer(seed=3), d / "tok_other.pt")
    save_generator(tiny_generator(), d / "gen.pt", class_names=NAMES, meta={"latent_fingerprint": fp})
    return d


def test_cli_sample_then_decode(models, tmp_path, capsys):
    d = models
    png, h5 = tmp_path / "s.png", tmp_path / "s.h5"
    code, _, err = run(["sample", "-g", str(d / "gen.pt"), "-t", str(d / "tok.pt"), "--width", "160", "--num", "2", "--seed", "4",
                        "--steps", "2", "--class", "coast", "-o", str(png), "--save-tokens", str(h5), "--device", "cpu"], capsys)
    assert code == 0, err
    sampled = np.asarray(Image.open(png))

    code, out, err = run(["decode", str(h5), "-t", str(d / "tok.pt"), "-o", str(tmp_path / "d.png"), "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["images"] == 2 and doc["width"] == 160 and doc["seed"] == 4
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")), sampled)

    code, out, err = run(["decode", str(h5), "-t", str(d / "tok.pt"), "-o", str(tmp_path / "one.png"), "--index", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), sampled[32:])

    # info describes the file
    code, out, err = run(["info", str(h5), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "sample-tokens" and info["images"] == 2 and info["columns"] == 40


def test_cli_decode_to_stdout(models, tmp_path, capsysbinary):
    d = models
    h5 = tmp_path / "s.h5"
    from eqcli.main import main

    with pytest.raises(SystemExit) as e:  # noqa: PT012
        main(["sample", "-g", str(d / "gen.pt"), "-t", str(d / "tok.pt"), "--width", "40", "--seed", "1", "--steps", "2",
              "--class", "forest", "-o", str(tmp_path / "s.png"), "--save-tokens", str(h5), "--device", "cpu"])
    assert e.value.code in (0, None)
    capsysbinary.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["decode", str(h5), "-t", str(d / "tok.pt"), "-o", "-", "--device", "cpu"])
    assert e.value.code in (0, None)
    png = capsysbinary.readouterr().out
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(Image.open(tmp_path / "s.png")))


@pytest.mark.parametrize("case,code,fragment", [
    ("other_tokenizer", 4, "mismatched tokenizer"),
    ("dataset_latents", 5, "not an eqimg sampled-token file"),
    ("truncated", 5, "corrupt"),
    ("bad_index", 2, "out of range"),
    ("json_stdout", 2, "--json"),
])
def test_cli_decode_errors(models, tmp_path, capsys, case, code, fragment):
    d = models
    h5 = tmp_path / "s.h5"
    tok = tiny_tokenizer()
    from eqcli_core.tokenizer import load_tokenizer

    tok = load_tokenizer(d / "tok.pt")
    generate_image(tiny_generator(), tok, SampleConfig(width=32, num=1, seed=0, classes="coast", steps=2), save_tokens=h5)
    args = ["decode", str(h5), "-t", str(d / "tok.pt"), "-o", str(tmp_path / "x.png"), "--device", "cpu"]
    if case == "other_tokenizer":
        args[3] = str(d / "tok_other.pt")
    elif case == "dataset_latents":
        with h5py.File(tmp_path / "lat.h5", "w") as f:
            f.attrs["format"] = "eqimg-latents"
        args[1] = str(tmp_path / "lat.h5")
    elif case == "truncated":
        data = h5.read_bytes()
        h5.write_bytes(data[: len(data) // 3])
    elif case == "bad_index":
        args += ["--index", "3"]
    elif case == "json_stdout":
        args[5] = "-"
        args += ["--json"]
    c, out, err = run(args, capsys)
    assert c == code, err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    if case == "other_tokenizer":  # --force decodes anyway
        c, out, err = run(args + ["--force"], capsys)
        assert c == 0, err and (tmp_path / "x.png").exists()


def test_decode_refuses_an_output_that_does_not_fit_in_memory(tmp_path, monkeypatch):
    import eqcli_core.pipeline as P
    from eqcli_core.errors import ResourceError

    tok = tiny_tokenizer()
    path = tmp_path / "t.h5"
    generate_image(tiny_generator(), tok, SampleConfig(width=64, num=2, seed=0, classes="coast", steps=2), save_tokens=path)
    monkeypatch.setattr(P, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ResourceError, match="MiB") as e:
        decode_sample_tokens(tok, load_sample_tokens(path))
    assert "--index" in e.value.hint
