"""Errors raised by the data I/O layer.

Both derive from :class:`ValueError` so that callers that only know "bad input"
can still catch them.
"""
from __future__ import annotations

import os
from typing import Union

__all__ = ["ClipDecodeError", "ManifestError"]

PathLike = Union[str, "os.PathLike[str]"]


class ClipDecodeError(ValueError):
    """A clip (video file, audio file or frame folder) could not be decoded.

    Attributes:
        path: the offending file, as a string.
        reason: what went wrong, e.g. ``"file not found"``, ``"no audio stream"``,
            ``"too short: audio lasts 0.12 s, need at least 0.50 s"``.

    The message always starts with the path so that a log line alone identifies
    the file.
    """

    def __init__(self, path: PathLike, reason: str = "") -> None:
        self.path = os.fspath(path)
        self.reason = reason
        # ``reason`` may be empty when torch's DataLoader re-raises a worker error
        # with the formatted message as the only argument; keep that message intact.
        super().__init__(f"{self.path}: {reason}" if reason else self.path)

    def __reduce__(self):
        # Default exception pickling passes only ``self.args`` (the message) back to
        # ``__init__``, which would lose ``reason``; DataLoader workers pickle errors.
        return (type(self), (self.path, self.reason))


class ManifestError(ValueError):
    """A manifest or label table is malformed, or refers to files that do not exist."""
