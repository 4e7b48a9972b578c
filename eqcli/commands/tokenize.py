"""CLI command: `eqimg tokenize` (images -> HDF5 column latents)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def tokenize(
    data: Path = typer.Option(..., "--data", help="ImageFolder-style directory: one sub-folder per class."),
    out: Path = typer.Option(..., "--out", help="Output latent file (.h5); an interrupted run resumes from <out>.partial."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer checkpoint (default: the bundled one)."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored precision: float16 (half the size) or float32."),
    batch: int = typer.Option(32, "--batch", min=1, help="Images per forward pass (images of equal width are batched together)."),
    commit_every: int = typer.Option(256, "--commit-every", min=1, help="Images between commits; at most this many are redone after a crash."),
    max_width: Optional[int] = typer.Option(None, "--max-width", min=1, help="Cap on the resized width in px (wider images are cropped by the image loader)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Encode every image, and its horizontal mirror image, into column latents (HDF5).

    Images keep their aspect ratio (resized to the tokenizer's height), so each yields as many tokens as it has columns. The file records the tokenizer's fingerprint, so training refuses latents made by another tokenizer. The run commits every --commit-every images; after an interruption (even kill -9) the same command resumes where it stopped. Unreadable images are skipped and listed.
    """
    from eqcli.ui import RichReporter, emit
    from eqcli_core.device import pick_device
    from eqcli_core.latents import tokenize_folder
    from eqcli_core.tokenizer import load_tokenizer

    dev = pick_device(device)
    reporter = RichReporter(quiet=json_output)
    tok = load_tokenizer(tokenizer, device=dev)
    result = tokenize_folder(
        tok, data, out, dtype=dtype, batch_size=batch, commit_every=commit_every, max_width=max_width,
        overwrite=overwrite, reporter=reporter,
    )
    doc = result.to_dict()
    doc["tokenizer"] = str(tokenizer) if tokenizer else "bundled"
    if result.skipped and not json_output:
        reporter.warn(f"{result.skipped} file(s) skipped, e.g. " + "; ".join(f"{p}: {w}" for p, w in result.skipped_examples[:3]))
    emit(doc, json_output=json_output, title="tokenize")


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize)
