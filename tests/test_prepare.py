"""The ``prepare`` pipeline: cache layout, bad-clip report, resumability, fbank cache, CLI."""
from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from avalanche_av.benchmarks.io import load_fbank, read_manifest
from avalanche_av.benchmarks.io._common import import_decord
from avalanche_av.benchmarks.io.video import decode_frames
from avalanche_av.benchmarks.io.writer import write_av_clip
from avalanche_av.benchmarks.prepare import (
    PrepareConfig,
    categorise_reason,
    find_videos,
    prepare,
    prepare_clip,
    resize_short_side,
)
from avalanche_av.benchmarks.real import RealClipDataset, fake_clip_content

SECONDS, FPS = 2.0, 4.0


def make_src(root: Path, n_good: int = 4) -> dict[str, str]:
    """``n_good`` 48x32 clips (2 s, 4 fps, AAC) in two sub-folders, plus corrupt / silent / short ones."""
    kinds = {}
    for i in range(n_good):
        frames, audio = fake_clip_content(i, SECONDS, FPS, size=32)
        frames = np.concatenate([frames, frames[:, :16]], axis=1)  # 48 rows x 32 cols: not square
        write_av_clip(root / f"part{i % 2}" / f"good{i}.mp4", frames, FPS, audio, 16000)
        kinds[f"good{i}"] = "ok"
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    frames, audio = fake_clip_content(9, SECONDS, FPS, size=32)
    write_av_clip(root / "silent.mp4", frames, FPS, None)
    write_av_clip(root / "short.mp4", frames[:1], FPS, audio[:4000], 16000)
    (root / "notes.txt").write_text("not a video")
    kinds.update(corrupt="unreadable", silent="no_audio", short="too_short")
    return kinds


@pytest.fixture()
def src(tmp_path) -> Path:
    s = tmp_path / "raw"
    make_src(s)
    return s


def test_helpers():
    assert categorise_reason("too short: lasts 0.3 s, need at least 1.0 s") == "too_short"
    assert categorise_reason("no audio stream (container format 'mov', streams: video)") == "no_audio"
    assert categorise_reason("corrupt or unreadable container (Invalid data)") == "unreadable"
    assert categorise_reason("file not found") == "unreadable"
    assert categorise_reason("no video stream") == "no_video"
    assert categorise_reason("something odd") == "other"
    x = torch.zeros(2, 3, 48, 32, dtype=torch.uint8)
    assert resize_short_side(x, 16).shape == (2, 3, 24, 16)
    assert resize_short_side(x, 16, square=True).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        resize_short_side(x.float(), 16)
    with pytest.raises(ValueError, match="fps"):
        PrepareConfig(fps=0)
    with pytest.raises(ValueError, match="audio"):
        PrepareConfig(audio="mp3")  # type: ignore[arg-type]


