"""Generator training from pre-tokenized latents: one process, or data-parallel (DDP).

    train_generator(TrainConfig(latents="data.h5", out="runs/a", preset="tiny", steps=1000))

What a step does (global batch B, world size W, micro-batch m):
  1. The global batch is the next B items of an endless stream of per-epoch permutations of the
     training split (epoch e shuffled by a generator seeded with (seed, e)). Rank r takes the
     r-th slice of B/W items (DistributedSampler-style), fetched through LatentDataset, which
     draws the crop and mirror deterministically from (seed, epoch, index).
  2. The rank's slice is cut into micro-batches of m items. Before each micro-batch's forward the
     global torch RNG is seeded with f(seed, step, global micro-batch index); the model's loss
     draws its noise, t, label dropout and RoPE offset from that stream. So the randomness of a
     sample does not depend on how the batch is split over ranks: W=1 and W=2 give the same
     losses (up to float summation order), and resume is exact without replaying anything.
  3. Gradients are averaged (DDP all-reduce over ranks, mean over micro-batches), clipped to
     `grad_clip`, AdamW steps, the EMA follows.
NaN/inf loss or gradient norm: TrainingDivergedError before the optimizer step; the last
checkpoint on disk is untouched. SIGINT/SIGTERM: the current step finishes, a checkpoint is
written, and the summary says `stopped: "SIGINT"` / `"SIGTERM"` (the CLI exits 130 / 143).

Files in `out`: train_state.pt (kind generator-train-state, rewritten atomically),
generator.pt (kind generator, EMA weights, written when the run completes), log.jsonl.
"""
from __future__ import annotations

import copy
import json
import math
import os
import resource
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .device import autocast, pick_device
from .distributed import DistInfo, all_reduce_sum, setup, spawn_local, teardown
from .ema import EMA
from .errors import CheckpointError, EqimgError, LatentFileError, ResourceError, TrainingDivergedError, UsageError
from .io import OutputLock, atomic_path, config_from_dict, load_checkpoint, save_checkpoint
from .lr import SCHEDULES, lr_at, scaled_lr
from .progress import SILENT, Reporter

STATE_NAME = "train_state.pt"
GENERATOR_NAME = "generator.pt"
LOG_NAME = "log.jsonl"


@dataclass
class TrainConfig:
    latents: str = ""  # HDF5 latent file (eqimg tokenize)
    out: str = ""  # run directory
    preset: str = "tiny"  # generator preset (eqcli_core.generator.GENERATOR_PRESETS)
    model_overrides: dict = field(default_factory=dict)  # extra GeneratorConfig fields, e.g. {"depth": 2}
    # length of the run
    steps: int | None = None  # total optimizer steps of the run (counted across resumes)
    minutes: float | None = None  # wall-clock budget of this invocation
    # optimisation (official recipe: AdamW(0.9, 0.95), wd 0.02, blr 1e-4 scaled by batch/256, clip 3.0)
    batch: int = 256  # global batch (all ranks together)
    micro_batch: int = 32  # samples per forward call and per RNG seed; must divide batch / world
    base_lr: float = 1e-4  # lr = base_lr * batch / 256 ...
    lr: float | None = None  # ... unless an absolute lr is given
    min_lr: float = 0.0
    schedule: str = "constant"  # constant | cosine (cosine needs steps)
    warmup: int = 0  # linear warmup steps
    weight_decay: float = 0.02  # not applied to norms, biases, embeddings
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 3.0  # max global grad norm (0 disables)
    ema: float = 0.9999
    ema_warmup: bool = True  # effective rate min(ema, (1+n)/(10+n)); see ema.py
    loss_mask: str | None = None  # positions that get a loss: even | odd | first-half | second-half | "0,2,4"
    seed: int = 0
    val_fraction: float = 0.05
    mirror: bool = True
    # machinery (changing these on resume is allowed)
    device: str = "auto"
    compile: bool = False
    grad_checkpointing: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU holds anyway)
    nproc: int = 1  # local processes to spawn (alternative to torchrun)
    workers: int = 0  # DataLoader worker processes
    log_every: int = 10
    val_every: int = 200  # steps between validations (0: only at the end)
    val_batches: int = 4  # validation micro-batches (fixed items, fixed noise)
    ckpt_every: int = 500  # steps between checkpoints
    ckpt_minutes: float = 30.0  # also checkpoint when this much time passed since the last one
    resume: bool = False


