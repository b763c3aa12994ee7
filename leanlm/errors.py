"""User-facing errors.

Every error a user can cause (bad name, bad file, bad option) is a `LeanlmError`. The CLI prints
its message on one line and exits non-zero; the Python API lets it propagate. Anything else that
escapes is a bug in leanlm.
"""
from __future__ import annotations


class LeanlmError(Exception):
    """A problem the user can fix; the message says how, on one line."""


class ConfigError(LeanlmError, ValueError):
    """A configuration value is invalid."""


class ArtifactError(LeanlmError):
    """A model directory is missing, incomplete or corrupt."""


class DataError(LeanlmError):
    """A dataset or data file is missing, empty or malformed."""


class UnsupportedError(LeanlmError):
    """A technique cannot run on this model, backend or CPU."""


def did_you_mean(name: str, valid: list[str] | tuple[str, ...], what: str) -> str:
    """One-line message for an unknown name, listing the valid ones."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid: {', '.join(sorted(valid))}"
