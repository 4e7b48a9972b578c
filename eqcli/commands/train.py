"""CLI command: train (the column-wise generator, from pre-tokenized latents)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from eqcli_core.errors import UsageError


def train(
    latents: Path = typer.Option(..., "--latents", help="HDF5 latent file made by `eqimg tokenize`."),
    out: Path = typer.Option(..., "--out", help="Run directory: train_state.pt, generator.pt, log.jsonl."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Generator preset: tiny, paper-S, paper-B, paper-L, paper-H. (default tiny)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimizer steps of the run (counted across resumes)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget of this invocation; stops cleanly when spent."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Global batch size over all processes. (default 256)"),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", help="Samples per forward pass and per noise seed; must divide batch/processes. (default 32)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Absolute peak learning rate. (default base-lr * batch / 256)"),
    base_lr: Optional[float] = typer.Option(None, "--base-lr", help="Base lr of the scaling rule lr = base_lr * batch / 256. (default 1e-4)"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="constant or cosine (cosine needs --steps). (default constant)"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Linear lr warmup steps. (default 0)"),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the global gradient norm (0: off). (default 3.0)"),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA rate of the shipped weights. (default 0.9999)"),
    loss_mask: Optional[str] = typer.Option(None, "--loss-mask", help="Positions that get a loss: even, odd, first-half, second-half or a list like 0,2,4."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of init, data order, crops and noise. (default 0)"),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Share of images held out for validation. (default 0.05)"),
    model_set: Optional[str] = typer.Option(None, "--set", help='Generator settings over the preset, as JSON, e.g. \'{"depth": 2}\'.'),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N. (default auto)"),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Data-parallel processes on this machine (or launch with torchrun)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loader worker processes. (default 0)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward to save memory."),
    deterministic: bool = typer.Option(False, "--deterministic", help="torch.use_deterministic_algorithms (slower on GPU)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Steps between log lines. (default 10)"),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Steps between validations (0: at the end only). (default 200)"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints. (default 500)"),
    checkpoint_minutes: Optional[float] = typer.Option(None, "--checkpoint-minutes", help="Also checkpoint after this many minutes. (default 30)"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where its checkpoint stopped; unspecified flags keep the run's values."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Train the column-wise generator on pre-tokenized latents.

    Random crops of the preset's training length are cut from the variable-width latents. AdamW (0.9, 0.95), weight decay 0.02 (not on norms, biases, embeddings), lr = base-lr * batch / 256, gradient clipping at 3.0, EMA weights in generator.pt.

    Ctrl-C or SIGTERM finish the current step and save a checkpoint (exit 130 / 143); continue with --resume. Several GPUs: torchrun --nproc_per_node=8 -m eqcli train ... (see docs/training.md).
    """
    from eqcli.ui import RichReporter, emit
    from eqcli_core.training import train_config_from_args, train_generator

    overrides = None
    if model_set is not None:
        try:
            overrides = json.loads(model_set)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--set is not valid JSON: {exc}") from None
        if not isinstance(overrides, dict):
            raise UsageError('--set takes a JSON object, e.g. \'{"depth": 2}\'')
    config = train_config_from_args(
        latents=str(latents), out=str(out), resume=resume, preset=preset, steps=steps, minutes=minutes, batch=batch,
        micro_batch=micro_batch, lr=lr, base_lr=base_lr, schedule=schedule, warmup=warmup, grad_clip=grad_clip, ema=ema,
        loss_mask=loss_mask, seed=seed, val_fraction=val_fraction, model_overrides=overrides, device=device, nproc=nproc,
        workers=workers, compile=compile or None, grad_checkpointing=grad_checkpointing or None,
        deterministic=deterministic or None, log_every=log_every, val_every=val_every, ckpt_every=checkpoint_every,
        ckpt_minutes=checkpoint_minutes,
    )
    main_rank = int(os.environ.get("RANK", "0")) == 0
    summary = train_generator(config, reporter=RichReporter(quiet=not main_rank))
    if main_rank:
        emit(summary, json_output=json_output, title="generator training")
    if summary.get("stopped") == "SIGINT":
        sys.exit(130)
    if summary.get("stopped") == "SIGTERM":
        sys.exit(143)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
