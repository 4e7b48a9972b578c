"""CLI commands: `eqimg convert official` (official release files -> eqimg checkpoints)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

convert_app = typer.Typer(help="Convert checkpoints from other formats into eqimg checkpoints.", no_args_is_help=True)


@convert_app.command("official")
def official(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file; a directory (tokenizer.pt + generator.pt) when both inputs are given.")],
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="Official tokenizer checkpoint (tokenizer.ckpt).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Official tokenizer YAML config (with --tokenizer).")] = None,
    generator: Annotated[Optional[Path], typer.Option("--generator", help="Official generator checkpoint (.pth/.ckpt with 'model_ema' and 'args').")] = None,
    class_names: Annotated[Optional[Path], typer.Option("--class-names", help="Text file, one class name per line (default: 0, 1, 2, ...).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")] = False,
) -> None:
    """Convert the official EquivariantModeling release to eqimg checkpoints.

    The generator's EMA weights are used and its vae_norm becomes the latent scale. Files are loaded weights-only: nothing in them can run code.
    """
    from eqcli.ui import emit
    from eqcli_core.official_generator import convert_official

    doc = convert_official(out=out, tokenizer=tokenizer, tokenizer_config=config, generator=generator, class_names_file=class_names)
    emit(doc if json_output else {k: v for k, v in doc["outputs"].items()}, json_output=json_output, title="converted")


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
