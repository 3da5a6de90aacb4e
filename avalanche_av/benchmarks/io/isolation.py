"""Decoding untrusted media where a native crash is contained.

FFmpeg, PyAV and decord are C code: a malformed or unusual file can crash them with a
signal (SIGSEGV, SIGABRT) that no Python ``try`` catches, taking the whole process with
it. The helpers here run such work in worker processes, so that a crash or a hang costs
one clip, never the run:

- :class:`ContainedPool`: ``num_workers`` long-lived worker processes, one job at a time
  each. A worker that dies (signal, ``os._exit``, out of memory) or exceeds ``timeout``
  is replaced by a fresh one, and only the job it was running fails, with a reason such
  as ``"decoder crashed (worker killed by signal SIGSEGV)"``. ``concurrent.futures``'
  ``ProcessPoolExecutor`` cannot do this: one dead worker breaks the whole pool
  (``BrokenProcessPool``) and fails every pending job without saying which one killed it.
- :func:`run_contained`: one call in a fresh process; a crash or time-out raises
  :class:`~avalanche_av.benchmarks.io.errors.ClipDecodeError` naming the file.

See ``docs/reliability.md`` for what is guaranteed.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional

from avalanche_av.benchmarks.io.errors import ClipDecodeError, PathLike

__all__ = ["CRASH_PREFIX", "TIMEOUT_PREFIX", "ContainedPool", "JobOutcome", "crash_reason", "run_contained"]

#: Every reason for a job whose worker died starts with this (see ``categorise_reason``).
CRASH_PREFIX = "decoder crashed"
#: Every reason for a job that ran past its time limit starts with this.
TIMEOUT_PREFIX = "decoder timed out"


def crash_reason(exitcode: Optional[int]) -> str:
    """Describe how a worker process ended: ``"decoder crashed (worker killed by signal SIGSEGV)"``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"{CRASH_PREFIX} (worker killed by signal {name})"
    if exitcode is None:
        return f"{CRASH_PREFIX} (worker vanished)"
    return f"{CRASH_PREFIX} (worker exited with code {exitcode})"


@dataclass
class JobOutcome:
    """What became of one job.

    Attributes:
        key: the job's key, as given.
        ok: ``fn`` returned (``result`` holds its value).
        result: ``fn``'s return value, or ``None``.
        error: ``""`` when ok; otherwise the reason: a crash (starts with
            :data:`CRASH_PREFIX`), a time-out (:data:`TIMEOUT_PREFIX`) or a Python
            exception raised by ``fn`` (``"TypeName: message"``).
    """

    key: Hashable
    ok: bool
    result: Any = None
    error: str = ""

    @property
    def crashed(self) -> bool:
        return self.error.startswith(CRASH_PREFIX)

    @property
    def timed_out(self) -> bool:
        return self.error.startswith(TIMEOUT_PREFIX)


