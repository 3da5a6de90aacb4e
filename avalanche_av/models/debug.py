"""The debug-checks switch: validations that cost a host sync per step, off by default.

Some checks read tensor *values* on the host (e.g. that every patch index of a subset lies in
``[0, N)``: ``int(idx.min())``, ``int(idx.max())``). On a GPU each read stops the host until the
device has finished the queued work, so they are off on the training hot path; shape and dtype
checks, which need no values, always run. Without the range check an out-of-range index still
fails, later and less clearly: an ``IndexError`` from the positional-embedding lookup on CPU, a
device-side assert on CUDA.

Turn the checks on while developing or debugging a plugin (the test suite runs with them on):

* ``AVALANCHE_AV_DEBUG_CHECKS=1`` in the environment (read at import);
* :func:`set_debug_checks` (``set_debug_checks(True)``), or the :func:`debug_checks` context
  manager for a block.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["debug_checks_enabled", "set_debug_checks", "debug_checks"]

_enabled = os.environ.get("AVALANCHE_AV_DEBUG_CHECKS", "").strip().lower() not in ("", "0", "false", "no", "off")


def debug_checks_enabled() -> bool:
    """Whether the value-reading (host-syncing) validations run."""
    return _enabled


def set_debug_checks(enabled: bool) -> bool:
    """Turn the value-reading validations on or off for the process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


@contextlib.contextmanager
def debug_checks(enabled: bool = True) -> Iterator[None]:
    """Context manager: the debug checks ``enabled`` inside the block, the previous setting after it."""
    previous = set_debug_checks(enabled)
    try:
        yield
    finally:
        set_debug_checks(previous)
