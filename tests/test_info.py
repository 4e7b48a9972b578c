"""`eqimg info` / `eqimg models` and `eqimg tokenize` through the CLI entry point."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eqcli.main import main
from eqcli_core.errors import CheckpointError, LatentFileError
from eqcli_core.inspect import describe, list_bundled
from eqcli_core.io import save_checkpoint, state_dict_hash
from eqcli_core.latents import open_latents, tokenize_folder

sys.path.insert(0, str(Path(__file__).parent))
from latents_helpers import FakeTokenizer, make_folder  # noqa: E402

from eqcli_core.data.images import load_for_tokenize as LOAD  # noqa: E402


def run_cli(capsys, *args) -> tuple[int, dict | None, str]:
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    doc = json.loads(out.out) if out.out.strip().startswith("{") else None
    return code, doc, out.err


@pytest.fixture(scope="module")
def latent_file(tmp_path_factory):
    data = make_folder(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("lat") / "latents.h5"
    tokenize_folder(FakeTokenizer().eval(), data, out, commit_every=4)
    return out


def test_info_latents_json_matches_file(latent_file, capsys):
    code, doc, _ = run_cli(capsys, "info", str(latent_file), "--json")
    assert code == 0 and doc["kind"] == "latents" and doc["complete"] is True
    with open_latents(latent_file) as lf:
        assert doc["images"] == lf.num_images == 8
        assert doc["columns"] == lf.num_columns == int(lf.widths.sum())
        assert doc["width_columns"]["max"] == int(lf.widths.max())
        assert sum(doc["width_columns"]["histogram"].values()) == lf.num_images
        assert doc["tokenizer_fingerprint"] == lf.fingerprint == FakeTokenizer().fingerprint
    assert doc["class_names"] == ["forest", "lake"] and doc["dtype"] == "float16" and doc["format_version"] == 1
    assert doc["skipped"] == 1
    code, _, err = run_cli(capsys, "info", str(latent_file))  # table output works too
    assert code == 0 and "latents" in err


def test_info_partial_latents(tmp_path, capsys):
    data = make_folder(tmp_path / "data")

    class Stop(Exception):
        pass

    def stop(done):
        raise Stop

    with pytest.raises(Stop):
        tokenize_folder(FakeTokenizer().eval(), data, tmp_path / "l.h5", commit_every=3, on_commit=stop)
    code, doc, _ = run_cli(capsys, "info", str(tmp_path / "l.h5.partial"), "--json")
    assert code == 0 and doc["kind"] == "latents-partial" and doc["files_done"] == 3 and doc["files_total"] == 9


def test_info_eqimg_checkpoints(tmp_path, capsys):
    tok = FakeTokenizer()
    sd = tok.state_dict()
    save_checkpoint({"config": {"height": 8}, "state_dict": sd, "meta": {"fingerprint": state_dict_hash(sd), "step": 12}}, tmp_path / "t.pt", kind="tokenizer")
    code, doc, _ = run_cli(capsys, "info", str(tmp_path / "t.pt"), "--json")
    assert code == 0 and doc["kind"] == "tokenizer" and doc["fingerprint"] == tok.fingerprint and doc["step"] == 12
    assert doc["parameters"]["state_dict"] == sum(p.numel() for p in tok.parameters())
    save_checkpoint({"config": {"a": 1}, "model": sd, "ema": {"shadow": sd}, "optimizer": {}, "step": 5, "class_names": ["x", "y"]},
                    tmp_path / "g.pt", kind="generator-train-state")
    doc = describe(tmp_path / "g.pt")
    assert doc["kind"] == "generator-train-state" and doc["step"] == 5 and doc["classes"] == 2
    assert doc["parameters"] == {"model": doc["parameters"]["ema.shadow"], "ema.shadow": sum(p.numel() for p in tok.parameters())}


def test_info_official_release_files(official_dir, capsys):
    code, doc, _ = run_cli(capsys, "info", str(official_dir / "release_generator.pth"), "--json")
    assert code == 0 and doc["kind"] == "official-generator" and "eqimg convert official" in doc["hint"]
    raw = torch.load(official_dir / "release_generator.pth", weights_only=False)  # trusted test fixture
    assert doc["parameters"]["model_ema"] == sum(v.numel() for v in raw["model_ema"].values() if v.is_floating_point())
    assert doc["args"]["vae_norm"] == pytest.approx(0.05493) and doc["classes"] == 5 and doc["epoch"] == 7
    doc = describe(official_dir / "release_tokenizer.ckpt")
    assert doc["kind"] == "official-tokenizer" and doc["ema_weights"] is True and doc["embed_dim"] == 8
    assert describe(official_dir / "official_generator.pt")["classes"] == 5


@pytest.mark.parametrize("content,exit_code", [(b"", 4), (b"hello world\n" * 10, 4), (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, 5)])
def test_info_bad_files_exit_cleanly(tmp_path, capsys, content, exit_code):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    code, doc, err = run_cli(capsys, "info", str(bad), "--json")
    assert code == exit_code and doc["exit_code"] == exit_code and "Traceback" not in err
    code, _, _ = run_cli(capsys, "info", str(tmp_path / "missing.pt"))
    assert code == 4


def test_info_truncated_latents(latent_file, tmp_path):
    bad = tmp_path / "t.h5"
    bad.write_bytes(latent_file.read_bytes()[:4000])
    with pytest.raises(LatentFileError, match="truncated"):
        describe(bad)


def test_models_lists_manifest(tmp_path, capsys):
    empty = list_bundled(tmp_path)
    assert empty["models"] == [] and "no bundled models" in empty["message"]
    (tmp_path / "tok.pt").write_bytes(b"x" * 10)
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [
        {"name": "landscapes-tiny", "kind": "generator", "files": ["tok.pt", "gen.pt"], "classes": ["a", "b", "c"], "provenance": "trained 1h CPU"}]}))
    doc = list_bundled(tmp_path)
    m = doc["models"][0]
    assert m["name"] == "landscapes-tiny" and m["num_classes"] == 3 and m["complete"] is False
    assert m["files"] == [{"file": "tok.pt", "present": True, "bytes": 10}, {"file": "gen.pt", "present": False, "bytes": None}]
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        list_bundled(tmp_path)
    code, doc, _ = run_cli(capsys, "models", "--json")  # the installation's own directory
    assert code == 0 and isinstance(doc["models"], list)


def test_tokenize_cli_end_to_end(tmp_path, capsys):
    """A saved tiny tokenizer checkpoint, through `eqimg tokenize`, gives its own encode() values."""
    from eqcli_core.tokenizer import TOKENIZER_PRESETS, build_tokenizer, load_tokenizer, save_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: two threads spin
    try:
        ckpt = tmp_path / "tok.pt"
        fp = save_tokenizer(build_tokenizer(TOKENIZER_PRESETS["tiny"]), ckpt)
        tok = load_tokenizer(ckpt)
        h = tok.height
        data = make_folder(tmp_path / "data", images=[("a", "x.png", 4), ("a", "y.png", 8), ("b", "z.png", 4)])
        out = tmp_path / "l.h5"
        code, doc, _ = run_cli(capsys, "tokenize", "--tokenizer", str(ckpt), "--data", str(data), "--out", str(out),
                               "--dtype", "float32", "--batch", "2", "--device", "cpu", "--json")
        assert code == 0, doc
        assert doc["images"] == 3 and doc["skipped"] == 1 and doc["dtype"] == "float32" and doc["tokenizer_fingerprint"] == fp
        with open_latents(out, expected_fingerprint=fp) as lf, torch.no_grad():
            for i, rel in enumerate(lf.paths):
                x = LOAD(data / rel, h, tok.column_width)[None]
                np.testing.assert_allclose(lf.image_tokens(i), tok.encode(x)[0].numpy(), atol=1e-4, rtol=1e-4)
                np.testing.assert_allclose(lf.image_tokens(i, mirrored=True), tok.encode(x.flip(-1))[0].numpy(), atol=1e-4, rtol=1e-4)
        code, doc, _ = run_cli(capsys, "info", str(ckpt), "--json")
        assert code == 0 and doc["kind"] == "tokenizer" and doc["fingerprint"] == fp and doc["column_width_hint"] == tok.column_width
    finally:
        torch.set_num_threads(threads)
    code, doc, _ = run_cli(capsys, "tokenize", "--tokenizer", str(ckpt), "--data", str(data), "--out", str(out), "--json")
    assert code == 2 and "already exists" in doc["message"]
    code, doc, _ = run_cli(capsys, "tokenize", "--tokenizer", str(ckpt), "--data", str(data), "--out", str(tmp_path / "m.h5"), "--dtype", "int3", "--json")
    assert code == 2 and "dtype" in doc["message"]
    code, doc, _ = run_cli(capsys, "tokenize", "--tokenizer", str(tmp_path / "nope.pt"), "--data", str(data), "--out", str(tmp_path / "m.h5"), "--json")
    assert code == 4
