"""Benchmarks for the sampling pipeline (sample + streaming decode) and for chunked decoding.

    python benchmarks/bench_pipeline.py [--quick]      time / peak memory against width (tiny preset)
    python benchmarks/bench_pipeline.py --seams        chunked-vs-whole decode error of a global-attention
                                                       (official-layout) decoder, for several overlaps

Each width runs in a fresh subprocess so that the RSS high-water mark belongs to that width alone.
Run with OMP_NUM_THREADS=1; numbers in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [256, 1024, 4096, 16384, 65536]


def _one_width(width: int, steps: int) -> dict:
    """Child process: sample + stream-decode one image with the tiny presets (untrained weights:
    speed and memory do not depend on the weights' values)."""
    import resource

    import torch

    from eqcli_core.generator import EquivariantGenerator, make_config
    from eqcli_core.pipeline import SampleConfig, generate_image
    from eqcli_core.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = build_tokenizer("tiny").eval()
    gen = EquivariantGenerator(make_config("tiny", token_dim=tok.token_dim, num_classes=4)).eval()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = generate_image(gen, tok, SampleConfig(width=width, num=1, seed=0, classes="0", cfg=3.0, steps=steps))
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"width": width, "columns": width // tok.column_width, "seconds": round(secs, 2),
            "columns_per_s": round(width // tok.column_width / secs, 1), "peak_rss_mb": round(peak, 1),
            "rss_before_mb": round(base, 1), "output_mb": round(res.images.nbytes / 2**20, 2)}


def bench_widths(widths: list[int], steps: int) -> list[dict]:
    rows = []
    for w in widths:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, "--child", str(w), "--steps", str(steps)], capture_output=True, text=True, env=env, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _bands(H: int) -> list:
    """Horizontal bands (a quarter of each photo's height) of scikit-image's photos, resized to H px."""
    import numpy as np
    from PIL import Image
    from skimage import data

    bands = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        a = getattr(data, name)()
        h = a.shape[0] // 4
        for i in range(4):
            band = a[i * h:(i + 1) * h]
            w = round(band.shape[1] * H / h)
            bands.append(np.asarray(Image.fromarray(band).resize((w, H), Image.LANCZOS)))
    return bands


def _train_briefly(tok, steps: int):
    """A few hundred reconstruction steps on photo crops, so the decoder behaves like a decoder
    (random weights exaggerate how much GroupNorm/attention statistics depend on the width)."""
    import numpy as np
    import torch

    photos = _bands(tok.height)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    tok.train()
    for _ in range(steps):
        batch = []
        for _ in range(8):
            p = photos[int(torch.randint(len(photos), (1,), generator=g))]
            x0 = int(torch.randint(p.shape[1] - 64 + 1, (1,), generator=g))
            batch.append(p[:, x0:x0 + 64])
        x = torch.tensor(np.stack(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1
        loss = (tok.decode(tok.encode(x)) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    return float(loss)


def bench_seams(overlaps: list[int], chunks: list[int], train_steps: int) -> dict:
    import numpy as np
    import torch

    from eqcli_core.decode import decode_chunked, seam_error, to_uint8
    from eqcli_core.pipeline import seam_ratio
    from eqcli_core.tokenizer.official import convert_release_tokenizer

    torch.set_num_threads(1)
    fixture = ROOT / "tests" / "fixtures" / "official" / "release_tokenizer.ckpt"
    report = {}
    for label, steps in (("random weights (fixture)", 0), (f"fixture architecture, {train_steps} training steps", train_steps)):
        tok = convert_release_tokenizer(fixture).eval()
        loss = _train_briefly(tok, steps) if steps else None
        img = np.concatenate(_bands(tok.height), axis=1)[:, :640]  # a 640-px panorama of photo bands
        x = torch.tensor(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            z = tok.encode(x)
            whole = tok.decode(z)
        recon = float(np.abs(to_uint8(whole)[0].astype(int) - img.astype(int)).mean())
        whole_ratio = seam_ratio(to_uint8(whole)[0], list(range(64, img.shape[1], 64)))  # baseline at the same cuts (chunk 16)
        rows = []
        for chunk in chunks:
            for ov in overlaps:
                for cf in (0, min(2, chunk)):
                    e = seam_error(tok, z, chunk=chunk, overlap=ov, crossfade=cf)
                    part = to_uint8(decode_chunked(tok, z, chunk=chunk, overlap=ov, crossfade=cf))[0]
                    cuts = list(range(chunk * tok.column_width, part.shape[1], chunk * tok.column_width))
                    e["recon_levels"] = float(np.abs(part.astype(int) - img.astype(int)).mean())  # vs the photo
                    e["window_seam_ratio"] = seam_ratio(part, cuts)  # edges at window boundaries?
                    rows.append({"chunk": chunk, "overlap": ov, "crossfade": cf, **{k: round(v, 4) for k, v in e.items()}})
                    print(label, json.dumps(rows[-1]), flush=True)
        report[label] = {"tokens": int(z.shape[1]), "train_loss": loss, "reconstruction_mean_levels": round(recon, 2),
                         "whole_decode_seam_ratio_at_64px_cuts": round(whole_ratio, 3), "rows": rows}
        print(label, json.dumps({k: v for k, v in report[label].items() if k != "rows"}), flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="stop at 4096 px")
    ap.add_argument("--steps", type=int, default=25, help="flow steps per token")
    ap.add_argument("--seams", action="store_true", help="measure chunked-decode seams of a global-attention decoder")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(_one_width(a.child, a.steps)))
        return
    if a.seams:
        res = bench_seams([0, 4, 8, 16, 32], [16, 32], a.train_steps)
    else:
        res = bench_widths([w for w in WIDTHS if not a.quick or w <= 4096], a.steps)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
