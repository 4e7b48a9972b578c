"""CLI commands: `eqimg data landscapes|textures` (dataset generation)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(
    no_args_is_help=True,
    help="Make datasets: procedural landscape panoramas and photo-texture crops (ImageFolder + manifest).",
)


@data_app.command("landscapes")
def landscapes(
    out: Path = typer.Argument(..., help="Output folder; gets <class>/<class>_<index>.png and manifest.json."),
    count: int = typer.Option(100, "--count", "-n", help="Images PER CLASS."),
    height: int = typer.Option(128, "--height", help="Image height in pixels (>= 8)."),
    width: int = typer.Option(128, "--width", help="Image width in pixels; any width works (panoramas)."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; image i of a class depends only on (seed, class, i)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated subset, e.g. mountains,coast (default: all)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (1 = render in this process)."),
    json_output: bool = typer.Option(False, "--json", help="Print the manifest as one JSON document on stdout."),
) -> None:
    """Render procedural landscape panoramas as an ImageFolder tree.

    Classes: mountains, desert, coast, forest, snowfield, city_night, lake.

    Each class is a horizontally stationary random process, so any width is valid.

    Renders are deterministic for a seed."""
    from eqcli.ui import RichReporter, emit
    from eqcli_core.data.landscapes import make_landscapes

    doc = make_landscapes(out, count, height, width, seed, classes=classes, reporter=RichReporter(quiet=json_output), workers=workers)
    emit(doc, json_output=json_output, title="landscapes")


@data_app.command("textures")
def textures(
    out: Path = typer.Argument(..., help="Output folder; gets <class>/<class>_<index>.png and manifest.json."),
    count: int = typer.Option(100, "--count", "-n", help="Crops PER SOURCE PHOTO (class)."),
    size: int = typer.Option(128, "--size", help="Square crop size in pixels."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; crop i of a class depends only on (seed, class, i)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated subset of source photos (default: all)."),
    json_output: bool = typer.Option(False, "--json", help="Print the manifest as one JSON document on stdout."),
) -> None:
    """Crop the photographs bundled with scikit-image into an ImageFolder tree.

    One class per source photo; nothing is downloaded.

    Photos: brick, grass, gravel, coffee, chelsea, astronaut, rocket, immunohistochemistry, hubble, camera."""
    from eqcli.ui import RichReporter, emit
    from eqcli_core.data.textures import make_textures

    doc = make_textures(out, count, size, seed, classes=classes, reporter=RichReporter(quiet=json_output))
    emit(doc, json_output=json_output, title="textures")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data", help="Make datasets: procedural landscapes and photo-texture crops.")