def test_find_videos_rejects_duplicate_stems(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"0")
    (tmp_path / "b" / "x.mkv").write_bytes(b"0")
    with pytest.raises(ValueError, match="share a file stem"):
        find_videos(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_videos(tmp_path / "nope")


def test_prepare_cache_report_and_resume(src, tmp_path, capsys):
    out = tmp_path / "cache"
    res = prepare(src, out, num_workers=2, progress=False, image_size=16, fps=2.0)
    assert (res.n_total, res.n_processed, res.n_ok, res.n_bad, res.n_skipped) == (7, 7, 4, 3, 0)
    # Bad clips: reported with their names and categories, in the CSV too.
    rep = pd.read_csv(out / "prepare_report.csv")
    assert dict(zip(rep["video_id"], rep["category"])) == {"corrupt": "unreadable", "silent": "no_audio",
                                                           "short": "too_short"}
    assert rep.equals(res.report)
    text = res.summary()
    assert "unreadable: 1" in text and "no_audio: 1" in text and "too_short: 1" in text and "silent" in text
    # The manifest lists the finished clips: frames at 2 fps (2 s -> 4 frames), shorter side 16, 16 kHz wav.
    man = read_manifest(out / "manifest.json")
    assert sorted(man["video_id"]) == ["good0", "good1", "good2", "good3"]
    for _, r in man.iterrows():
        frames = sorted(Path(r["video_path"]).iterdir())
        assert [f.name for f in frames] == [f"frame_{i:04d}.jpg" for i in range(4)]
        from PIL import Image

        with Image.open(frames[0]) as im:
            assert im.size == (16, 24)  # (width, height): aspect kept
        wav, sr = sf.read(r["wav"])
        assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - SECONDS) < 0.05
    # A second run does no work.
    again = prepare(src, out, num_workers=2, progress=False, image_size=16, fps=2.0)
    assert (again.n_processed, again.n_skipped, again.n_ok, again.n_bad) == (0, 7, 0, 0)
    assert len(again.report) == 3 and again.n_cached == 4
    # A clip whose outputs vanished, and a new file, are (re)done; nothing else.
    shutil.rmtree(out / "frames" / "good1")
    frames, audio = fake_clip_content(20, SECONDS, FPS, size=32)
    write_av_clip(src / "new.mp4", frames, FPS, audio, 16000)
    third = prepare(src, out, num_workers=0, progress=False, image_size=16, fps=2.0)
    assert (third.n_processed, third.n_ok, third.n_skipped) == (2, 2, 6)
    assert sorted(read_manifest(out / "manifest.json")["video_id"]) == ["good0", "good1", "good2", "good3", "new"]
    # retry_bad decodes the bad ones again (and finds them bad again).
    retry = prepare(src, out, num_workers=0, progress=False, image_size=16, fps=2.0, retry_bad=True)
    assert (retry.n_processed, retry.n_bad) == (3, 3)
    # Other settings are refused unless overwrite; no temporary leftovers.
    with pytest.raises(ValueError, match="other settings.*image_size"):
        prepare(src, out, num_workers=0, progress=False, image_size=32, fps=2.0)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert json.loads((out / "prepare_config.json").read_text())["image_size"] == 16


def test_prepare_only_and_fbank_cache_matches_audio(src, tmp_path):
    wav_cache, fb_cache = tmp_path / "wav", tmp_path / "fb"
    r1 = prepare(src, wav_cache, num_workers=0, progress=False, image_size=32, square=True, only=["good0", "good3"])
    assert r1.n_total == 2 and r1.n_ok == 2
    r2 = prepare(src, fb_cache, num_workers=0, progress=False, image_size=32, square=True, audio="fbank",
                 num_mel_bins=32, only=["good0", "good3"])
    assert r2.n_ok == 2
    m1, m2 = read_manifest(wav_cache / "manifest.json"), read_manifest(fb_cache / "manifest.json")
    assert m2["wav"].str.endswith(".npy").all()
    entries = lambda m: pd.DataFrame({"video_path": m["video_path"], "audio_path": m["wav"]})  # noqa: E731
    kw = dict(n_frames=2, image_size=32, target_length=128, num_mel_bins=32)
    a = RealClipDataset(entries(m1), **kw)
    b = RealClipDataset(entries(m2), **kw)
    for i in range(2):
        wa, va, *_ = a[i]
        wb, vb, *_ = b[i]
        assert wa.shape == wb.shape == (128, 32) and torch.equal(va, vb)
        vid = m1["video_id"][i]
        orig = load_fbank(src / f"part{int(vid[-1]) % 2}" / f"{vid}.mp4", 128, 32)
        # The fbank cache is the original fbank up to float16 rounding of the stored values.
        assert torch.allclose(wb, orig, atol=5e-3), float((wb - orig).abs().max())
        # The 16-bit wav adds a quantisation floor that shows only in bins with (digitally) no
        # energy; wherever the tone has energy the fbank is reproduced.
        loud = orig > -1.0
        assert loud.float().mean() > 0.2 and torch.allclose(wa[loud], orig[loud], atol=2e-2)
    with pytest.raises(Exception, match="mel bins"):
        RealClipDataset(entries(m2), n_frames=2, image_size=32, target_length=128, num_mel_bins=64)[0]


