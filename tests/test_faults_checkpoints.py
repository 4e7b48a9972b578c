"""Untrusted checkpoints: every command that loads one refuses code-carrying pickles (exit 4,
nothing runs) and gives one clear line for the wrong kind of file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_common import (assert_no_traceback, error_lines, json_error, models_images_latents, run_cli,  # noqa: E402
                                write_malicious)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt_faults")
    return {**models_images_latents(d, "lat.h5"), "lat": d / "lat.h5"}


def _commands(env, evil: Path, tmp: Path) -> dict[str, list]:
    """Every command line that loads a checkpoint, with `evil` in the checkpoint's place."""
    img = next(env["data"].rglob("*.png"))
    tok, gen, lat = env["tok"], env["gen"], env["lat"]
    run_tt = tmp / "tt_run"
    run_tt.mkdir()
    (run_tt / "state.pt").write_bytes(evil.read_bytes())
    run_g = tmp / "g_run"
    run_g.mkdir()
    (run_g / "train_state.pt").write_bytes(evil.read_bytes())
    return {
        "sample-generator": ["sample", "-g", evil, "-t", tok, "--width", 32, "--steps", 1, "-o", tmp / "s.png"],
        "sample-tokenizer": ["sample", "-g", gen, "-t", evil, "--width", 32, "--steps", 1, "-o", tmp / "s.png"],
        "outpaint": ["outpaint", img, "--width", 96, "-g", evil, "-t", tok, "--steps", 1, "-o", tmp / "o.png"],
        "tokenize": ["tokenize", "--data", env["data"], "--out", tmp / "t.h5", "--tokenizer", evil],
        "reconstruct": ["reconstruct", img, "--tokenizer", evil, "-o", tmp / "r.png"],
        "info": ["info", evil],
        "convert-generator": ["convert", "official", "--generator", evil, "--out", tmp / "c.pt"],
        "convert-tokenizer": ["convert", "official", "--tokenizer", evil, "--out", tmp / "ct.pt"],
        "train-resume": ["train", "--latents", lat, "--out", run_g, "--resume", "--steps", 1],
        "train-tokenizer-resume": ["train-tokenizer", "--data", env["data"], "--out", run_tt, "--resume", "--steps", 1],
        "analyze-equivariance": ["analyze", "equivariance", "--tokenizer", evil, "--data", env["data"], "--num", 1],
        "analyze-positions": ["analyze", "positions", "--generator", evil, "--latents", lat, "--num", 1],
        "eval-long": ["eval", "long", "--generator", evil, "--tokenizer", tok, "--width", 64, "--num", 1, "--real", env["data"], "--plot", tmp / "l.png"],
        "eval-fid-weights": ["eval", "fid", "--real", env["data"], "--fake", env["data"], "--features", "inception",
                             "--inception-weights", evil],
    }


COMMANDS = ["sample-generator", "sample-tokenizer", "outpaint", "tokenize", "reconstruct", "info", "convert-generator",
            "convert-tokenizer", "train-resume", "train-tokenizer-resume", "analyze-equivariance", "analyze-positions",
            "eval-long", "eval-fid-weights"]


@pytest.mark.parametrize("style", ["torch", "pickle", "open"])
@pytest.mark.parametrize("command", COMMANDS)
def test_code_carrying_checkpoint_is_refused(env, tmp_path, capsys, command, style, monkeypatch):
    marker = tmp_path / "PWNED"
    evil = write_malicious(tmp_path / "evil.pt", marker, style=style)
    args = _commands(env, evil, tmp_path)[command]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args + ["--json"], capsys)
    assert not marker.exists(), f"{command}: unpickling ran code"
    assert code == 4, (command, code, err[-2000:])
    doc = json_error(out)
    assert doc["exit_code"] == 4 and doc["error"] == "bad_checkpoint"
    assert "refused" in doc["message"] and "code" in doc["message"], doc["message"]
    assert len(error_lines(err)) == 1
    assert_no_traceback(err)


