"""Tokenizer training throughput on this machine (images/s per optimizer step).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tokenizer.py --threads 1 --batch 16
Prints one JSON line per setting: the tiny preset with and without the perceptual term.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from eqcli_core.tokenizer.losses import PerceptualLoss, latent_penalty, reconstruction_loss
from eqcli_core.tokenizer.model import build_tokenizer


def bench(preset: str, batch: int, steps: int, perceptual: bool, size: int) -> dict:
    model = build_tokenizer(preset)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    percep = None
    if perceptual:
        from eqcli_core.features import load_feature_network

        percep = PerceptualLoss(load_feature_network("cpu"), size)
    h = model.height
    x = torch.rand(batch, 3, h, h) * 2 - 1
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        recon, mean, logvar = model(x)
        loss = reconstruction_loss(recon, x) + 1e-4 * latent_penalty(mean, logvar, False)
        if percep is not None:
            loss = loss + 0.1 * percep(recon, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # skip warm-up steps
            times.append(time.perf_counter() - t)
    dt = sorted(times)[len(times) // 2]
    return {"preset": preset, "batch": batch, "perceptual": perceptual, "perceptual_size": size if perceptual else None,
            "threads": torch.get_num_threads(), "step_s": round(dt, 4), "images_per_s": round(batch / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="32,64", help="perceptual input heights to try")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(bench(args.preset, args.batch, args.steps, False, 0)))
    for s in [int(v) for v in args.sizes.split(",") if v]:
        print(json.dumps(bench(args.preset, args.batch, args.steps, True, s)))


if __name__ == "__main__":
    main()
