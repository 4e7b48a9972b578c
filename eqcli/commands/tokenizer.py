"""CLI commands: train-tokenizer, reconstruct."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eqcli.ui import RichReporter, emit


def train_tokenizer_cmd(
    data: Path = typer.Option(..., "--data", help="Directory of training images (searched recursively; class subfolders are fine)."),
    out: Path = typer.Option(..., "--out", help="Run directory: state.pt, tokenizer.pt, preview.png, log.jsonl."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Held-out images for PSNR/SSIM (default: a fixed split of --data)."),
    preset: str = typer.Option("tiny", "--preset", help="Architecture preset: tiny (128 px, CPU) or paper (256 px)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop after this many minutes (of this session)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop at this total step count."),
    batch: int = typer.Option(16, "--batch", help="Images per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (warmup, then cosine decay over the budget)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its state.pt."),
    gan_start: Optional[int] = typer.Option(None, "--gan-start", help="Enable the hinge GAN loss from this step (off by default)."),
    no_perceptual: bool = typer.Option(False, "--no-perceptual", help="Skip the perceptual loss (faster)."),
    feature_align: bool = typer.Option(False, "--feature-align", help="Align decoder features with the pretrained network's."),
    ckpt_minutes: float = typer.Option(5.0, "--ckpt-minutes", help="Validate and checkpoint this often."),
    val_every: int = typer.Option(0, "--val-every", help="Validate every N steps instead of every --ckpt-minutes."),
    seed: int = typer.Option(0, "--seed", help="Seed for data order and latent noise."),
    decoder_from: Optional[Path] = typer.Option(None, "--decoder-from", help="Fine-tune only the decoder of this tokenizer: its encoder, its latents and every latent file, sampled-token file and generator made with it stay valid (--preset is ignored)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as one JSON document on stdout."),
) -> None:
    """Train a column tokenizer on a folder of images.

    Held-out PSNR/SSIM are logged at each checkpoint; the best EMA weights are written to OUT/tokenizer.pt. Interrupt and continue later with --resume.

    With --decoder-from TOK.pt only the decoder is trained (starting from TOK's weights): a sharper decoder for a generator that is already trained, without re-tokenizing or retraining anything.
    """
    import torch

    from eqcli_core.tokenizer.train import TrainTokenizerConfig, train_tokenizer

    torch.set_num_threads(max(1, threads))
    tc = TrainTokenizerConfig(preset=preset, batch=batch, lr=lr, gan_start=gan_start, perceptual=not no_perceptual,
                              feature_align=feature_align, ckpt_minutes=ckpt_minutes, val_every=val_every, seed=seed,
                              decoder_from=str(decoder_from) if decoder_from is not None else None)
    summary = train_tokenizer(data, out, train_config=tc, minutes=minutes, steps=steps, resume=resume, val_data=val_data, device=device,
                              reporter=RichReporter())
    emit(summary, json_output=json_output, title="train-tokenizer")


def reconstruct_cmd(
    image: Path = typer.Argument(..., help="Input image (its height is scaled to the tokenizer's; width cropped to whole columns)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer checkpoint (default: the bundled one)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output PNG: original and reconstruction side by side."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print PSNR/SSIM as one JSON document on stdout."),
) -> None:
    """Encode an image to column tokens and decode it back; writes both side by side."""
    from eqcli_core.tokenizer.reconstruct import reconstruct_file

    emit(reconstruct_file(image, output, tokenizer=tokenizer, device=device), json_output=json_output, title="reconstruct")


def register(app: typer.Typer) -> None:
    app.command("train-tokenizer")(train_tokenizer_cmd)
    app.command("reconstruct")(reconstruct_cmd)