def _worker_main(conn: Any, fn: Callable[[Any], Any], initializer: Optional[Callable[[], None]]) -> None:
    # Ctrl-C is the parent's business: it stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, arg = msg
        try:
            out = (key, True, fn(arg), "")
        except BaseException as e:  # noqa: BLE001  (any Python error is this job's result)
            out = (key, False, None, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except Exception as e:  # an unpicklable result: report it instead
            conn.send((key, False, None, f"result could not be sent back ({type(e).__name__}: {e})"))


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any], initializer: Optional[Callable[[], None]]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, initializer), daemon=True)
        self.proc.start()
        child.close()
        self.key: Optional[Hashable] = None
        self.deadline = float("inf")

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class ContainedPool:
    """Run ``fn(arg)`` for many jobs in worker processes that may crash.

    Args:
        fn: the job function, called as ``fn(arg)`` in a worker. With the ``"spawn"``
            start method it must be importable (a module-level function).
        num_workers: worker processes (>= 1).
        timeout: seconds one job may run before its worker is killed (``None``: no limit).
        start_method: ``"fork"`` (default where available: workers start at once) or
            ``"spawn"``.
        initializer: called once in each worker before its first job.

    A worker that dies while running a job (any signal, ``os._exit``, the OOM killer) or
    runs past ``timeout`` is killed and replaced; that job's :class:`JobOutcome` carries
    the reason and every other job is unaffected. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        num_workers: int,
        timeout: Optional[float] = None,
        start_method: Optional[str] = None,
        initializer: Optional[Callable[[], None]] = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self.fn, self.num_workers, self.timeout = fn, int(num_workers), timeout
        self.initializer = initializer
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        #: Workers replaced after a crash or a time-out.
        self.restarts = 0

    def __enter__(self) -> "ContainedPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(kill=exc[0] is not None)

    def close(self, kill: bool = False) -> None:
        """Stop every worker (``kill``: at once, without waiting for a running job)."""
        for w in self._workers:
            w.stop(kill=kill or w.key is not None)
        self._workers = []

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self.fn, self.initializer)
        self._workers.append(w)
        return w

    def _retire(self, w: _Worker) -> None:
        w.stop(kill=True)
        self._workers.remove(w)
        self.restarts += 1

    def imap(self, jobs: Iterable[tuple[Hashable, Any]], on_start: Optional[Callable[[Hashable], None]] = None
             ) -> Iterator[JobOutcome]:
        """Run ``(key, arg)`` jobs; yield a :class:`JobOutcome` per job as it finishes.

        Args:
            jobs: consumed lazily, at most one job per idle worker ahead.
            on_start: called with a job's key in this process just before the job is
                handed to a worker (e.g. to log it as attempted).
        """
        it = iter(jobs)
        exhausted = False
        while True:
            # Hand a job to every idle worker (starting workers up to num_workers).
            while not exhausted:
                idle = [w for w in self._workers if w.key is None]
                if not idle and len(self._workers) < self.num_workers:
                    idle = [self._spawn()]
                if not idle:
                    break
                try:
                    key, arg = next(it)
                except StopIteration:
                    exhausted = True
                    break
                w = idle[0]
                if not w.proc.is_alive():  # died between jobs: replace it, the job is not its fault
                    self._retire(w)
                    it = _prepend((key, arg), it)
                    continue
                if on_start is not None:
                    on_start(key)
                try:
                    w.conn.send((key, arg))
                except (OSError, ValueError) as e:  # the worker died while idle, or arg unpicklable
                    self._retire(w)
                    yield JobOutcome(key, False, None, f"{CRASH_PREFIX} (could not hand the job over: {e})")
                    continue
                w.key = key
                w.deadline = time.monotonic() + self.timeout if self.timeout is not None else float("inf")
            busy = [w for w in self._workers if w.key is not None]
            if not busy:
                return
            now = time.monotonic()
            wait_s = max(0.0, min(w.deadline for w in busy) - now) if self.timeout is not None else None
            ready = set(wait_ready([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s))
            for w in busy:
                key = w.key
                if w.conn in ready or (w.proc.sentinel in ready and w.conn.poll()):
                    try:
                        _, ok, result, error = w.conn.recv()
                    except (EOFError, OSError):
                        w.proc.join(timeout=5)
                        reason = crash_reason(w.proc.exitcode)
                        self._retire(w)
                        yield JobOutcome(key, False, None, reason)
                        continue
                    w.key, w.deadline = None, float("inf")
                    yield JobOutcome(key, bool(ok), result, error)
                elif w.proc.sentinel in ready:
                    w.proc.join(timeout=5)
                    reason = crash_reason(w.proc.exitcode)
                    self._retire(w)
                    yield JobOutcome(key, False, None, reason)
                elif time.monotonic() >= w.deadline:
                    self._retire(w)
                    yield JobOutcome(key, False, None, f"{TIMEOUT_PREFIX} after {self.timeout:g} s (worker killed)")


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def run_contained(
    fn: Callable[[Any], Any],
    arg: Any,
    path: PathLike,
    timeout: Optional[float] = None,
    start_method: Optional[str] = None,
) -> Any:
    """Return ``fn(arg)`` computed in a fresh worker process.

    Args:
        fn: the work, e.g. ``functools.partial(load_audio, backend="pyav")`` with ``arg``
            the file; with ``"spawn"`` it must be picklable.
        path: the file the work reads, named in errors.
        timeout: seconds before the worker is killed (``None``: no limit).

    Raises:
        ClipDecodeError: the worker crashed (``"decoder crashed (worker killed by signal
            SIGSEGV)"``) or timed out; the message names ``path``. A ``ClipDecodeError``
            raised by ``fn`` itself is re-raised as it is; any other exception of ``fn``
            becomes a ``ClipDecodeError`` with its type and message.
    """
    with ContainedPool(_ReturnErrors(fn), 1, timeout=timeout, start_method=start_method) as pool:
        (out,) = list(pool.imap([(os.fspath(path), arg)]))
    if not out.ok:
        raise ClipDecodeError(path, out.error)
    if isinstance(out.result, _RaisedDecodeError):
        raise ClipDecodeError(out.result.path, out.result.reason)
    return out.result


@dataclass
class _RaisedDecodeError:
    path: str
    reason: str


class _ReturnErrors:
    """Wrap ``fn`` so that a ClipDecodeError comes back with its path and reason intact."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, arg: Any) -> Any:
        try:
            return self.fn(arg)
        except ClipDecodeError as e:
            return _RaisedDecodeError(e.path, e.reason)
