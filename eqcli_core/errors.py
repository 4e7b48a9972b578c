"""One exception family for everything a user can cause; the CLI maps each to an exit code.

Exit codes (documented in docs/cli.md):
  0 success, 1 runtime error, 2 usage error (bad flag or value),
  3 bad input data (images, datasets), 4 bad or untrusted checkpoint,
  5 bad latent file (HDF5), 6 resource limit (would not fit in memory or disk),
  7 output locked by another run, 8 write failed (disk full, permissions), 130 interrupted.
"""
from __future__ import annotations


class EqimgError(Exception):
    """A user-facing error: its message is shown as is, without a traceback."""

    exit_code = 1
    kind = "runtime_error"

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict:
        doc = {"error": self.kind, "message": self.message, "exit_code": self.exit_code}
        if self.hint:
            doc["hint"] = self.hint
        return doc


class UsageError(EqimgError):
    """A flag or argument value that cannot work (impossible width, unknown class...)."""

    exit_code = 2
    kind = "usage_error"


class BadInputError(EqimgError):
    """Input data that cannot be used: no readable images, an image that cannot be decoded."""

    exit_code = 3
    kind = "bad_input"


class CheckpointError(EqimgError):
    """A checkpoint that is missing, truncated, of the wrong kind, or carries code."""

    exit_code = 4
    kind = "bad_checkpoint"


class LatentFileError(EqimgError):
    """An HDF5 latent file that is corrupt, of another version, or made by another tokenizer."""

    exit_code = 5
    kind = "bad_latent_file"


class ResourceError(EqimgError):
    """A request that would not fit in memory or on disk; refused before starting."""

    exit_code = 6
    kind = "resource_limit"


class LockedError(EqimgError):
    """Another run holds the output's lock."""

    exit_code = 7
    kind = "locked"


class WriteError(EqimgError):
    """Writing an output failed (disk full, permissions); earlier files are intact."""

    exit_code = 8
    kind = "write_failed"


class TrainingDivergedError(EqimgError):
    """The loss became NaN or inf; the last good checkpoint is kept."""

    exit_code = 1
    kind = "diverged"
