"""The `eqimg` app. Commands live in eqcli/commands/*; each registers itself on `app`.

Library errors (eqcli_core.errors.EqimgError) become one clear line and an exit code here,
and nowhere else.
"""
from __future__ import annotations

import sys

import typer

from eqcli_core import __version__
from eqcli_core.errors import EqimgError

app = typer.Typer(
    name="eqimg",
    help="Equivariant Image Modeling: tokenize images column by column, train windowed column-wise "
    "generators, and sample images of any width.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eqimg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Equivariant Image Modeling: tokenize images column by column, train windowed column-wise
    generators, and sample images of any width."""


def _register_commands() -> None:
    from eqcli.commands import COMMAND_MODULES

    for module in COMMAND_MODULES:
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn library errors into exit codes.

    Typer handles usage errors itself (exit 2); everything an eqimg library call raises as
    EqimgError is reported here as one line (or a JSON document with --json)."""
    args = sys.argv[1:] if argv is None else list(argv)
    json_output = "--json" in args
    try:
        app(args=args, prog_name="eqimg")
    except EqimgError as exc:
        _report(exc.to_dict(), json_output)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _report({"error": "interrupted", "message": "interrupted", "exit_code": 130}, json_output)
        sys.exit(130)
    except MemoryError:
        _report({"error": "resource_limit", "message": "out of memory; try a smaller --num/--batch or width", "exit_code": 6}, json_output)
        sys.exit(6)


def _report(doc: dict, json_output: bool) -> None:
    if json_output:
        from eqcli.ui import print_json

        print_json(doc)
    from eqcli.ui import err_console

    err_console.print("[bold red]error:[/bold red] ", end="")
    err_console.print(doc["message"], highlight=False, markup=False)
    if doc.get("hint"):
        err_console.print("hint: " + doc["hint"], highlight=False, markup=False)
