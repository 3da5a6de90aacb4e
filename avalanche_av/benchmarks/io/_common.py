"""Helpers shared by the audio and video readers (private)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

from avalanche_av.benchmarks.io.errors import ClipDecodeError, PathLike

__all__ = ["check_exists", "open_container", "import_decord", "stream_summary", "decord_message", "ffmpeg_message"]

_DECORD: Any = None
_DECORD_TRIED = False


def import_decord() -> Optional[Any]:
    """Return the ``decord`` module, or ``None`` where it is not installed.

    Imported lazily: decord only ships x86_64 wheels, and importing it at package
    import time would make the whole package unusable elsewhere.
    """
    global _DECORD, _DECORD_TRIED
    if not _DECORD_TRIED:
        _DECORD_TRIED = True
        try:
            import decord  # noqa: PLC0415

            # decord's bundled FFmpeg prints its own complaints on stderr for every bad
            # file; our ClipDecodeError already carries the diagnosis.
            decord.logging.set_level(decord.logging.QUIET)
            _DECORD = decord
        except Exception:  # ImportError, or a broken shared library (OSError)
            _DECORD = None
    return _DECORD


_DMLC_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: (Check failed: .*?\) )?")


def decord_message(e: BaseException) -> str:
    """decord's error text without its ``[time] file.cc:line: Check failed: ...`` noise."""
    text = _DMLC_PREFIX.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ffmpeg_message(e: BaseException) -> str:
    """An FFmpeg error's description without the file name PyAV appends."""
    return getattr(e, "strerror", None) or str(e)


def check_exists(path: PathLike, kind: str = "file") -> str:
    """Return ``path`` as a string; raise :class:`ClipDecodeError` if it does not exist."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ClipDecodeError(p, f"{kind} not found")
    return p


def stream_summary(container: Any) -> str:
    """Short description of a PyAV container, used in error messages."""
    kinds = [s.type for s in container.streams]
    fmt = getattr(container.format, "name", "?")
    return f"container format '{fmt}', streams: {', '.join(kinds) if kinds else 'none'}"


def open_container(path: PathLike) -> Any:
    """Open a media file with PyAV, turning every failure into :class:`ClipDecodeError`.

    A file that FFmpeg can open but that holds neither audio nor video (random
    bytes are sometimes probed as a subtitle format) is reported as corrupt.
    """
    import av  # noqa: PLC0415  (kept local: PyAV import is slowish and not always needed)

    p = check_exists(path)
    if Path(p).is_dir():
        raise ClipDecodeError(p, "is a directory, expected a media file")
    try:
        container = av.open(p)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ClipDecodeError(p, f"corrupt or unreadable container ({ffmpeg_message(e)})") from e
    if not container.streams.audio and not container.streams.video:
        summary = stream_summary(container)
        container.close()
        raise ClipDecodeError(p, f"corrupt or unsupported container: no audio or video stream ({summary})")
    return container
