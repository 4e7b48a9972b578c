"""Progress reporting without a UI dependency.

Library code calls a `Reporter`; the default one is silent. The CLI passes a rich-backed
subclass (eqcli/ui.py). Notebook users can pass their own.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class Task:
    """Handle for one progress bar."""

    def advance(self, n: float = 1, **fields) -> None:  # fields: e.g. loss=0.3, cols_per_s=120
        pass

    def update(self, *, total: float | None = None, completed: float | None = None, **fields) -> None:
        pass


class Reporter:
    """Silent reporter; subclass to show progress, warnings and log lines."""

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "") -> Iterator[Task]:
        yield Task()

    def warn(self, message: str) -> None:
        pass

    def log(self, message: str, **metrics) -> None:
        pass


SILENT = Reporter()