# Fields that may change when resuming; all others define the trajectory and must match.
_MACHINERY = {"latents", "out", "steps", "minutes", "device", "compile", "grad_checkpointing", "deterministic",
              "nproc", "workers", "log_every", "val_every", "val_batches", "ckpt_every", "ckpt_minutes", "resume"}


# ----------------------------------------------------------------------------- config helpers

def train_config_from_args(*, latents: str, out: str, resume: bool = False, **given) -> TrainConfig:
    """TrainConfig from CLI-style arguments where None means "not given".

    With `resume` and an existing run in `out`, unspecified values come from the saved run, so
    `eqimg train --latents X --out RUN --resume` continues with the original settings."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    base = TrainConfig()
    state = Path(out) / STATE_NAME
    if resume and state.exists():
        doc = load_checkpoint(state, kind="generator-train-state")
        base = config_from_dict(TrainConfig, doc["train_config"])
        # the step target carries over; a time budget belongs to one invocation unless the run has no step target
        if "minutes" not in given and base.steps is not None:
            base = replace(base, minutes=None)
        # how to run belongs to this machine, not to the run: defaults unless given again
        d = TrainConfig()
        base = replace(base, nproc=d.nproc, device=d.device, workers=d.workers, compile=d.compile)
    return replace(base, latents=str(latents), out=str(out), resume=resume, **given)


def parse_loss_mask(spec: str | None, length: int) -> torch.Tensor | None:
    """(length,) bool mask of positions that receive a loss, or None for all of them."""
    if spec is None or spec in ("", "all"):
        return None
    pos = torch.arange(length)
    named = {"even": pos % 2 == 0, "odd": pos % 2 == 1, "first-half": pos < length // 2, "second-half": pos >= length // 2}
    if spec in named:
        mask = named[spec]
    else:
        try:
            idx = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise UsageError(f"--loss-mask {spec!r}: use even, odd, first-half, second-half or a comma list like 0,2,4") from None
        bad = [i for i in idx if not 0 <= i < length]
        if bad or not idx:
            raise UsageError(f"--loss-mask {spec!r}: positions must lie in 0..{length - 1} (the trained length)")
        mask = torch.zeros(length, dtype=torch.bool)
        mask[idx] = True
    if not mask.any():
        raise UsageError(f"--loss-mask {spec!r} selects no position of the trained length {length}")
    return mask


def _check_config(c: TrainConfig, world: int) -> None:
    if not c.latents:
        raise UsageError("no latent file given (--latents)")
    if not Path(c.latents).is_file():  # a latent-file problem: exit 5 (docs/cli.md), like a damaged one
        what = "is a directory, not a latent file" if Path(c.latents).is_dir() else "not found"
        raise LatentFileError(f"latent file {what}: {c.latents}", hint="make one with `eqimg tokenize --data DIR --out FILE.h5`")
    if not os.access(c.latents, os.R_OK):
        raise LatentFileError(f"latent file is not readable (permission denied): {c.latents}")
    if not c.out:
        raise UsageError("no output directory given (--out)")
    if c.steps is None and c.minutes is None:
        raise UsageError("say how long to train: --steps N and/or --minutes M")
    if c.steps is not None and c.steps < 1:
        raise UsageError(f"--steps must be positive, got {c.steps}")
    if c.minutes is not None and c.minutes <= 0:
        raise UsageError(f"--minutes must be positive, got {c.minutes}")
    if c.schedule not in SCHEDULES:
        raise UsageError(f"--schedule {c.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if c.schedule == "cosine" and c.steps is None:
        raise UsageError("the cosine schedule decays over a known length: give --steps")
    if c.batch < 1 or c.micro_batch < 1:
        raise UsageError("--batch and --micro-batch must be positive")
    if c.batch % world:
        raise UsageError(f"--batch {c.batch} is not divisible by the {world} processes")
    micro = min(c.micro_batch, c.batch)
    if (c.batch // world) % micro:
        raise UsageError(f"the per-process batch {c.batch // world} (= {c.batch} / {world} processes) is not a multiple of "
                         f"--micro-batch {micro}; pick a micro-batch that divides it (e.g. {math.gcd(c.batch // world, micro)})")
    if not 0.0 <= c.ema < 1.0:
        raise UsageError(f"--ema must be in [0, 1), got {c.ema}")
    if c.lr is not None and c.lr <= 0 or c.base_lr <= 0:
        raise UsageError("the learning rate must be positive")
    if c.grad_clip < 0:
        raise UsageError("--grad-clip must be >= 0")
    if c.log_every < 1 or c.ckpt_every < 1 or c.val_every < 0 or c.val_batches < 1 or c.ckpt_minutes <= 0 or c.workers < 0:
        raise UsageError("--log-every, --checkpoint-every and --val-batches must be >= 1, --val-every >= 0, "
                         "--checkpoint-minutes > 0, --workers >= 0")
    if not 0.0 <= c.val_fraction < 1.0:
        raise UsageError("--val-fraction must be in [0, 1)")


def peak_lr(c: TrainConfig) -> float:
    """The lr after warmup: absolute --lr, else base_lr * global batch / 256 (official scaling rule)."""
    return c.lr if c.lr is not None else scaled_lr(c.base_lr, c.batch)


# ----------------------------------------------------------------------------- data

class _EpochItems(torch.utils.data.Dataset):
    """dataset[(epoch, index)]: sets the epoch (crop and mirror draws depend on it) and reads the item."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, index = key
        self.ds.set_epoch(epoch)
        tokens, label = self.ds[index]
        return torch.as_tensor(tokens, dtype=torch.float32), int(label)


