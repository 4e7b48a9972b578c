"""Landscape generator throughput: images/s at 128x128 (render only, and render + PNG encode),
per class, plus the cost of wide ground-truth renders.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_landscapes.py [--n 20] [--json]

Reports wall-clock and process CPU time: on a shared machine the CPU figure is the honest
single-process speed; wall-clock includes waiting for a core.
"""
from __future__ import annotations

import argparse
import io
import json
import time

from PIL import Image

from eqcli_core.data.landscapes import LANDSCAPE_CLASSES, image_seed, render_landscape


def _timed(fn, n):
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="images per class")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    h = w = args.size
    rows = {}
    tot_wall = tot_cpu = tot_wall_png = tot_cpu_png = 0.0
    for cls in LANDSCAPE_CLASSES:
        render_landscape(cls, h, w, 0)  # warm-up
        wall, cpu = _timed(lambda i: render_landscape(cls, h, w, image_seed(0, cls, i)), args.n)

        def with_png(i):
            buf = io.BytesIO()
            Image.fromarray(render_landscape(cls, h, w, image_seed(0, cls, i))).save(buf, format="PNG", compress_level=1)

        wall_p, cpu_p = _timed(with_png, args.n)
        rows[cls] = {"img_per_s_cpu": args.n / cpu, "img_per_s_wall": args.n / wall, "img_per_s_png_cpu": args.n / cpu_p}
        tot_wall, tot_cpu, tot_wall_png, tot_cpu_png = tot_wall + wall, tot_cpu + cpu, tot_wall_png + wall_p, tot_cpu_png + cpu_p
    n_all = args.n * len(LANDSCAPE_CLASSES)
    wide = {}
    for width in (4096, 16384):
        wall, cpu = _timed(lambda i: render_landscape(LANDSCAPE_CLASSES[i], 128, width, 1), len(LANDSCAPE_CLASSES))
        wide[f"128x{width}_s_per_img_cpu"] = cpu / len(LANDSCAPE_CLASSES)
    doc = {
        "size": f"{h}x{w}", "per_class": rows,
        "all_img_per_s_cpu": n_all / tot_cpu, "all_img_per_s_wall": n_all / tot_wall,
        "all_img_per_s_png_cpu": n_all / tot_cpu_png, "all_img_per_s_png_wall": n_all / tot_wall_png,
        **wide,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"landscapes {h}x{w}: {doc['all_img_per_s_cpu']:.0f} img/s render (CPU time), "
          f"{doc['all_img_per_s_png_cpu']:.0f} img/s render+PNG; wall {doc['all_img_per_s_wall']:.0f} / {doc['all_img_per_s_png_wall']:.0f}")
    for cls, r in rows.items():
        print(f"  {cls:12s} {r['img_per_s_cpu']:7.0f} img/s   +png {r['img_per_s_png_cpu']:7.0f} img/s")
    for k, v in wide.items():
        print(f"  {k}: {v:.2f} s")


if __name__ == "__main__":
    main()
