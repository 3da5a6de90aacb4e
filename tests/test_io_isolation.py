"""Crash containment: a worker pool that survives native crashes and hangs, and run_contained.

The crashes are planted: a job that sends itself SIGSEGV (what a native decoder bug does), one
that calls ``os._exit`` (a C library calling ``exit``), one that hangs, one that raises.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import time

import numpy as np
import pytest

from avalanche_av.benchmarks.io import ClipDecodeError, ContainedPool, categorise_reason, load_audio, run_contained
from avalanche_av.benchmarks.io.writer import write_av_clip


def planted(arg: str) -> str:
    """Module level, so that it also works with the "spawn" start method."""
    if arg == "segv":
        faulthandler.disable()  # pytest's handler would print the planted crash's traceback
        os.kill(os.getpid(), signal.SIGSEGV)
    if arg == "exit":
        os._exit(3)
    if arg == "hang":
        time.sleep(120)
    if arg == "raise":
        raise RuntimeError("boom")
    return arg.upper()


def test_pool_survives_crashes_and_names_each_one():
    jobs = list(enumerate(["a", "segv", "b", "exit", "c", "raise", "d"]))
    started: list[int] = []
    with ContainedPool(planted, num_workers=2) as pool:
        out = {o.key: o for o in pool.imap(jobs, on_start=started.append)}
    # Every job has exactly one outcome; on_start saw every job before it ran.
    assert sorted(out) == list(range(7)) and sorted(started) == list(range(7))
    assert [out[k].result for k in (0, 2, 4, 6)] == ["A", "B", "C", "D"]
    assert out[1].crashed and not out[1].ok and "SIGSEGV" in out[1].error
    assert out[3].crashed and "exited with code 3" in out[3].error
    # A Python exception is the job's error, not a crash: the worker lives on.
    assert not out[5].ok and not out[5].crashed and out[5].error == "RuntimeError: boom"
    assert pool.restarts == 2
    assert categorise_reason(out[1].error) == "crashed"


def test_pool_kills_a_hung_job_and_goes_on():
    with ContainedPool(planted, num_workers=1, timeout=2.0) as pool:
        out = list(pool.imap([("h", "hang"), ("x", "x")]))
    by_key = {o.key: o for o in out}
    assert by_key["h"].timed_out and "timed out after 2 s" in by_key["h"].error
    assert by_key["x"].ok and by_key["x"].result == "X"
    assert categorise_reason(by_key["h"].error) == "timeout"


def test_pool_arguments_are_checked():
    with pytest.raises(ValueError, match="num_workers"):
        ContainedPool(planted, num_workers=0)
    with pytest.raises(ValueError, match="timeout"):
        ContainedPool(planted, num_workers=1, timeout=0)


def test_run_contained_maps_a_crash_to_a_clip_decode_error(tmp_path):
    clip = tmp_path / "sub" / "clip.mp4"
    with pytest.raises(ClipDecodeError) as ei:
        run_contained(planted, "segv", path=clip)
    assert ei.value.path == str(clip) and "decoder crashed" in ei.value.reason and "SIGSEGV" in ei.value.reason
    assert str(ei.value).startswith(str(clip))
    # A ClipDecodeError raised by the work comes back intact (path and reason).
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 300)
    with pytest.raises(ClipDecodeError) as ei:
        run_contained(load_audio, bad, path=bad)
    assert ei.value.path == str(bad) and "corrupt" in ei.value.reason
    # Real work returns its value: an 8-channel 48 kHz AAC clip decodes to 16 kHz mono.
    sr = 48000
    audio = np.stack([0.05 * np.sin(2 * np.pi * (100 + 20 * k) * np.arange(sr) / sr) for k in range(8)])
    write_av_clip(tmp_path / "c8.mp4", np.zeros((4, 32, 32, 3), np.uint8), 4.0, audio.astype(np.float32), sr)
    wav = run_contained(load_audio, tmp_path / "c8.mp4", path=tmp_path / "c8.mp4")
    assert wav.shape == (16000,)
