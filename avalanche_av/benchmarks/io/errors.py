"""Errors raised by the data I/O layer.

Both derive from :class:`ValueError` so that callers that only know "bad input"
can still catch them.
"""
from __future__ import annotations

import os
from typing import Union

__all__ = ["BAD_CATEGORIES", "ClipDecodeError", "ManifestError", "categorise_reason"]

#: Categories of bad clips, as counted by ``prepare`` and the benchmarks' data report:
#: ``crashed`` (the decoder died: a native crash, contained in a worker process) and
#: ``timeout`` (the decoder hung) come from ``docs/reliability.md``'s containment.
BAD_CATEGORIES = ("unreadable", "no_audio", "no_video", "too_short", "unsupported", "crashed", "timeout", "other")

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


def categorise_reason(reason: str) -> str:
    """Map a :class:`ClipDecodeError` reason to one of :data:`BAD_CATEGORIES`.

    A reason already prefixed with a category (``"too_short: too short: ..."``, as the
    ``prepare`` report's ``category: reason`` strings are) keeps that category.
    """
    r = reason.strip().lower()
    head = r.split(":", 1)[0].strip()
    if head in BAD_CATEGORIES and ":" in r:
        return head
    if r.startswith("decoder crashed"):
        return "crashed"
    if r.startswith("decoder timed out"):
        return "timeout"
    if r.startswith("too short"):
        return "too_short"
    if r.startswith("unsupported audio stream") or r.startswith("unsupported video stream"):
        return "unsupported"
    if "no audio stream" in r:
        return "no_audio"
    if "no video stream" in r:
        return "no_video"
    if any(k in r for k in ("not found", "corrupt", "unreadable", "could not be decoded", "no decodable",
                            "holds no", "invalid data")):
        return "unreadable"
    return "other"
