"""CLI commands: `eqimg analyze ...` (what the models learned, and how equivariant they are)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

analyze_app = typer.Typer(
    name="analyze",
    help="Analyse tokenizers and generators: shift equivariance, positions, conflicts.",
    no_args_is_help=True,
)


@analyze_app.command("equivariance")
def equivariance(
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer checkpoint (default: the bundled one)."),
    data: Path = typer.Option(..., "--data", help="Directory of images (scaled and centre-cropped to the tokenizer's height, never squashed)."),
    max_shift: int = typer.Option(4, "--max-shift", min=1, help="Whole-column shifts 1..K are measured."),
    sub_shift: Optional[list[int]] = typer.Option(None, "--sub-shift", help="Sub-column shift in px (repeatable); default: 1/4, 1/2 and 3/4 of a column."),
    num: int = typer.Option(8, "--num", min=1, help="Number of images."),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="Window width in px (default: the tokenizer height, a square)."),
    border: int = typer.Option(2, "--border", min=0, help="Tokens at each end of the compared overlap reported as 'border'."),
    baseline: bool = typer.Option(False, "--baseline", help="Also measure a non-equivariant 2D patch-grid tokenizer read in raster order."),
    baseline_steps: int = typer.Option(100, "--baseline-steps", min=0, help="Autoencoder training steps for the baseline (0: random weights)."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed for the baseline's weights and training."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot of the errors here."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Measure how shift-equivariant a tokenizer is, for encoding and decoding.

    Each image is cut into a window and copies of the window shifted by 1..K whole columns and by sub-column pixel amounts (cropping a wider image, no wrap-around). Encoding: relative L2 error between the shifted window's tokens and the base tokens moved by the shift. Decoding: the token sequence moved by k positions, decoded, against the base decode moved by k columns. Interior and border tokens are reported apart.
    """
    from eqcli.ui import RichReporter, print_json, print_table
    from eqcli_core.analysis.equivariance import EquivarianceConfig, analyze_equivariance, plot_equivariance, summary_rows
    from eqcli_core.device import pick_device

    cfg = EquivarianceConfig(max_shift=max_shift, sub_shifts_px=tuple(sub_shift or ()), width=width, border=border, num=num, batch=batch)
    reporter = RichReporter(quiet=json_output)
    doc = analyze_equivariance(
        tokenizer, data, cfg, baseline=baseline, baseline_steps=baseline_steps, seed=seed, device=pick_device(device), reporter=reporter,
    )
    if tokenizer is None:
        doc["tokenizer"] = "bundled"
    if plot is not None:
        plot_equivariance(doc, plot)
        doc["plot"] = str(plot)
    if json_output:
        print_json(doc)
        return
    print_table(
        f"Shift equivariance (relative L2 error; {doc['images']} images, {doc['window_width']}-px window, border = {border} tokens)",
        ["model", "stage", "shift px", "kind", "all", "interior", "border"],
        [[v if v is not None else "-" for v in row] for row in summary_rows(doc)],
    )
    if plot is not None:
        reporter.log(f"plot written to {plot}")


def _parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    from eqcli_core.errors import UsageError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give comma-separated integers, e.g. 1,2,4,8") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


