"""`eqimg convert official`: release files -> eqimg checkpoints that reproduce the official outputs."""
from __future__ import annotations

import json

import pytest
import torch

from eqcli.main import main
from eqcli_core.generator import load_generator
from eqcli_core.sampling import sample_tokens


def _run(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code or 0, capsys.readouterr().out


def test_convert_generator_reproduces_release(tmp_path, capsys, official_dir):
    names = tmp_path / "names.txt"
    names.write_text("forest\nlake\n\nmountain\nsea\ndesert\n")
    code, out = _run(capsys, "convert", "official", "--generator", official_dir / "release_generator.pth",
                     "--out", tmp_path / "g.pt", "--class-names", names, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["generator"]["latent_scale"] == pytest.approx(0.05493)
    gen = load_generator(doc["outputs"]["generator"])
    assert gen.class_names == ["forest", "lake", "mountain", "sea", "desert"]
    e = torch.load(official_dir / "release_expected.pt")
    s = sample_tokens(gen, e["labels"], 12, cfg=3.0, generator=torch.Generator().manual_seed(e["sample_seed"]))
    assert (s * gen.latent_scale - e["generator_sample_cfg3"]).abs().max() < 1e-4


def test_convert_both_into_directory(tmp_path, capsys, official_dir):
    code, out = _run(capsys, "convert", "official", "--generator", official_dir / "release_generator.pth",
                     "--tokenizer", official_dir / "release_tokenizer.ckpt", "--out", tmp_path / "pair", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert (tmp_path / "pair" / "generator.pt").exists() and (tmp_path / "pair" / "tokenizer.pt").exists()
    gen = load_generator(tmp_path / "pair" / "generator.pt")
    assert gen.meta["tokenizer_fingerprint"] == doc["tokenizer_fingerprint"]


def test_convert_errors(tmp_path, capsys, official_dir):
    code, out = _run(capsys, "convert", "official", "--out", tmp_path / "x.pt", "--json")
    assert code == 2 and json.loads(out)["error"] == "usage_error"
    code, out = _run(capsys, "convert", "official", "--generator", official_dir / "release_tokenizer.ckpt", "--out", tmp_path / "x.pt", "--json")
    assert code == 4 and not (tmp_path / "x.pt").exists()
    names = tmp_path / "n.txt"
    names.write_text("a\nb\n")
    code, out = _run(capsys, "convert", "official", "--generator", official_dir / "release_generator.pth", "--out", tmp_path / "y.pt",
                     "--class-names", names, "--json")
    assert code == 2 and "class names" in json.loads(out)["message"]
