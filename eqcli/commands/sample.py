"""CLI commands: `eqimg sample` (images of any width, endless tiles) and `eqimg outpaint`."""
from __future__ import annotations

from typing import Optional

import typer


def sample(
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="Generator checkpoint (default: the bundled one)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer checkpoint (default: the bundled one)."),
    classes: Optional[str] = typer.Option(None, "--class", "-c", help="Class name or id, or regions along x in pixels: "
                                          "'mountains:0-2048,coast:2048-4096' (last range may be open: 'coast:2048-'). Default: a random class per image."),
    width: Optional[int] = typer.Option(None, "--width", "-W", help="Image width in px (a multiple of the column width); 0 = endless (with --stream). Default: the trained width."),
    num: int = typer.Option(1, "--num", "-n", min=1, help="Number of images (stacked vertically in one PNG)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same image on the same device and --batch."),
    cfg: float = typer.Option(3.0, "--cfg", min=0.0, help="Classifier-free guidance scale (1 = none)."),
    cfg_schedule: str = typer.Option("auto", "--cfg-schedule", help="Guidance along the width: linear (ramp over the image, official), linear-window (ramp over the trained length, then hold), constant, or auto (linear; linear-window when endless)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Noise scale of each token's flow sampling (< 1: safer, > 1: wilder)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Flow (Euler) steps per token (default: the generator's)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output PNG; '-' writes PNG bytes to stdout."),
    save_tokens: Optional[str] = typer.Option(None, "--save-tokens", help="Also save the sampled tokens to this HDF5 file (decode them again with `eqimg decode`)."),
    stream: Optional[str] = typer.Option(None, "--stream", help="Write fixed-width tiles instead: a directory (tile_000000.png, ...) or '-' for raw RGB frames on stdout (e.g. for ffmpeg)."),
    tile_width: int = typer.Option(1024, "--tile-width", min=1, help="Tile width in px for --stream."),
    max_tiles: Optional[int] = typer.Option(None, "--max-tiles", min=1, help="Stop --stream after this many tiles."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Images sampled together (default: all of --num)."),
    decode_overlap: Optional[int] = typer.Option(None, "--decode-overlap", min=0, help="Context tokens per side when decoding in chunks (default: exact for local decoders, 16 for global-attention ones)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Generate images of any width, column by column, with constant memory per column.

    Examples:
      eqimg sample --class coast --width 4096 -o wide.png
      eqimg sample --class mountains:0-2048,coast:2048-4096 --width 4096 -o pano.png
      eqimg sample --width 0 --stream tiles/ --max-tiles 10
      eqimg sample --width 0 --stream - | ffmpeg -f rawvideo -pix_fmt rgb24 -s 1024x128 -i - out.mp4
    """
    from eqcli.ui import RichReporter, emit
    from eqcli_core.device import pick_device
    from eqcli_core.errors import UsageError
    from eqcli_core.pipeline import SampleConfig, run_sample

    if json_output and "-" in (output, stream):
        raise UsageError("--json prints to stdout, which is taken by the image data ('-'); write to a file instead")
    config = SampleConfig(width=width, num=num, seed=seed, classes=classes, cfg=cfg, cfg_schedule=cfg_schedule,
                          temperature=temperature, steps=steps, batch=batch, decode_overlap=decode_overlap,
                          tile_width=tile_width, max_tiles=max_tiles)
    doc = run_sample(config, generator_path=generator, tokenizer_path=tokenizer, device=pick_device(device), output=output,
                     stream=stream, save_tokens=save_tokens, reporter=RichReporter(quiet=json_output))
    if stream == "-" or output == "-":
        if doc.get("stopped") == "broken_pipe":
            _silence_stdout()
        what = f"{doc['tiles']} frame(s) of {doc['tile_width']}x{doc['grid_height']} ({doc['stopped']})" if stream == "-" else "the PNG"
        RichReporter(quiet=json_output).log(f"wrote {what} to stdout", seconds=doc["seconds"], columns_per_s=doc["columns_per_s"])
        return
    emit(doc, json_output=json_output, title="sample")


def outpaint(
    image: str = typer.Argument(..., help="Image to continue; '-' reads it from stdin."),
    width: int = typer.Option(..., "--width", "-W", help="Output width in px (a multiple of the column width)."),
    direction: str = typer.Option("right", "--direction", help="right, left (mirrored) or both."),
    classes: Optional[str] = typer.Option(None, "--class", "-c", help="Class name or id for the new columns (default: random)."),
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="Generator checkpoint (default: the bundled one)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer checkpoint (default: the bundled one)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    cfg: float = typer.Option(3.0, "--cfg", min=0.0, help="Classifier-free guidance scale (1 = none)."),
    cfg_schedule: str = typer.Option("auto", "--cfg-schedule", help="linear, linear-window, constant or auto (see eqimg sample --help)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Noise scale of each token's flow sampling."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Flow (Euler) steps per token (default: the generator's)."),
    blend_columns: int = typer.Option(2, "--blend-columns", min=0, help="Columns on the generated side over which the seam is blended."),
    output: str = typer.Option(..., "--output", "-o", help="Output PNG; '-' writes PNG bytes to stdout."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout (includes seam_ratio)."),
) -> None:
    """Continue an image beyond its edges; the original pixels are kept exactly.

    The image is resized to the tokenizer's height and cropped to whole columns, encoded, and its
    token sequence is continued (to the left by mirroring). seam_ratio in the result compares
    the gradient across the seam with the gradient elsewhere (about 1 = invisible).
    """
    from eqcli.ui import RichReporter, emit
    from eqcli_core.device import pick_device
    from eqcli_core.errors import UsageError
    from eqcli_core.pipeline import SampleConfig, run_outpaint

    if json_output and output == "-":
        raise UsageError("--json prints to stdout, which is taken by the PNG ('-o -'); give -o FILE.png")
    config = SampleConfig(width=width, seed=seed, classes=classes, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, steps=steps)
    doc = run_outpaint(image, config, direction=direction, generator_path=generator, tokenizer_path=tokenizer,
                       device=pick_device(device), output=output, blend_columns=blend_columns, reporter=RichReporter(quiet=json_output))
    if output == "-":
        if doc.get("stopped") == "broken_pipe":
            _silence_stdout()
        RichReporter().log("wrote the PNG to stdout", seam_ratio=doc["seam_ratio"])
        return
    emit(doc, json_output=json_output, title="outpaint")


def decode(
    tokens: str = typer.Argument(..., help="Sampled-token file written by `eqimg sample --save-tokens`."),
    output: str = typer.Option(..., "--output", "-o", help="Output PNG; '-' writes PNG bytes to stdout."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "-t", help="Tokenizer checkpoint (default: the bundled one)."),
    index: Optional[int] = typer.Option(None, "--index", "-i", min=0, help="Decode only this image (default: all, stacked vertically)."),
    decode_overlap: Optional[int] = typer.Option(None, "--decode-overlap", min=0, help="Context tokens per side when decoding in chunks (default as in `eqimg sample`)."),
    force: bool = typer.Option(False, "--force", help="Decode even if the tokenizer's fingerprint differs from the one that made the tokens."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Decode sampled tokens back into a PNG (the same pixels `eqimg sample` wrote).

    Example:
      eqimg sample --width 4096 -o pano.png --save-tokens pano.h5
      eqimg decode pano.h5 -o again.png
    """
    from eqcli.ui import RichReporter, emit
    from eqcli_core.device import pick_device
    from eqcli_core.errors import UsageError
    from eqcli_core.saved_tokens import run_decode

    if json_output and output == "-":
        raise UsageError("--json prints to stdout, which is taken by the PNG ('-o -'); give -o FILE.png")
    doc = run_decode(tokens, output, tokenizer_path=tokenizer, index=index, force=force, decode_overlap=decode_overlap,
                     device=pick_device(device), reporter=RichReporter(quiet=json_output))
    if output == "-":
        if doc.get("stopped") == "broken_pipe":
            _silence_stdout()
        RichReporter().log("wrote the PNG to stdout", images=doc["images"], width=doc["width"])
        return
    emit(doc, json_output=json_output, title="decode")


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit-time flush cannot fail."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
    app.command("outpaint")(outpaint)
    app.command("decode")(decode)