def test_no_unsafe_load_in_codebase():
    """Every checkpoint load goes through eqcli_core.io.load_raw (weights-only)."""
    import re

    root = Path(__file__).resolve().parent.parent
    bad = []
    for p in list((root / "eqcli_core").rglob("*.py")) + list((root / "eqcli").rglob("*.py")):
        text = p.read_text()
        for pat in (r"torch\.load\(", r"weights_only\s*=\s*False", r"pickle\.loads?\(", r"allow_pickle\s*=\s*True",
                    r"torch\.jit\.load\(", r"dill\.", r"joblib\.load"):
            for m in re.finditer(pat, text):
                line = text[:m.start()].count("\n") + 1
                if p.name == "io.py" and pat == r"torch\.load\(" and "weights_only=True" in text.splitlines()[line - 1]:
                    continue  # load_raw itself
                if p.name == "metrics.py" and pat == r"torch\.jit\.load\(":
                    continue  # clean-fid's Inception is a TorchScript archive (no Python pickles); only a file the user names
                    # (or their own /tmp cache) is loaded, and anything else is refused (test above)
                bad.append(f"{p.relative_to(root)}:{line}: {pat}")
    assert not bad, bad


# ----------------------------------------------------------------------------- wrong kind of file

def _wrong_files(env, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, fragment expected in the message)."""
    torch.save(torch.randn(3, 3), tmp / "tensor.pt")
    good = env["gen"].read_bytes()
    (tmp / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp / "text.pt").write_text("this is not a checkpoint\n")
    (tmp / "empty.pt").write_bytes(b"")
    torch.save({"hello": 1}, tmp / "dict.pt")
    torch.save({"format": "eqimg", "format_version": 99, "kind": "generator"}, tmp / "future.pt")
    return {
        "tensor": (tmp / "tensor.pt", "not an eqimg checkpoint"),
        "truncated": (tmp / "trunc.pt", "not a readable checkpoint"),
        "text": (tmp / "text.pt", "not a readable checkpoint"),
        "empty": (tmp / "empty.pt", "empty"),
        "plain-dict": (tmp / "dict.pt", "not an eqimg checkpoint"),
        "newer": (tmp / "future.pt", "newer eqimg"),
        "missing": (tmp / "nope.pt", "not found"),
        "directory": (tmp, "directory"),
    }


@pytest.mark.parametrize("case", ["tensor", "truncated", "text", "empty", "plain-dict", "newer", "missing", "directory"])
def test_wrong_file_as_generator_and_tokenizer(env, tmp_path, capsys, case):
    bad, fragment = _wrong_files(env, tmp_path)[case]
    for args in (["sample", "-g", bad, "-t", env["tok"], "--width", 32, "-o", tmp_path / "x.png"],
                 ["sample", "-g", env["gen"], "-t", bad, "--width", 32, "-o", tmp_path / "x.png"],
                 ["tokenize", "--data", env["data"], "--out", tmp_path / "x.h5", "--tokenizer", bad]):
        code, out, err = run_cli(args + ["--json"], capsys)
        assert code == 4, (args, code, err[-1500:])
        doc = json_error(out)
        assert fragment in doc["message"], (args, doc["message"])
        assert_no_traceback(err)
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.h5").exists()


def test_info_on_wrong_files(env, tmp_path, capsys):
    files = _wrong_files(env, tmp_path)
    for case in ("truncated", "text", "empty", "missing"):
        code, out, err = run_cli(["info", files[case][0], "--json"], capsys)
        assert code in (4, 5), (case, code, err)  # a .pt is taken for a checkpoint
        json_error(out)
        assert_no_traceback(err)


def test_tokenizer_given_as_generator_and_back(env, tmp_path, capsys):
    code, out, err = run_cli(["sample", "-g", env["tok"], "-t", env["tok"], "--width", 32, "-o", tmp_path / "x.png", "--json"], capsys)
    assert code == 4 and "'tokenizer' checkpoint" in json_error(out)["message"], err
    code, out, err = run_cli(["sample", "-g", env["gen"], "-t", env["gen"], "--width", 32, "-o", tmp_path / "x.png", "--json"], capsys)
    assert code == 4 and "'generator' checkpoint" in json_error(out)["message"], err
    code, out, err = run_cli(["tokenize", "--data", env["data"], "--out", tmp_path / "x.h5", "--tokenizer", env["gen"], "--json"], capsys)
    assert code == 4 and "'generator' checkpoint" in json_error(out)["message"], err


def test_official_release_file_needs_convert(env, official_dir, capsys, tmp_path):
    """A genuine official release file (argparse.Namespace inside) loads weights-only for info/convert,
    and is pointed at `eqimg convert official` when given to sample."""
    rel = official_dir / "release_generator.pth"
    code, out, err = run_cli(["info", rel, "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["sample", "-g", rel, "-t", env["tok"], "--width", 32, "-o", tmp_path / "x.png", "--json"], capsys)
    assert code == 4
    doc = json_error(out)
    assert "convert official" in doc.get("hint", ""), doc