@analyze_app.command("positions")
def positions(
    generator: Optional[Path] = typer.Option(None, "--generator", help="Generator checkpoint (default: the bundled one)."),
    latents: Path = typer.Option(..., "--latents", help="Latent file (eqimg tokenize); its held-out split is used."),
    lengths: str = typer.Option("1,2,4,8", "--lengths", help="Sequence lengths as multiples of the training length, comma-separated."),
    num: int = typer.Option(32, "--num", min=1, help="Sequences per length."),
    t_draws: int = typer.Option(8, "--t-draws", min=1, help="Flow times per token (midpoint rule on [0,1])."),
    fill: str = typer.Option("mirror", "--fill", help="Held-out images narrower than a length: 'mirror' (extend by reflection) or 'require' (skip them)."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Held-out fraction; use the value the generator was trained with."),
    edge: int = typer.Option(2, "--edge", min=0, help="'Interior' numbers leave out tokens within this many columns of a source image's edge (or a mirror seam)."),
    batch: int = typer.Option(8, "--batch", min=1, help="Sequences per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed for the crops and the fixed noise."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot path (default: positions.png in the current directory)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Held-out loss per token position, at the training length and 2x..8x beyond it.

    The paper's Fig. 3 (left): an equivariant generator has a flat per-position loss (small coefficient of variation). Longer sequences show whether the loss holds at positions the model never trained on. Noise and flow times are fixed, so positions are comparable.
    """
    from eqcli.ui import RichReporter, print_json, print_table
    from eqcli_core.analysis.positions import PositionsConfig, analyze_positions, plot_positions, summary_rows
    from eqcli_core.device import pick_device

    cfg = PositionsConfig(lengths=_parse_int_list(lengths, "--lengths"), num=num, t_draws=t_draws, batch=batch, seed=seed,
                          fill=fill, val_fraction=val_fraction, edge=edge)
    reporter = RichReporter(quiet=json_output)
    doc = analyze_positions(generator, latents, cfg, device=pick_device(device), reporter=reporter)
    plot = plot or Path("positions.png")
    plot_positions(doc, plot)
    doc["plot"] = str(plot)
    for w in doc["warnings"]:
        reporter.warn(w)
    if json_output:
        print_json(doc)
        return
    print_table(
        f"Held-out loss per position (training length {doc['train_length']}, window {doc['window']}, {doc['position']} positions, {doc['held_out_images']} held-out images)",
        ["length", "tokens", "seqs", "mean", "CV", "interior mean", "interior CV (full ctx)", "interior <= train", "interior beyond", "data"],
        summary_rows(doc),
    )
    reporter.log(f"plot written to {plot}")


@analyze_app.command("conflict")
def conflict(
    latents: Path = typer.Option(..., "--latents", help="Latent file (eqimg tokenize) to train both models on."),
    mask: str = typer.Option("even", "--mask", help="Positions that get a loss: even, odd, first-half, second-half or a list like 0,2,5."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Total budget: the equivariant model trains for half of it, the baseline for as many steps."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps per model."),
    quick: bool = typer.Option(False, "--quick", help="Tiny models and few evaluations (seconds): a smoke test."),
    batch: int = typer.Option(32, "--batch", min=1, help="Training batch."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (constant)."),
    eval_num: int = typer.Option(64, "--eval-num", min=1, help="Held-out crops for the per-position loss."),
    t_draws: int = typer.Option(4, "--t-draws", min=1, help="Flow times per token (midpoint rule)."),
    conflict_batches: int = typer.Option(4, "--conflict-batches", min=1, help="Held-out batches averaged in the gradient-conflict matrix."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Held-out fraction of images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep both training runs in this directory (default: temporary)."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, data order and the fixed noise."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot path (default: conflict.png in the current directory)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Zero-shot subtask experiment: train on some positions, test on all (the paper's Table 1).

    Trains, for the same number of steps and with the loss masked to a subset of positions, (a) the equivariant generator (windowed attention + RoPE with random shift) and (b) a baseline with full causal attention and learned absolute positions. Reports the held-out loss on trained and untrained positions and their ratio, and the gradient-conflict matrix (cosine similarity between per-position loss gradients on shared parameters) with its mean off-diagonal value.
    """
    from eqcli.ui import RichReporter, print_json, print_table
    from eqcli_core.analysis.conflict import ConflictConfig, analyze_conflict, plot_conflict, summary_rows

    cfg = ConflictConfig(mask=mask, steps=steps, minutes=minutes, quick=quick, batch=batch, lr=lr, eval_num=eval_num,
                         t_draws=t_draws, conflict_batches=conflict_batches, seed=seed, val_fraction=val_fraction,
                         device=device, out=str(out) if out is not None else None)
    reporter = RichReporter(quiet=json_output)
    doc = analyze_conflict(latents, cfg, reporter=reporter)
    plot = plot or Path("conflict.png")
    plot_conflict(doc, plot)
    doc["plot"] = str(plot)
    if json_output:
        print_json(doc)
        return
    print_table(
        f"Zero-shot positions (mask {doc['mask']}, {doc['steps']} steps each, {doc['heldout_crops']} held-out crops; position 0 excluded)",
        ["model", "attention / positions", "steps", "loss trained", "loss untrained", "gap ratio", "grad cos (off-diag)"],
        summary_rows(doc),
    )
    reporter.log(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
