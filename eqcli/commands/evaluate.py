"""CLI commands: `eqimg eval ...` (sample-quality metrics)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

eval_app = typer.Typer(
    name="eval",
    help="Measure sample quality: FID/KID against real images or saved statistics.",
    no_args_is_help=True,
)


@eval_app.command("fid")
def fid(
    real: Path = typer.Option(..., "--real", help="Directory of real images, or a statistics .npz made with --make-stats (or clean-fid/ADM mu/sigma stats)."),
    fake: Optional[Path] = typer.Option(None, "--fake", help="Directory of generated images (wide images are cut into square tiles)."),
    make_stats: Optional[Path] = typer.Option(None, "--make-stats", help="Also save the real set's statistics to this .npz, for later runs."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="Local copy of clean-fid's inception-2015-12-05.pt (nothing is downloaded)."),
    features: str = typer.Option("auto", "--features", help="Feature space: inception, efficientnet-lite0, or auto (Inception if its weights are available, else EfficientNet-Lite0)."),
    batch: int = typer.Option(32, "--batch", min=1, help="Tiles per forward pass."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", min=1, help="Random subsets averaged for KID."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", min=2, help="Images per KID subset (capped at the set sizes)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the KID subsets."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Frechet distance (FID) and KID between real and generated images.

    Every image is cut into square height x height tiles, left to right, so wide samples are measured at their native scale and never squashed.

    Without Inception weights (offline), the distances are computed in EfficientNet-Lite0 feature space and labelled as NOT comparable with published FID numbers.
    """
    from eqcli.ui import RichReporter, emit
    from eqcli_core.device import pick_device
    from eqcli_core.metrics import evaluate_fid

    doc = evaluate_fid(
        real, fake, make_stats=make_stats, features=features, inception_weights=inception_weights,
        device=pick_device(device), batch=batch, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
        seed=seed, reporter=RichReporter(quiet=json_output),
    )
    if doc.get("comparable_with_published_fid"):
        title = "FID / KID (Inception-v3, clean-fid preprocessing)"
    else:
        title = "Frechet distance / KID in EfficientNet-Lite0 space (NOT comparable with published FID)"
    if doc.get("stats_saved") and not json_output:
        RichReporter().log(f"saved {doc['stats_saved']['count']} tiles' statistics to {doc['stats_saved']['path']}")
    emit(doc, json_output=json_output, title=title)


@eval_app.command("long")
def long(
    generator: Optional[Path] = typer.Option(None, "--generator", help="Generator checkpoint (default: the bundled one)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer checkpoint (default: the bundled one)."),
    width: int = typer.Option(4096, "--width", min=1, help="Width in px of every generated image."),
    max_width: int = typer.Option(262144, "--max-width", min=1, help="Refuse a --width above this (generation time grows linearly with it)."),
    real: Optional[Path] = typer.Option(None, "--real", help="Directory of real images (scaled to the generator's height, cut into squares)."),
    real_landscapes: bool = typer.Option(False, "--real-landscapes", help="Real reference: fresh procedural landscape renders of the same classes."),
    class_name: Optional[str] = typer.Option(None, "--class", help="One class for all images (default: the classes in turn)."),
    num: int = typer.Option(8, "--num", min=1, help="Generated images."),
    buckets: int = typer.Option(6, "--buckets", min=1, help="Distance buckets."),
    spacing: str = typer.Option("log", "--spacing", help="Bucket spacing: log (1, 2, 4, ... tiles) or linear."),
    real_tiles: int = typer.Option(512, "--real-tiles", min=4, help="Real reference tiles (at most)."),
    fd_subsets: int = typer.Option(20, "--fd-subsets", min=1, help="Equal-count FD: mean over this many random subsets of a larger bucket."),
    cfg: float = typer.Option(3.0, "--cfg", help="Classifier-free guidance scale."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Flow steps per token (default: the generator's)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Images sampled together (default: all of a class)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot path (default: long.png in the current directory)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Quality against horizontal position in very wide images.

    Generates wide images with the streaming pipeline, cuts them into square height x height tiles, groups the tiles by distance from the left edge, and computes per bucket the Frechet distance (equal tile counts, so buckets compare) and KID against real tiles. Distances are in EfficientNet-Lite0 feature space: NOT comparable with published FID.
    """
    from eqcli.ui import RichReporter, print_json, print_table
    from eqcli_core.analysis.long_range import LongConfig, evaluate_long, plot_long, summary_rows
    from eqcli_core.device import pick_device

    lc = LongConfig(width=width, num=num, buckets=buckets, spacing=spacing, class_name=class_name, cfg=cfg, steps=steps,
                    temperature=temperature, batch=batch, real_tiles=real_tiles, fd_subsets=fd_subsets, seed=seed,
                    max_width=max_width)
    reporter = RichReporter(quiet=json_output)
    doc = evaluate_long(generator, tokenizer, lc, real=real, real_landscapes=real_landscapes, device=pick_device(device), reporter=reporter)
    plot = plot or Path("long.png")
    plot_long(doc, plot)
    doc["plot"] = str(plot)
    if json_output:
        print_json(doc)
        return
    floor = doc["real_floor_fd"]
    print_table(
        f"Quality vs position ({doc['images']} x {doc['width']} px = {doc['width_x_train']:.3g}x training width; "
        f"EfficientNet-Lite0 space, NOT comparable with published FID; real-vs-real FD floor "
        f"{'-' if floor is None else format(floor, '.4g')} at n={doc['equal_n']})",
        ["bucket", "start px", "end px", "x train width", "tiles", f"FD (n={doc['equal_n']})", "FD (all tiles)", "KID"],
        summary_rows(doc),
    )
    reporter.log(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