@pytest.mark.skipif(import_decord() is None, reason="decord not installed")
def test_decord_and_pyav_decode_prepared_source_alike(src):
    clip = src / "part0" / "good0.mp4"
    a = decode_frames(clip, 4, backend="decord").astype(np.int16)
    b = decode_frames(clip, 4, backend="pyav").astype(np.int16)
    assert a.shape == b.shape == (4, 48, 32, 3)
    assert np.abs(a - b).max() <= 3


def test_prepare_cli(src, tmp_path, capsys):
    from avalanche_av.cli import main

    out = tmp_path / "cli_cache"
    only = tmp_path / "only.txt"
    only.write_text("good0\ncorrupt\n")
    rc = main(["prepare", str(src), str(out), "--num-workers", "0", "--no-progress", "--image-size", "16",
               "--only", str(only)])
    text = capsys.readouterr().out
    assert rc == 0 and "2 processed in this run (1 ok, 1 bad)" in text and "corrupt (unreadable)" in text
    assert main(["prepare", str(src), str(out), "--num-workers", "0", "--no-progress", "--image-size", "16",
                 "--only", str(only)]) == 0
    assert "0 processed in this run" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "missing"), str(out)]) == 2


# --------------------------------------------------------------------------- hostile inputs
def surround_clip(path: Path, seconds: float = SECONDS) -> Path:
    """An mp4 whose audio is 8-channel 48 kHz AAC (7.1): the clip that segfaulted the decoder."""
    sr = 48000
    frames, _ = fake_clip_content(3, seconds, FPS, size=32)
    t = np.arange(int(seconds * sr)) / sr
    audio = np.stack([0.03 * (k + 1) * np.sin(2 * np.pi * (60 if k == 3 else 150 + 40 * k) * t)
                      for k in range(8)]).astype(np.float32)
    return write_av_clip(path, frames, FPS, audio, sr)


def crash_on_stem(path, out_dir, cfg):
    """A clip_fn whose decoder 'crashes natively' (SIGSEGV) on the clip named crash.mp4."""
    if Path(path).stem == "crash":
        faulthandler.disable()  # pytest's handler would print the planted crash's traceback
        os.kill(os.getpid(), signal.SIGSEGV)
    return prepare_clip(path, out_dir, cfg)


def sigkill_on_stem(path, out_dir, cfg):
    """A clip_fn that SIGKILLs its own process on the clip named zkill.mp4 (the OOM killer, kill -9)."""
    if Path(path).stem == "zkill":
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare_clip(path, out_dir, cfg)


def _never_crash(path, out_dir, cfg):
    assert Path(path).stem != "crash", "a clip recorded as crashed was decoded again"
    return prepare_clip(path, out_dir, cfg)


def _small_src(root: Path, n_good: int = 2) -> None:
    for i in range(n_good):
        frames, audio = fake_clip_content(i, SECONDS, FPS, size=32)
        write_av_clip(root / f"good{i}.mp4", frames, FPS, audio, 16000)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_prepare_eight_channel_clip(tmp_path, num_workers):
    src = tmp_path / "raw"
    _small_src(src)
    surround_clip(src / "surround.mp4")
    res = prepare(src, tmp_path / "cache", num_workers=num_workers, progress=False, image_size=16, fps=2.0)
    assert (res.n_ok, res.n_bad, res.n_crashed) == (3, 0, 0)
    man = read_manifest(tmp_path / "cache" / "manifest.json").set_index("video_id")
    wav, sr = sf.read(man.loc["surround", "wav"])
    assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - SECONDS) < 0.05 and np.abs(wav).max() > 0.01


