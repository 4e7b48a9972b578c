"""The `eqimg` app. Commands live in eqcli/commands/*; each registers itself on `app`.

Library errors (eqcli_core.errors.EqimgError) become one clear line and an exit code here,
and nowhere else.
"""
from __future__ import annotations

import errno
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

    Usage errors (bad flags) exit 2; everything an eqimg library call raises as EqimgError is
    reported here as one line (and, with --json, as a JSON document on stdout)."""
    from typer import _click
    from typer.exceptions import Abort

    args = sys.argv[1:] if argv is None else list(argv)
    json_output = "--json" in args
    try:
        rv = app(args=args, prog_name="eqimg", standalone_mode=False)
    except EqimgError as exc:
        _report(exc.to_dict(), json_output)
        sys.exit(exc.exit_code)
    except _click.exceptions.ClickException as exc:  # bad flag or value, missing argument
        if json_output:
            from eqcli.ui import print_json

            print_json({"error": "usage_error", "message": exc.format_message(), "exit_code": exc.exit_code})
        _show_usage_error(exc)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Abort):
        _report({"error": "interrupted", "message": "interrupted", "exit_code": 130}, json_output)
        sys.exit(130)
    except MemoryError:
        _report({"error": "resource_limit", "message": "out of memory; try a smaller --num/--batch or width", "exit_code": 6}, json_output)
        sys.exit(6)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):  # a writer outside atomic_path
            _report({"error": "write_failed", "message": f"writing failed: {exc}", "exit_code": 8}, json_output)
            sys.exit(8)
        _unexpected(exc, json_output)
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA/MPS)
            _report({"error": "resource_limit", "message": f"out of device memory: {str(exc).splitlines()[0][:200]}", "exit_code": 6,
                     "hint": "lower --batch/--num or the width"}, json_output)
            sys.exit(6)
        _unexpected(exc, json_output)
    if rv == 130:  # typer turns Ctrl-C inside a command into Exit(130)
        _report({"error": "interrupted", "message": "interrupted", "exit_code": 130}, json_output)
    sys.exit(rv if isinstance(rv, int) else 0)  # like click's standalone mode: always a SystemExit


def _show_usage_error(exc) -> None:
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
    except Exception:  # pragma: no cover - plain click formatting as a fallback
        exc.show()


def _unexpected(exc: BaseException, json_output: bool) -> None:
    """A bug, not a user error: the traceback goes to stderr, --json still gets its document."""
    import traceback

    traceback.print_exc()
    _report({"error": "runtime_error", "message": f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
             "exit_code": 1}, json_output)
    sys.exit(1)


def _report(doc: dict, json_output: bool) -> None:
    if json_output:
        from eqcli.ui import print_json

        print_json(doc)
    from eqcli.ui import err_console

    err_console.print("[bold red]error:[/bold red] ", end="")
    err_console.print(doc["message"], highlight=False, markup=False)
    if doc.get("hint"):
        err_console.print("hint: " + doc["hint"], highlight=False, markup=False)
