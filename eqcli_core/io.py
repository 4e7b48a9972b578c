"""Safe file handling shared by every command.

- `atomic_path`: write to a temp file beside the target, fsync, then rename, so a crash leaves
  either the old complete file or the new complete one.
- `save_checkpoint` / `load_checkpoint`: eqimg checkpoints are plain dicts of tensors, numbers and
  strings, loaded weights-only (no code can run). Each carries `kind` and its config as a dict.
- `OutputLock`: one writer per output directory.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, LockedError, UsageError, WriteError

FORMAT = "eqimg"
FORMAT_VERSION = 1


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success it replaces the target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG):
            raise WriteError(f"could not write {target}: {exc.strerror}; the previous file (if any) is intact") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def config_to_dict(config: Any) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)


def config_from_dict(cls, data: dict):
    """Build a config dataclass, ignoring unknown keys (forward compatibility) but keeping defaults."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) and _is_tuple_field(cls, k) else v) for k, v in data.items() if k in names})


def _is_tuple_field(cls, name: str) -> bool:
    for f in fields(cls):
        if f.name == name:
            return "tuple" in str(f.type).lower()
    return False


def save_checkpoint(payload: dict, path: str | os.PathLike, *, kind: str) -> None:
    """Atomically save `payload` (plain types and tensors only) tagged with its kind."""
    import torch

    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **payload}
    with atomic_path(path) as tmp:
        torch.save(doc, tmp)


# Only what the official release formats need beyond plain containers.
def _safe_globals() -> list:
    import argparse

    return [argparse.Namespace]


def load_raw(path: str | os.PathLike, *, map_location="cpu") -> Any:
    """Weights-only torch.load with clear errors for missing, truncated or code-carrying files."""
    import torch  # lazy: commands that never touch checkpoints start faster

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} was refused: it contains objects other than tensors and plain data "
            f"(possibly code); eqimg only loads weights. Details: {str(exc).splitlines()[0][:200]}"
        ) from exc
    except Exception as exc:  # torch raises many types for garbage input (RuntimeError, IndexError, ...)
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {str(exc).splitlines()[0][:200]}") from exc


def load_checkpoint(path: str | os.PathLike, *, kind: str | tuple[str, ...] | None = None, map_location="cpu") -> dict:
    """Load an eqimg checkpoint and check its kind."""
    doc = load_raw(path, map_location=map_location)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        hint = "convert official release files with `eqimg convert official`" if isinstance(doc, dict) and ("model_ema" in doc or "state_dict" in doc) else None
        raise CheckpointError(f"{path} is not an eqimg checkpoint", hint=hint)
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer eqimg (format {doc.get('format_version')}); upgrade eqimg")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and doc.get("kind") not in kinds:
        raise CheckpointError(f"{path} holds a {doc.get('kind')!r} checkpoint, but a {' or '.join(repr(k) for k in kinds)} checkpoint is needed here")
    return doc


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_hash(state_dict: dict) -> str:
    """Content hash of weights (order-independent of file layout): identifies a tokenizer."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(key.encode())
        if torch.is_tensor(t):
            t = t.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class OutputLock:
    """An exclusive lock file in an output directory (fcntl, released by the OS if we die)."""

    def __init__(self, directory: str | os.PathLike, name: str = ".eqimg.lock"):
        self.path = Path(directory) / name
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise LockedError(f"{self.path.parent} is in use by another eqimg run (lock {self.path}); wait for it or choose another output") from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def require_multiple(value: int, multiple: int, what: str = "width") -> None:
    """Clear error naming the nearest valid values."""
    if value > 0 and value % multiple == 0:
        return
    below = (value // multiple) * multiple
    above = below + multiple
    options = [v for v in (below, above) if v > 0] or [multiple]
    raise UsageError(
        f"{what} {value} is not a positive multiple of the column width {multiple}; "
        f"nearest valid {what}{'s' if len(options) > 1 else ''}: {' or '.join(map(str, options))}"
    )