class _RankBatches(torch.utils.data.Sampler):
    """Endless per-step index lists: this rank's slice of each global batch, from `start_step` on."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, start_step: int):
        self.n, self.batch, self.per_rank, self.rank, self.seed, self.start = n, batch, batch // world, rank, seed, start_step
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch, 0x5EED)))}
        return self._perms[epoch]

    def __iter__(self):
        step = self.start
        while True:
            first = step * self.batch + self.rank * self.per_rank
            yield [(k // self.n, int(self._perm(k // self.n)[k % self.n])) for k in range(first, first + self.per_rank)]
            step += 1


def data_position(step: int, batch: int, n: int) -> dict:
    """Where the item stream stands before `step`: epoch and index within that epoch's permutation."""
    return {"epoch": step * batch // n, "index": step * batch % n}


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so nearby (seed, step, chunk) give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------- model helpers

class _LossModule(nn.Module):
    """forward = model.loss, so DDP (which hooks forward) and torch.compile see the training graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens, labels, loss_mask=None):
        return self.model.loss(tokens, labels, loss_mask=loss_mask)["loss"]


_NO_DECAY_NAMES = ("embed", "norm", "null_class", "class_pos", "pos")  # learned tokens and positions


def _latent_scale(path: str) -> float:
    """1 / std of the stored latents, so the generator sees unit-variance tokens (the official
    `vae_norm` plays this role); 1.0 when the file does not record its std."""
    from .latents import open_latents

    with open_latents(path) as lf:
        std = lf.attrs.get("token_std")
    try:
        std = float(std)
    except (TypeError, ValueError):
        return 1.0
    return 1.0 / std if math.isfinite(std) and std > 1e-8 else 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, embeddings or learned tokens (ndim < 2)."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lname = name.lower()
        skip = (p.ndim < 2 or id(p) in embedding_params or any(w in lname for w in _NO_DECAY_NAMES))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], *, seed: int, device: torch.device) -> dict:
    """Mean loss and per-position loss (the paper's Fig. 3 quantity) on fixed batches with fixed noise.

    Runs in eval mode under a forked RNG seeded per batch, so numbers are comparable across
    intervals and the training RNG stream is not disturbed."""
    was_training = model.training
    model.eval()
    total, per_pos, count = 0.0, None, 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for i, (x, y) in enumerate(batches):
            torch.manual_seed(_mix(seed, i, 0x7A1))
            with autocast(device):
                out = model.loss(x.to(device), y.to(device))
            b = x.shape[0]
            total += float(out["loss"]) * b
            pp = out["per_position"].detach().float().cpu() * b
            per_pos = pp if per_pos is None else per_pos + pp
            count += b
    model.train(was_training)
    return {"val_loss": total / count, "val_per_position": (per_pos / count).tolist()}


# ----------------------------------------------------------------------------- signals

class _StopFlag:
    """SIGINT/SIGTERM set a flag (the step finishes, a checkpoint is written); a second SIGINT aborts."""

    def __init__(self):
        self.reason: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        self.reason = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- entry point

def train_generator(config: TrainConfig, *, reporter: Reporter = SILENT,
                    before_step: Callable[[int, nn.Module], None] | None = None,
                    after_step: Callable[[int, dict], bool | None] | None = None) -> dict:
    """Train (or resume) a generator; returns a summary dict (rank 0's).

    Hooks (rank 0 / single process only): `before_step(step, model)` runs before each step;
    `after_step(step, metrics)` after it, and may return True to stop cleanly (checkpoint, no
    generator.pt), like a signal. Under torchrun every rank calls this function."""
    from .distributed import env_world

    world = config.nproc if config.nproc > 1 else env_world()
    _check_config(config, world)
    if config.nproc > 1:
        return spawn_local(config.nproc, _run, (config, reporter, before_step, after_step), (config,))
    return _run(config, reporter, before_step, after_step)


def _run(config: TrainConfig, reporter: Reporter = SILENT, before_step=None, after_step=None) -> dict:
    device = pick_device(config.device)
    info = setup(device.type)
    if device.type == "cuda" and info.active:
        device = torch.device("cuda", info.local_rank)
    try:
        lock, lock_error = None, None
        ok = torch.ones(1, device=device)
        if info.is_main:
            try:
                lock = OutputLock(config.out).__enter__()
            except EqimgError as exc:
                if not info.active:
                    raise
                ok.zero_()
                lock_error = exc
        if info.active:  # everyone learns whether rank 0 could take the lock
            if all_reduce_sum(ok, info).item() < info.world:
                if lock_error is not None:
                    raise lock_error
                return {}
        try:
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), _deterministic(config.deterministic, device):
                return _Trainer(config, device, info, reporter, before_step, after_step).run()
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
    finally:
        teardown(info)


@contextmanager
def _deterministic(on: bool, device: torch.device):
    if not on:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def estimate_train_bytes(gcfg, per_rank: int, micro: int) -> int:
    """Rough peak bytes of one step: activations kept for backward of one micro-batch (transformer:
    micro x (train_length + class_tokens) x width x depth x ~(4 + 2 mlp_ratio + 4) floats; flow head:
    micro x train_length x diffusion_batch_mul x head_width x head_depth x ~8 floats) plus the
    rank's latent crops (float32, mirrored copy and stacked batch: x3). Order of magnitude only:
    meant to refuse absurd requests up front, not to fit a budget tightly."""
    T, K = gcfg.train_length, gcfg.class_tokens
    acts = micro * (T + K) * gcfg.width * gcfg.depth * (8 + 2 * gcfg.mlp_ratio)
    head = micro * T * gcfg.diffusion_batch_mul * gcfg.head_width * gcfg.head_depth * 8
    crops = 3 * per_rank * T * gcfg.token_dim
    return int(4 * (acts + head + crops))


def available_bytes(device: torch.device) -> int | None:
    """Free memory where the activations live: GPU free memory, else MemAvailable (/proc/meminfo)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - unknown: no guard
            return None
    from .pipeline import available_memory_bytes

    return available_memory_bytes()


def check_train_memory(gcfg, per_rank: int, micro: int, device: torch.device, *, available: int | None = None) -> int:
    """Refuse (ResourceError, exit 6) a batch whose estimate exceeds the free memory, before any
    batch is assembled (a huge --batch would otherwise spend minutes and then die of OOM)."""
    need = estimate_train_bytes(gcfg, per_rank, micro)
    avail = available_bytes(device) if available is None else available
    if avail is not None and need > 0.9 * avail:
        raise ResourceError(
            f"a training step with batch {per_rank} per process and micro-batch {micro} would need about "
            f"{need / 2**20:,.0f} MiB on {device.type}, but only {avail / 2**20:,.0f} MiB are available",
            hint="lower --micro-batch (gradients are accumulated, the result is the same) and/or --batch")
    return need


class _Trainer:
    def __init__(self, config: TrainConfig, device: torch.device, info: DistInfo, reporter: Reporter, before_step, after_step):
        self.c, self.device, self.info, self.reporter = config, device, info, reporter
        self.before_step, self.after_step = (before_step, after_step) if info.is_main else (None, None)
        self.out = Path(config.out)
        self.state_path = self.out / STATE_NAME
        self.log_path = self.out / LOG_NAME
        self.last_good: tuple[int, Path] | None = None

    # ---- setup
    def _setup(self) -> None:
        from .generator import make_config
        from .latents import LatentDataset

        c = self.c
        saved = None
        if self.state_path.exists():
            if not c.resume:
                raise UsageError(f"{self.out} already holds a training run ({self.state_path}); pass --resume to continue it or choose another --out")
            saved = load_checkpoint(self.state_path, kind="generator-train-state")
            self._check_resumable(saved)
        elif c.resume and self.info.is_main:
            self.reporter.warn(f"--resume: no {STATE_NAME} in {self.out}, starting a new run")

        if saved is not None:
            from .generator import GeneratorConfig

            gcfg = config_from_dict(GeneratorConfig, saved["config"])
            if hasattr(gcfg, "grad_checkpointing"):
                gcfg = replace(gcfg, grad_checkpointing=c.grad_checkpointing)
        else:
            probe = make_config(c.preset, **c.model_overrides)
            gcfg = None
        length = (gcfg or probe).train_length
        self.train_ds = LatentDataset(c.latents, length, split="train", val_fraction=c.val_fraction, mirror=c.mirror, seed=c.seed)
        self.val_ds = LatentDataset(c.latents, length, split="val", val_fraction=c.val_fraction, mirror=False, seed=c.seed)
        if len(self.train_ds) == 0:
            raise LatentFileError(f"{c.latents} has no training items: {getattr(self.train_ds, 'num_too_narrow', 0)} training images are "
                                  f"narrower than the {length}-column crop and {c.val_fraction:.0%} are held out for validation",
                                  hint="tokenize wider images, or train a preset with a shorter train_length (--set '{\"train_length\": 8}')")
        self.class_names = list(self.train_ds.class_names)
        self.fingerprint = self.train_ds.fingerprint
        if saved is not None and saved.get("latent_fingerprint") != self.fingerprint:
            raise LatentFileError(f"{c.latents} is not the latent file this run was trained on (fingerprint "
                                  f"{self.fingerprint} != {saved.get('latent_fingerprint')}); resume with the original file")
        if gcfg is None:
            overrides = dict(c.model_overrides, token_dim=self.train_ds.token_dim, num_classes=len(self.class_names))
            if "latent_scale" not in c.model_overrides:
                overrides["latent_scale"] = _latent_scale(c.latents)
            if c.grad_checkpointing:
                overrides["grad_checkpointing"] = True
            gcfg = make_config(c.preset, **overrides)
        elif gcfg.token_dim != self.train_ds.token_dim:
            raise LatentFileError(f"{c.latents} has {self.train_ds.token_dim}-dim tokens but the run's generator expects {gcfg.token_dim}")
        self.gcfg = gcfg
        check_train_memory(gcfg, c.batch // self.info.world, min(c.micro_batch, c.batch), self.device)
        self.mask = parse_loss_mask(c.loss_mask, gcfg.train_length)
        if self.mask is not None:
            self.mask = self.mask.to(self.device)

        torch.manual_seed(_mix(c.seed, 0x1417))  # weight init
        self.model = _build_generator(gcfg).to(self.device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, c.weight_decay), lr=peak_lr(c), betas=tuple(c.betas))
        self.ema = EMA(self.model, c.ema, warmup=c.ema_warmup)
        self.step = 0
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.ema.load_state_dict(saved["ema"], saved.get("ema_updates", 0))
            self.step = int(saved["step"])
            self._set_rng(saved.get("rng", {}))
            self.last_good = (self.step, self.state_path)
            threads = saved.get("num_threads")
            if threads is not None and int(threads) != torch.get_num_threads() and self.device.type == "cpu" and self.info.is_main:
                self.reporter.warn(f"this run was checkpointed with {threads} torch thread(s), now {torch.get_num_threads()}: "
                                   f"training continues correctly but not bit-identically to an uninterrupted run "
                                   f"(set OMP_NUM_THREADS={threads} for that)")
        self.start_step = self.step

        module = _LossModule(self.model)
        if self.info.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                         find_unused_parameters=False)  # every parameter is in the graph (the null class via torch.where, masked positions with weight 0)
        self.ddp = module
        if c.compile:
            import torch._inductor.config as inductor_config

            # draw noise/t/dropout with the eager RNG, so compiled runs keep the seeding scheme above
            inductor_config.fallback_random = True
        self.fwd = torch.compile(module) if c.compile else module

        self.micro = min(c.micro_batch, c.batch)
        self.per_rank = c.batch // self.info.world
        self.tokens_per_step = c.batch * gcfg.train_length
        sampler = _RankBatches(len(self.train_ds), c.batch, self.info.world, self.info.rank, c.seed, self.step)
        loader = torch.utils.data.DataLoader(_EpochItems(self.train_ds), batch_sampler=sampler, num_workers=c.workers,
                                             pin_memory=self.device.type == "cuda", persistent_workers=c.workers > 0)
        self.batches = iter(loader)
        self.val_batches = self._val_batches() if self.info.is_main else []
        if self.info.is_main:
            self._trim_log()

    def _check_resumable(self, saved: dict) -> None:
        old = saved.get("train_config", {})
        now = asdict(self.c)
        diff = [k for k in now if k not in _MACHINERY and k in old and _norm(old[k]) != _norm(now[k])]
        if diff:
            desc = ", ".join(f"{k}: run has {old[k]!r}, now {now[k]!r}" for k in diff)
            raise UsageError(f"cannot resume {self.out} with different training settings ({desc}); drop those flags or use a new --out")

    def _val_batches(self) -> list:
        n = min(len(self.val_ds), self.c.val_batches * self.micro)
        if n == 0:
            self.reporter.warn("no validation items (latent file too small or --val-fraction 0); skipping validation")
            return []
        self.val_ds.set_epoch(0)
        items = [self.val_ds[i] for i in range(n)]
        xs = torch.stack([torch.as_tensor(t, dtype=torch.float32) for t, _ in items])
        ys = torch.tensor([int(y) for _, y in items])
        return [(xs[i:i + self.micro], ys[i:i + self.micro]) for i in range(0, n, self.micro)]

    def _set_rng(self, rng: dict) -> None:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ---- checkpoints and logs
    def _save_state(self) -> Path:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        payload = {
            "config": asdict(self.gcfg),
            "train_config": asdict(self.c),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict(),  # averaged weights, model keys (load_generator picks them)
            "ema_updates": self.ema.updates,
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": {"schedule": self.c.schedule, "peak_lr": peak_lr(self.c), "warmup": self.c.warmup,
                          "last_lr": self.optimizer.param_groups[0]["lr"]},
            "step": self.step,
            "rng": rng,
            "data": data_position(self.step, self.c.batch, len(self.train_ds)),
            "class_names": self.class_names,
            "latent_fingerprint": self.fingerprint,
            "world_size": self.info.world,
            # CPU kernels split reductions by thread: another count changes the float sums (~1e-4 after
            # a few steps), so bit-exact resume needs the same count (docs/training.md)
            "num_threads": torch.get_num_threads(),
        }
        save_checkpoint(payload, self.state_path, kind="generator-train-state")
        self.last_good = (self.step, self.state_path)
        self._last_save_time = time.monotonic()
        return self.state_path

    def _save_generator(self) -> Path:
        from .generator import save_generator

        ema_model = copy.deepcopy(self.model).cpu()
        self.ema.copy_to(ema_model)
        path = self.out / GENERATOR_NAME
        save_generator(ema_model, path, class_names=self.class_names,
                       meta={"step": self.step, "latent_fingerprint": self.fingerprint, "train_config": asdict(self.c),
                             "ema_rate": self.c.ema})
        return path

    def _log(self, record: dict) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def _trim_log(self) -> None:
        """On resume drop records written after the checkpoint (e.g. before a kill -9)."""
        if not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= self.step:
                keep.append(line)
        with atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep))

    # ---- one optimizer step
    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        c = self.c
        lr = lr_at(self.step, peak=peak_lr(c), warmup=c.warmup, schedule=c.schedule, total=c.steps, min_lr=c.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        n_local = self.per_rank // self.micro
        first_chunk = self.info.rank * n_local
        loss_sum = torch.zeros((), device=self.device)
        for j in range(n_local):
            torch.manual_seed(_mix(c.seed, self.step, first_chunk + j))  # per-sample randomness independent of the rank split
            sync = nullcontext() if (not self.info.active or j == n_local - 1) else self.ddp.no_sync()
            with sync:
                with autocast(self.device):
                    loss = self.fwd(x[j * self.micro:(j + 1) * self.micro], y[j * self.micro:(j + 1) * self.micro], self.mask)
                (loss / n_local).backward()
            loss_sum += loss.detach().float()
        loss_sum = all_reduce_sum(loss_sum, self.info)
        loss_value = loss_sum.item() / (n_local * self.info.world)
        if not math.isfinite(loss_value):
            self._diverged(f"the loss became {loss_value}")
        clip = c.grad_clip if c.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm became {grad_norm}")
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss_value, lr, grad_norm

    def _diverged(self, what: str) -> None:
        where = (f"the last good checkpoint is {self.last_good[1]} (step {self.last_good[0]})" if self.last_good
                 else "no checkpoint had been written yet")
        if self.info.is_main:
            self._log({"step": self.step + 1, "event": "diverged", "message": what})
        raise TrainingDivergedError(f"training diverged at step {self.step + 1}: {what}; stopped before applying it; {where}",
                                    hint="lower --lr, keep --grad-clip on, or resume from the checkpoint with other settings")

    def _agree_stop(self, local: str | None) -> tuple[bool, bool]:
        """(finish, interrupt) over all ranks: a rank that stopped alone would hang the others."""
        flags = torch.tensor([float(local in ("steps", "minutes")), float(local not in (None, "steps", "minutes"))], device=self.device)
        flags = all_reduce_sum(flags, self.info)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    # ---- the loop
    def run(self) -> dict:
        self._setup()
        c, info = self.c, self.info
        t0 = time.monotonic()
        self._last_save_time = t0
        stopped = None
        metrics: dict = {}
        val: dict = {}
        window = {"loss": 0.0, "n": 0, "t": time.monotonic()}
        tok_per_s = None
        if info.is_main:
            self._log({"step": self.step, "event": "resume" if self.step else "start", "world_size": info.world,
                       "device": str(self.device), "peak_lr": peak_lr(c), "batch": c.batch, "preset": c.preset,
                       "train_length": self.gcfg.train_length, "params": sum(p.numel() for p in self.model.parameters())})
        if c.steps is not None and self.step >= c.steps:
            stopped = "steps"
        with _StopFlag() as sig, self.reporter.task("train generator", total=c.steps, unit="step") as bar:
            if c.steps is not None:
                bar.update(completed=self.step)
            while stopped is None:
                if self.before_step is not None:
                    self.before_step(self.step, self.model)
                x, y = next(self.batches)
                loss, lr, gnorm = self._train_step(x, y)
                window["loss"] += loss
                window["n"] += 1
                metrics = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": gnorm}
                if info.is_main:
                    bar.advance(1, loss=loss, lr=lr, gnorm=gnorm)
                    if self.step % c.log_every == 0:
                        dt = time.monotonic() - window["t"]
                        tok_per_s = window["n"] * self.tokens_per_step / max(dt, 1e-9)
                        self._log({"step": self.step, "loss": window["loss"] / window["n"], "lr": lr, "grad_norm": gnorm,
                                   "tokens_per_s": tok_per_s, "elapsed_s": time.monotonic() - t0})
                        window = {"loss": 0.0, "n": 0, "t": time.monotonic()}
                    if self.val_batches and c.val_every and self.step % c.val_every == 0:
                        val = self._validate()
                requested = self.after_step is not None and self.after_step(self.step, metrics)
                local_stop = None
                if c.steps is not None and self.step >= c.steps:
                    local_stop = "steps"
                elif c.minutes is not None and time.monotonic() - t0 >= c.minutes * 60:
                    local_stop = "minutes"
                elif sig.reason:
                    local_stop = sig.reason
                elif requested:
                    local_stop = "callback"
                finish, interrupt = self._agree_stop(local_stop)
                if finish or interrupt:
                    stopped = local_stop or ("minutes" if finish else "interrupted")
                elif info.is_main and (self.step % c.ckpt_every == 0 or time.monotonic() - self._last_save_time >= c.ckpt_minutes * 60):
                    self._save_state()
            finished = stopped in ("steps", "minutes")
            generator_path = None
            if info.is_main:
                if self.val_batches and finished and (not val or val.get("step") != self.step):
                    val = self._validate()
                if self.last_good is None or self.last_good[0] != self.step:
                    self._save_state()
                if finished:
                    generator_path = self._save_generator()
                self._log({"step": self.step, "event": "stop", "reason": stopped})
        if info.is_main and stopped in ("SIGINT", "SIGTERM"):
            self.reporter.warn(f"{stopped}: stopped after step {self.step}; checkpoint saved to {self.state_path}; continue with --resume")
        return {
            "out": str(self.out), "stopped": stopped, "step": self.step, "start_step": self.start_step,
            "steps_run": self.step - self.start_step, "loss": metrics.get("loss"), "lr": metrics.get("lr"),
            "grad_norm": metrics.get("grad_norm"), "val_loss": val.get("val_loss"),
            "val_per_position": val.get("val_per_position"), "tokens_per_s": tok_per_s,
            "elapsed_s": time.monotonic() - t0, "world_size": info.world, "device": str(self.device),
            "peak_lr": peak_lr(c), "checkpoint": str(self.state_path), "generator": str(generator_path) if generator_path else None,
            "log": str(self.log_path), "peak_memory_mb": _peak_memory_mb(self.device),
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def _validate(self) -> dict:
        res = validation_loss(self.model, self.val_batches, seed=self.c.seed, device=self.device)
        res["step"] = self.step
        self._log(res)
        self.reporter.log(f"step {self.step}: validation", val_loss=res["val_loss"])
        return res


def _build_generator(gcfg):
    from . import generator

    build = getattr(generator, "build_generator", None) or generator.EquivariantGenerator
    return build(gcfg)


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_train_state(path: str | os.PathLike) -> dict:
    """A generator-train-state checkpoint (for inspection: step, configs, data position)."""
    doc = load_checkpoint(path, kind="generator-train-state")
    for key in ("config", "train_config", "model", "step"):
        if key not in doc:
            raise CheckpointError(f"{path} lacks {key!r}; not a complete training state")
    return doc
