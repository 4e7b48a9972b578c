"""Rich output for the CLI: progress bars on stderr, JSON documents on stdout."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from eqcli_core.progress import Reporter, Task

err_console = Console(stderr=True)


class _RichTask(Task):
    def __init__(self, progress: Progress, task_id):
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1, **fields) -> None:
        self._p.update(self._id, advance=n, info=_fmt(fields))

    def update(self, *, total=None, completed=None, **fields) -> None:
        kw: dict[str, Any] = {"info": _fmt(fields)} if fields else {}
        if total is not None:
            kw["total"] = total
        if completed is not None:
            kw["completed"] = completed
        self._p.update(self._id, **kw)


def _fmt(fields: dict) -> str:
    parts = []
    for k, v in fields.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class RichReporter(Reporter):
    """Progress bars and warnings on stderr (stdout stays clean for --json and `-`)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "") -> Iterator[Task]:
        progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=err_console, disable=self.quiet, transient=False,
        )
        with progress:
            tid = progress.add_task(description, total=total, info="")
            yield _RichTask(progress, tid)

    def warn(self, message: str) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def log(self, message: str, **metrics) -> None:
        if not self.quiet:
            err_console.print(message + (("  " + _fmt(metrics)) if metrics else ""), highlight=False)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj):
    import pathlib

    if isinstance(obj, pathlib.Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    err_console.print(table)


def emit(doc: dict, *, json_output: bool, title: str | None = None) -> None:
    """A command's result: a JSON document on stdout, or a small table on stderr."""
    if json_output:
        print_json(doc)
        return
    rows = [[k, v] for k, v in doc.items() if not isinstance(v, (dict, list))]
    print_table(title or "result", ["key", "value"], rows)
