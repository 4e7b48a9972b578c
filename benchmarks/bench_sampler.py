"""Sampler benchmark: streaming (rolling KV cache) vs full recompute, against image width.

Same random weights for both; reports wall and CPU seconds (CPU time of the sampling thread: on
a shared machine it is far less noisy than wall time; with OMP_NUM_THREADS=1 all work is on that
thread), generated columns/s and ms per column (from CPU time on CPU), the flow head's share, the state the sampler keeps (KV cache vs token sequence) and the peak resident-memory
growth during the call (CUDA: max_memory_allocated; CPU: each measurement runs in a fresh
process and reports the growth of its peak RSS (ru_maxrss) over the model + warm-up baseline,
since the allocator keeps freed memory and a shared process would hide later peaks).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sampler.py --quick
    .venv/bin/python benchmarks/bench_sampler.py --preset tiny --widths 16,64,256 --batches 1,16 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import torch

from eqcli_core.device import pick_device
from eqcli_core.generator import EquivariantGenerator, make_config
from eqcli_core.sampling import sample_tokens, sample_tokens_recompute

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakMemory:
    """Peak memory growth (bytes) over a block: CUDA allocator stats, or RSS (polled + ru_maxrss)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self._stop = _rss(), threading.Event()
            self.max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._top = self.base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self._top = max(self._top, _rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            # ru_maxrss (KiB) also sees peaks shorter than the polling interval, once above the old peak
            max1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.peak = max(max(self._top, _rss()) - self.base, max1 - self.base if max1 > self.max0 else 0)


def build(preset: str, device) -> EquivariantGenerator:
    torch.manual_seed(0)
    model = EquivariantGenerator(make_config(preset, num_classes=10))
    with torch.no_grad():  # random weights (the head's output layer starts at zero)
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(device).eval()


def run_one(model, method: str, batch: int, width: int, cfg: float, device) -> dict:
    sampler = sample_tokens if method == "streaming" else sample_tokens_recompute
    labels = torch.arange(batch, device=device) % model.config.num_classes
    head_time = [0.0]
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    inner = model.head.sample

    def timed_head(*a, **k):  # head share of the time
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        out = inner(*a, **k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        head_time[0] += clock() - t
        return out

    model.head.sample = timed_head
    try:
        with PeakMemory(device) as mem:
            t0, c0 = time.perf_counter(), time.thread_time()
            sampler(model, labels, width, cfg=cfg, generator=torch.Generator().manual_seed(0))
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        del model.head.sample
    secs = wall if device.type == "cuda" else cpu
    d, L = model.config.width, model.config.depth
    rows = 2 * batch if cfg != 1.0 else batch
    if method == "streaming":  # K and V of `window` positions per layer
        state = 2 * L * rows * min(width, model.config.window or width) * d * 4
    else:  # the token sequence plus one layer's activations over the whole sequence
        state = rows * width * (model.config.token_dim + d) * 4
    return {"method": method, "batch": batch, "width_columns": width, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4),
            "columns_per_s": round(width / secs, 2), "image_columns_per_s": round(batch * width / secs, 2),
            "ms_per_column": round(1000 * secs / width, 3), "head_share": round(head_time[0] / secs, 3),
            "state_bytes": state, "peak_mem_growth_bytes": int(mem.peak)}


def measure(args, method, batch, width, model, device) -> dict:
    if device.type == "cuda":
        return run_one(model, method, batch, width, args.cfg, device)
    cmd = [sys.executable, __file__, "--one", f"{method},{batch},{width}", "--preset", args.preset, "--cfg", str(args.cfg),
           "--device", args.device] + (["--steps", str(args.steps)] if args.steps else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line[4:] for line in out.splitlines() if line.startswith("ROW ")))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--widths", default="16,32,64,128,256", help="columns, comma separated")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=None, help="head Euler steps (default: the preset's)")
    ap.add_argument("--methods", default="streaming,recompute")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="widths 8,32,64, batches 1,16, 5 head steps")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: "method,batch,width" in this process
    args = ap.parse_args(argv)
    if args.quick:
        args.widths, args.steps = "8,32,64", args.steps or 5
    device = pick_device(args.device)
    model = build(args.preset, device)
    if args.steps:
        model.config.sampling_steps = args.steps
    print(f"# preset={args.preset} params={model.num_params()} cfg={args.cfg} steps={model.config.sampling_steps} "
          f"device={device} threads={torch.get_num_threads()}")
    sample_tokens(model, torch.zeros(1, dtype=torch.long, device=device), 4)  # warm-up
    if args.one:
        method, batch, width = args.one.split(",")
        print("ROW " + json.dumps(run_one(model, method, int(batch), int(width), args.cfg, device)))
        return []
    rows = []
    hdr = f"{'method':>10} {'B':>3} {'cols':>5} {'wall s':>8} {'cpu s':>8} {'cols/s':>8} {'ms/col':>8} {'head%':>6} {'state KiB':>10} {'peak MiB':>9}"
    print(hdr)
    for batch in [int(b) for b in args.batches.split(",")]:
        for width in [int(w) for w in args.widths.split(",")]:
            for method in args.methods.split(","):
                r = measure(args, method, batch, width, model, device)
                rows.append(r)
                print(f"{method:>10} {batch:>3} {width:>5} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {r['columns_per_s']:>8.1f} {r['ms_per_column']:>8.2f} "
                      f"{100 * r['head_share']:>5.0f}% {r['state_bytes'] / 1024:>10.1f} {r['peak_mem_growth_bytes'] / 2**20:>9.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