def test_prepare_contains_a_decoder_crash_and_never_retries_it(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "cache"
    _small_src(src, 3)
    surround_clip(src / "crash.mp4")
    res = prepare(src, out, num_workers=2, progress=False, image_size=16, fps=2.0, clip_fn=crash_on_stem)
    # The run completes: the crash costs its clip only, reported with the signal; the rest is cached.
    assert (res.n_total, res.n_ok, res.n_bad, res.n_crashed) == (4, 3, 1, 1)
    rep = res.report.set_index("video_id")
    assert rep.loc["crash", "category"] == "crashed" and "SIGSEGV" in rep.loc["crash", "reason"]
    assert "crashed or hung the decoder" in res.summary()
    assert sorted(read_manifest(out / "manifest.json")["video_id"]) == ["good0", "good1", "good2"]
    # A rerun decodes nothing: the crashed clip is recorded as bad and skipped.
    again = prepare(src, out, num_workers=0, progress=False, image_size=16, fps=2.0, clip_fn=_never_crash)
    assert (again.n_processed, again.n_skipped) == (0, 4) and list(again.report["video_id"]) == ["crash"]


def _prepare_child(src, out, clip_fn, manifest_interval=10.0):
    prepare(src, out, num_workers=0, progress=False, image_size=16, fps=2.0, clip_fn=clip_fn,
            manifest_interval=manifest_interval)


def _run_child(*args, **kwargs) -> int:
    import multiprocessing as mp

    p = mp.get_context("fork").Process(target=_prepare_child, args=args, kwargs=kwargs)
    p.start()
    p.join(120)
    return p.exitcode


def test_in_process_crash_is_logged_before_decoding_and_skipped_on_rerun(tmp_path):
    # num_workers=0 decodes in the run's own process: the crash kills the run (here a child
    # process standing for the CLI). The clip was logged as attempted first, so the rerun
    # records it as crashed instead of dying on it again.
    src, out = tmp_path / "raw", tmp_path / "cache"
    _small_src(src, 2)
    surround_clip(src / "crash.mp4")
    assert _run_child(src, out, crash_on_stem) == -signal.SIGSEGV
    log = [json.loads(line) for line in (out / "prepare_log.jsonl").read_text().splitlines()]
    assert log[-1] == {"video_id": "crash", "source": str(src / "crash.mp4"), "status": "started",
                       "in_process": True}
    res = prepare(src, out, num_workers=0, progress=False, image_size=16, fps=2.0, clip_fn=_never_crash)
    assert res.n_died_earlier == 1 and res.n_bad == 0 and res.n_ok == 2  # crash.mp4 sorts first: nothing else done
    rep = res.report.set_index("video_id")
    assert rep.loc["crash", "category"] == "crashed" and "earlier run" in rep.loc["crash", "reason"]
    assert "killed an earlier run" in res.summary()
    # --retry-bad tries it again (here in a worker, where the crash is contained).
    retry = prepare(src, out, num_workers=1, progress=False, image_size=16, fps=2.0, retry_bad=True,
                    clip_fn=crash_on_stem)
    assert (retry.n_processed, retry.n_crashed) == (1, 1)


def test_sigkill_leaves_a_usable_manifest(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "cache"
    _small_src(src, 3)
    frames, audio = fake_clip_content(7, SECONDS, FPS, size=32)
    write_av_clip(src / "zkill.mp4", frames, FPS, audio, 16000)  # sorts last
    assert _run_child(src, out, sigkill_on_stem, manifest_interval=0.0) == -signal.SIGKILL
    # The manifest is complete JSON listing the clips finished before the kill, with their files.
    man = read_manifest(out / "manifest.json")
    assert sorted(man["video_id"]) == ["good0", "good1", "good2"]
    assert all(Path(p).is_dir() for p in man["video_path"]) and all(Path(p).is_file() for p in man["wav"])
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # The killed clip was decoded in the run's own process: the rerun records it and finishes.
    res = prepare(src, out, num_workers=0, progress=False, image_size=16, fps=2.0)
    assert res.n_died_earlier == 1 and res.n_cached == 3
