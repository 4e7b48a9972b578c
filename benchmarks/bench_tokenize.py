"""Tokenize throughput (images/s, columns/s) and LatentDataset crop reads per second.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tokenize.py --n 64 --batch 16

Uses the tiny tokenizer preset with random weights (speed does not depend on the weights) and
landscape panoramas of mixed widths (1x, 1.5x and 2x the height). Each image is encoded twice
(it and its mirror image). Compares batching images of equal width (the default) with --batch 1,
and reports the file size per image. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eqcli_core.latents import LatentDataset, tokenize_folder  # noqa: E402


def make_images(root: Path, n: int, height: int) -> None:
    from eqcli_core.data.landscapes import LANDSCAPE_CLASSES, render_landscape

    widths = [height, height * 3 // 2, height * 2]
    for i in range(n):
        cls = LANDSCAPE_CLASSES[i % 3]
        (root / cls).mkdir(parents=True, exist_ok=True)
        img = render_landscape(cls, height, widths[i % 3], seed=i)
        Image.fromarray(img).save(root / cls / f"{i:04d}.png", compress_level=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="images")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from eqcli_core.tokenizer import TOKENIZER_PRESETS, build_tokenizer

    tok = build_tokenizer(TOKENIZER_PRESETS["tiny"]).eval()
    doc = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch threads {args.threads}", 
           "tokenizer": "tiny preset (random weights)", "height": tok.height, "column_width": tok.column_width, "images": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "data", args.n, tok.height)
        with torch.no_grad():  # warm-up, so the first timed run does not pay for allocator/first-call costs
            tok.encode(torch.zeros(2, 3, tok.height, tok.height))
        for name, batch in (("batched", args.batch), ("batch1", 1)):
            out = tmp / f"{name}.h5"
            t0, c0 = time.perf_counter(), time.process_time()
            res = tokenize_folder(tok, tmp / "data", out, dtype=args.dtype, batch_size=batch, commit_every=32)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            doc[name] = {"batch": batch, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "images_per_s_wall": round(args.n / wall, 2),
                         "images_per_s_cpu": round(args.n / cpu, 2), "columns_per_s_cpu": round(res.columns / cpu, 1),
                         "columns": res.columns, "file_kib_per_image": round(out.stat().st_size / 1024 / args.n, 2)}
        ds = LatentDataset(tmp / "batched.h5", 16, split="all")
        t0 = time.perf_counter()
        reps = 0
        while time.perf_counter() - t0 < 2.0:
            ds.set_epoch(reps)
            for i in range(len(ds)):
                ds[i]
            reps += 1
        doc["dataset_crops_per_s"] = round(reps * len(ds) / (time.perf_counter() - t0), 1)
        ds.close()
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
