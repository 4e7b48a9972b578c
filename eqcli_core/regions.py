"""Class conditions along x: `--class coast` or `--class mountains:0-2048,coast:2048-4096`.

A spec is one class (name or id) for the whole image, or comma-separated `CLASS:START-END`
pixel ranges that must tile [0, width) without gaps or overlaps. The last range may be open
(`coast:2048-`) to run forever (endless mode). Pixel ranges become token-column ranges, so each
boundary must be a multiple of the column width. Transitions are smooth by construction: the
generator's attention window still sees the previous class's columns for a few steps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import UsageError

_RANGE = re.compile(r"^\s*(?P<name>[^:]+?)\s*:\s*(?P<start>\d+)\s*-\s*(?P<end>\d*)\s*$")


@dataclass(frozen=True)
class Region:
    class_id: int
    start: int  # first token column
    end: int | None  # one past the last token column; None = open-ended

    def covers(self, col: int) -> bool:
        return self.start <= col and (self.end is None or col < self.end)


def resolve_class(name: str | int, class_names: Sequence[str] | None, num_classes: int) -> int:
    """A class name (case-insensitive, '_' == ' ') or id -> class id; UsageError otherwise."""
    text = str(name).strip()
    if re.fullmatch(r"\d+", text):
        cid = int(text)
        if not 0 <= cid < num_classes:
            raise UsageError(f"class id {cid} is out of range: this generator has {num_classes} classes (0-{num_classes - 1})")
        return cid
    names = list(class_names or [])
    key = _norm(text)
    for i, n in enumerate(names):
        if _norm(n) == key:
            return i
    hint = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else f"ids 0-{num_classes - 1}"
    raise UsageError(f"unknown class {text!r}; known classes: {hint}")


def _norm(s: str) -> str:
    return s.strip().lower().replace("_", " ").replace("-", " ")


def parse_regions(spec: str, *, class_names: Sequence[str] | None, num_classes: int, column_width: int,
                  width: int | None) -> list[Region]:
    """Parse a class spec into column regions covering [0, width) (width None/0 = endless).

    A plain class (no ':') covers everything. Raises UsageError for unknown classes, ranges not on
    column boundaries, gaps, overlaps, or ranges that do not reach the image width."""
    spec = (spec or "").strip()
    if not spec:
        raise UsageError("empty --class")
    if ":" not in spec:
        return [Region(resolve_class(spec, class_names, num_classes), 0, None)]
    regions: list[Region] = []
    parts = [p for p in spec.split(",")]
    for i, part in enumerate(parts):
        m = _RANGE.match(part)
        if not m:
            raise UsageError(f"cannot parse class range {part.strip()!r}: expected CLASS:START-END in pixels, e.g. mountains:0-2048")
        cid = resolve_class(m["name"], class_names, num_classes)
        start = int(m["start"])
        end = int(m["end"]) if m["end"] else None
        for px in (start, end):
            if px is not None and px % column_width:
                lo = px // column_width * column_width
                raise UsageError(f"class range {part.strip()!r}: {px} is not on a column boundary (multiple of {column_width} px); nearest: {lo} or {lo + column_width}")
        if end is not None and end <= start:
            raise UsageError(f"class range {part.strip()!r} is empty or reversed")
        if end is None and i != len(parts) - 1:
            raise UsageError(f"only the last class range may be open-ended ({part.strip()!r})")
        expected = regions[-1].end * column_width if regions else 0
        if start != expected:
            what = "gap" if start > expected else "overlap"
            raise UsageError(f"class ranges must tile the image without gaps or overlaps: {what} at {min(start, expected)}-{max(start, expected)} px (range {part.strip()!r} should start at {expected})")
        regions.append(Region(cid, start // column_width, None if end is None else end // column_width))
    last = regions[-1]
    if width:
        cols = width // column_width
        if last.end is not None and last.end != cols:
            raise UsageError(f"class ranges end at {last.end * column_width} px but the image is {width} px wide; make the last range end at {width} (or leave it open, e.g. name:{last.start * column_width}-)")
    elif last.end is not None:
        raise UsageError(f"endless mode needs an open last class range (e.g. name:{last.start * column_width}-) so every column has a class")
    return regions


def class_at(regions: Sequence[Region], col: int) -> int:
    for r in regions:
        if r.covers(col):
            return r.class_id
    return regions[-1].class_id  # past a closed end (e.g. outpainting beyond the spec): keep the last


def make_schedule(regions: Sequence[Region], batch: int, device=None) -> Callable[[int], torch.Tensor]:
    """Column index -> (B,) long labels, for eqcli_core.sampling's class_schedule."""
    cache: dict[int, torch.Tensor] = {}

    def schedule(col: int) -> torch.Tensor:
        cid = class_at(regions, col)
        if cid not in cache:
            cache[cid] = torch.full((batch,), cid, dtype=torch.long, device=device)
        return cache[cid]

    return schedule


def describe(regions: Sequence[Region], class_names: Sequence[str] | None, column_width: int) -> list[dict]:
    """JSON-friendly list of regions in pixels."""
    names = list(class_names or [])
    return [{"class_id": r.class_id, "class": names[r.class_id] if r.class_id < len(names) else str(r.class_id),
             "start_px": r.start * column_width, "end_px": None if r.end is None else r.end * column_width} for r in regions]
