"""Process-group plumbing for data-parallel training.

Two ways in:
- `torchrun --nproc_per_node=8 -m eqcli train ...`: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK /
  MASTER_ADDR / MASTER_PORT; `setup()` reads them.
- `--nproc N` (one machine): `spawn_local()` makes the calling process rank 0 and starts N-1 more
  with multiprocessing (spawn), so progress output, signals and the return value stay with the
  caller.
Backend: nccl on CUDA, gloo otherwise. Rank 0 alone writes files.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from .errors import EqimgError, UsageError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_type: str, *, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment (a no-op for a single process)."""
    world = env_world()
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if dist.is_initialized():
        return DistInfo(rank, world, local, False)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, True)


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    fn(*args)


def spawn_local(nproc: int, fn: Callable, args: tuple, child_args: tuple | None = None):
    """Run fn(*args) here as rank 0 and fn(*child_args) in `nproc - 1` spawned ranks; returns rank 0's result.

    `child_args` must be picklable (no reporters or callbacks); it defaults to `args`."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    if env_world() > 1:
        raise UsageError("--nproc cannot be combined with torchrun (WORLD_SIZE is already set); drop --nproc")
    if nproc == 1:
        return fn(*args)
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_child, args=(r, nproc, port, fn, args if child_args is None else child_args), daemon=True) for r in range(1, nproc)]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    for c in children:
        c.start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    try:
        result = fn(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for c in children:
            c.join(timeout=60)
            if c.is_alive():
                c.terminate()
    failed = [c.exitcode for c in children if c.exitcode not in (0, None)]
    if failed:
        raise EqimgError(f"{len(failed)} of {nproc - 1} worker processes failed (exit codes {failed}); see their messages above")
    return result
