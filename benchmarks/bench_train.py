"""Generator training throughput: pre-tokenized latents (eqimg) vs encoding images every batch (official).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py [--batch 16] [--steps 12] [--json]

Both modes train the same `tiny` generator (AdamW, grad clip, EMA) for the same number of steps
at the same batch size; each runs in its own process so that peak RSS is its own.
- latents:  `train_generator` reading random crops from an HDF5 latent file (the eqimg way).
- official: random square images -> tokenizer encoder (tiny preset, or --tokenizer paper) (no grad) on every batch -> crop of
  train_length columns -> the same generator step; what the official script does per batch.
Tokens/s counts generator training tokens (batch * train_length per step), measured after
`--warmup-steps` steps. The ratio is what pre-tokenizing buys.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def write_latents(path: Path, token_dim: int, n_images: int = 256, seed: int = 0) -> Path:
    """Random latents in the eqimg-latents layout (the speed does not depend on the values)."""
    import h5py

    rng = np.random.default_rng(seed)
    widths = rng.integers(16, 33, n_images)
    tokens = rng.standard_normal((int(widths.sum()), token_dim)).astype(np.float16)
    with h5py.File(path, "w") as f:
        f["tokens"], f["tokens_mirror"] = tokens, tokens[::-1].copy()
        f["offsets"] = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        f["widths"], f["labels"] = widths.astype(np.int64), (np.arange(n_images) % 10).astype(np.int64)
        f.create_dataset("paths", data=[f"c/{i}.png" for i in range(n_images)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=[f"class{i}" for i in range(10)], dtype=h5py.string_dtype())
        f.attrs.update(format="eqimg-latents", format_version=1, complete=True, token_dim=token_dim, column_width=8,
                       height=128, tokenizer_fingerprint="bench", tokenizer_config="{}", dtype="float16",
                       token_std=1.0, token_mean=0.0, all_finite=True)
    return path


def run_latents(args) -> dict:
    from eqcli_core.training import TrainConfig, train_generator

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    lat = write_latents(tmp / "lat.h5", token_dim=32)
    stamps: list[float] = []
    cfg = TrainConfig(latents=str(lat), out=str(tmp / "run"), preset="tiny", steps=args.steps, batch=args.batch,
                      micro_batch=args.batch, lr=1e-4, ema=0.999, val_every=0, val_batches=1, ckpt_every=10**9,
                      device="cpu", log_every=10**9)
    res = train_generator(cfg, after_step=lambda s, m: stamps.append((time.perf_counter(), time.process_time())) and None)
    return {"mode": "latents", **_rates(stamps, args, 16), "params": res["params"]}


def _rates(stamps: list, args, length: int) -> dict:
    """Wall and CPU seconds per step after the warm-up steps (CPU time is robust to a shared machine)."""
    timed = stamps[args.warmup_steps - 1:]
    wall = (timed[-1][0] - timed[0][0]) / (len(timed) - 1)
    cpu = (timed[-1][1] - timed[0][1]) / (len(timed) - 1)
    return {"s_per_step": wall, "cpu_s_per_step": cpu, "tokens_per_s": args.batch * length / wall,
            "tokens_per_cpu_s": args.batch * length / cpu}


def run_official(args) -> dict:
    from eqcli_core.ema import EMA
    from eqcli_core.generator import make_config
    from eqcli_core.tokenizer import TOKENIZER_PRESETS, build_tokenizer
    from eqcli_core.training import _build_generator, param_groups

    torch.manual_seed(0)
    tok = build_tokenizer(TOKENIZER_PRESETS[args.tokenizer]).eval()
    size = tok.height  # square images at the tokenizer's height
    gen = _build_generator(make_config("tiny", token_dim=tok.token_dim, num_classes=10)).train()
    opt = torch.optim.AdamW(param_groups(gen, 0.02), lr=1e-4, betas=(0.9, 0.95))
    ema = EMA(gen, 0.999)
    L = gen.config.train_length
    stamps = []
    for step in range(args.steps):
        images = torch.rand(args.batch, 3, size, size) * 2 - 1  # a decoded, resized batch
        labels = torch.randint(0, 10, (args.batch,))
        with torch.no_grad():
            z = tok.encode(images)  # (B, 16, C): the work the latent file saves
        start = int(torch.randint(0, z.shape[1] - L + 1, (1,)))
        loss = gen.loss(z[:, start:start + L], labels)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 3.0)
        opt.step()
        ema.update(gen)
        stamps.append((time.perf_counter(), time.process_time()))
    return {"mode": f"official ({args.tokenizer} tokenizer, {size} px)", **_rates(stamps, args, L),
            "params": sum(p.numel() for p in gen.parameters()), "tokenizer_params": sum(p.numel() for p in tok.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--mode", choices=["latents", "official"], help="run one mode in this process (internal)")
    ap.add_argument("--tokenizer", default="tiny", help="tokenizer preset of the official mode (tiny or paper)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.mode:
        res = (run_latents if args.mode == "latents" else run_official)(args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["threads"] = torch.get_num_threads()
        print(json.dumps(res))
        return
    results = []
    for mode in ("latents", "official"):
        cmd = [sys.executable, __file__, "--mode", mode, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup-steps", str(args.warmup_steps), "--tokenizer", args.tokenizer]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    doc = {"batch": args.batch, "steps": args.steps, "results": results,
           "speedup_latents_vs_official": results[0]["tokens_per_s"] / results[1]["tokens_per_s"],
           "cpu_speedup_latents_vs_official": results[0]["tokens_per_cpu_s"] / results[1]["tokens_per_cpu_s"]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"tiny generator, batch {args.batch}, {args.steps} steps ({args.warmup_steps} warm-up), CPU threads {results[0]['threads']}")
    print(f"{'mode':36s} {'wall s/step':>11s} {'CPU s/step':>10s} {'tokens/s':>9s} {'tokens/CPU-s':>12s} {'peak RSS MB':>12s}")
    for r in results:
        print(f"{r['mode']:36s} {r['s_per_step']:11.3f} {r['cpu_s_per_step']:10.3f} {r['tokens_per_s']:9.1f} "
              f"{r['tokens_per_cpu_s']:12.1f} {r['peak_rss_mb']:12.0f}")
    print(f"pre-tokenized latents: {doc['speedup_latents_vs_official']:.2f}x the wall-clock and "
          f"{doc['cpu_speedup_latents_vs_official']:.2f}x the CPU-time throughput of encoding every batch")


if __name__ == "__main__":
    main()
