"""CLI commands: `eqimg info PATH` (what a file holds) and `eqimg models` (bundled models)."""
from __future__ import annotations

from pathlib import Path

import typer


def info(
    path: Path = typer.Argument(..., help="A checkpoint (.pt/.ckpt/.pth), a latent file or a sampled-token file (.h5)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Describe a checkpoint or latent file without running it.

    Checkpoints (tokenizer, generator, training states): kind, config, parameter counts, class names, step and tokenizer fingerprint. Latent files: images, columns, classes, widths, dtype, tokenizer fingerprint and format version (an interrupted run's .partial file shows its progress). Sampled-token files (`sample --save-tokens`): images, columns, seed, classes, cfg and tokenizer fingerprint. Files of the official release are recognised and described too. Files are read weights-only: nothing in them can run.
    """
    from eqcli.ui import emit, err_console, print_json, print_table
    from eqcli_core.inspect import describe

    doc = describe(path)
    if json_output:
        print_json(doc)
        return
    emit(doc, json_output=False, title=f"{path.name}: {doc.get('kind')}")
    for key in ("config", "args", "parameters", "width_columns", "meta"):
        sub = doc.get(key)
        if isinstance(sub, dict) and sub:
            rows = [[k, v if not isinstance(v, (dict, list)) else _short(v)] for k, v in sub.items()]
            print_table(key, ["key", "value"], rows)
    if doc.get("class_names"):
        names = doc["class_names"]
        err_console.print(f"classes ({len(names)}): " + ", ".join(map(str, names[:30])) + (" ..." if len(names) > 30 else ""), highlight=False)


def _short(v) -> str:
    import json

    s = json.dumps(v, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


def models(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """List the models bundled with eqimg (name, files, classes, provenance)."""
    from eqcli.ui import err_console, print_json, print_table
    from eqcli_core.inspect import list_bundled

    doc = list_bundled()
    if json_output:
        print_json(doc)
        return
    if not doc["models"]:
        err_console.print(doc.get("message", "no bundled models"), highlight=False)
        return
    rows = []
    for m in doc["models"]:
        size = sum(f["bytes"] or 0 for f in m["files"])
        rows.append([m["name"], m.get("kind", ""), m.get("num_classes", ""), f"{size / 1e6:.1f} MB",
                     "yes" if m["complete"] else "MISSING FILES", _short(m.get("provenance", m.get("description", "")))])
    print_table(f"bundled models ({doc['directory']})", ["name", "kind", "classes", "size", "present", "provenance"], rows)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("models")(models)
