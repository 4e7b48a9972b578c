"""Shared helpers for the fault suite (tests/test_faults_*.py); holds no tests itself.

The suite drives the real CLI the way a user would: in-process through `eqcli.main.main`
(which maps EqimgError to exit codes) or as a subprocess where exit codes and stdout bytes matter.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

EQIMG = [sys.executable, "-m", "eqcli"]
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EQIMG_NO_BUNDLED_DOWNLOAD": "1",
           "COLUMNS": "200", "NO_COLOR": "1"}


def run_cli(args, capsys=None) -> tuple[int, str, str]:
    """Run `eqimg ARGS` in-process; returns (exit code, stdout, stderr)."""
    from eqcli.main import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err


def run_sub(args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run `python -m eqcli ARGS` as a subprocess (exact exit code and stdout bytes)."""
    return subprocess.run(EQIMG + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=SUB_ENV, cwd=kw.pop("cwd", None), **kw)


def json_error(stdout: str) -> dict:
    """stdout must hold exactly one JSON error document."""
    doc = json.loads(stdout)
    assert {"error", "message", "exit_code"} <= set(doc), doc
    return doc


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback (most recent call last)" not in stderr, stderr[-3000:]


# ----------------------------------------------------------------------------- tiny models

# `eqimg train --set` overrides for a one-block generator that trains in milliseconds per step
TINY_GEN_SET = '{"depth": 1, "width": 32, "num_heads": 2, "head_width": 32, "head_depth": 1, "train_length": 8}'


def models_images_latents(d: Path, latents_name: str) -> dict:
    """Tiny models, 4 small images in two classes, and their latent file `d/latents_name`."""
    from eqcli_core.latents import tokenize_folder
    from eqcli_core.tokenizer import load_tokenizer

    m = save_tiny_models(d / "models")
    data = write_images(d / "data", n=4, h=32, w=64, classes=("mountains", "coast"))
    tokenize_folder(load_tokenizer(m["tok"]), data, d / latents_name, batch_size=4)
    return {"d": d, "data": data, **m}

def save_tiny_models(d: Path) -> dict:
    """A tiny tokenizer (32 px tall, 4-px columns) and a matching tiny generator on disk."""
    from eqcli_core.generator import save_generator
    from eqcli_core.tokenizer import save_tokenizer
    from test_pipeline import NAMES, tiny_generator, tiny_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    fp = save_tokenizer(tiny_tokenizer(), d / "tok.pt")
    save_generator(tiny_generator(), d / "gen.pt", class_names=NAMES, meta={"latent_fingerprint": fp})
    return {"tok": d / "tok.pt", "gen": d / "gen.pt", "fingerprint": fp, "names": NAMES}


def write_images(root: Path, n: int = 4, h: int = 32, w: int = 64, classes=("a", "b"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return root


# ----------------------------------------------------------------------------- hostile files

class _Payload:
    """Unpickling this runs a shell command (creates the marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpenPayload:
    """Unpickling this creates the marker file through builtins.open."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.marker, "w"))


def write_malicious(path: Path, marker: Path, style: str = "torch") -> Path:
    """A checkpoint-looking file whose unpickling would create `marker`.

    style "torch": torch.save zip archive (the payload hides inside a plausible generator dict);
    "pickle": a bare pickle stream (legacy format); "open": zip archive using builtins.open."""
    evil = _OpenPayload(marker) if style == "open" else _Payload(marker)
    doc = {"format": "eqimg", "format_version": 1, "kind": "generator", "config": {"x": evil},
           "state_dict": {"w": torch.zeros(2)}, "model_ema": {"w": torch.zeros(2)}, "args": evil}
    if style == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(doc, fh, protocol=2)
    else:
        torch.save(doc, path)
    return path
