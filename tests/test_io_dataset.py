"""AVClipDataset (contract tuple, skip/raise modes) and scan_clips."""
from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_av.benchmarks.io import AVClipDataset, ClipDecodeError, scan_clips
from tests.test_io_decode import make_clip_set

KW = dict(n_frames=4, image_size=32, target_length=64, num_mel_bins=32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    return make_clip_set(tmp_path_factory.mktemp("dsclips"))


def _entries(clips, names, targets=None):
    return pd.DataFrame({
        "video_path": [str(clips[n]) for n in names],
        "target": targets if targets is not None else list(range(len(names))),
        "clip_id": [100 + i for i in range(len(names))],
    })


def test_contract_tuple(clips):
    ds = AVClipDataset(_entries(clips, ["good", "good2"], [3, -1]), audio_dtype=torch.float16, **KW)
    assert len(ds) == 2
    audio, video, target, clip_id = ds[0]
    assert audio.shape == (64, 32) and audio.dtype == torch.float16
    assert video.shape == (4, 3, 32, 32) and video.dtype == torch.uint8
    assert target.dtype == torch.int64 and target.dim() == 0 and int(target) == 3
    assert clip_id.dtype == torch.int64 and clip_id.dim() == 0 and int(clip_id) == 100
    assert ds.targets.tolist() == [3, -1] and ds.targets.dtype == torch.int64
    assert ds.clip_ids.tolist() == [100, 101]
    # Evaluation mode is deterministic; negative indices work like lists.
    a2, v2, _, c2 = ds[-2]
    assert torch.equal(a2, audio) and torch.equal(v2, video) and int(c2) == 100


def test_defaults_and_audio_path_column(clips):
    entries = [
        {"video_path": str(clips["noaudio"]), "audio_path": str(clips["audio_only"])},
        {"video_path": str(clips["good"]), "wav": ""},
    ]
    ds = AVClipDataset(entries, train=True, **KW)
    assert ds.targets.tolist() == [-1, -1] and ds.clip_ids.tolist() == [0, 1]
    assert ds.audio_paths == [str(clips["audio_only"]), str(clips["good"])]
    for i in range(2):
        audio, video, _, _ = ds[i]
        assert audio.dtype == torch.float32 and audio.shape == (64, 32) and video.shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="video_path"):
        AVClipDataset([{"wav": "x.wav"}], **KW)
    with pytest.raises(ValueError, match="1 entries have no valid 'video_path'"):
        AVClipDataset([{"video_path": "a.mp4"}, {"wav": "x.wav"}], **KW)
    with pytest.raises(ValueError, match="on_error"):
        AVClipDataset(entries, on_error="ignore", **KW)
    with pytest.raises(ValueError, match="unique"):
        AVClipDataset(pd.DataFrame({"video_path": ["a", "b"], "clip_id": [1, 1]}), **KW)
    with pytest.raises(IndexError):
        ds[2]


def test_raise_mode_names_file(clips):
    ds = AVClipDataset(_entries(clips, ["good", "corrupt"]), on_error="raise", **KW)
    with pytest.raises(ClipDecodeError) as ei:
        ds[1]
    assert "corrupt.mp4" in str(ei.value) and ei.value.path == str(clips["corrupt"])


def test_raise_mode_survives_dataloader_workers(clips):
    ds = AVClipDataset(_entries(clips, ["corrupt"]), on_error="raise", **KW)
    with pytest.raises(ClipDecodeError, match="corrupt.mp4"):
        next(iter(DataLoader(ds, batch_size=1, num_workers=1)))


def test_skip_mode_replaces_with_next_readable_and_counts(clips):
    names = ["good", "corrupt", "missing", "good2", "noaudio"]
    ds = AVClipDataset(_entries(clips, names), on_error="skip", **KW)
    with pytest.warns(RuntimeWarning) as rec:
        _, _, target, clip_id = ds[1]
    # corrupt (1) and missing (2) are skipped: clip 3 is returned, with its own target and id.
    assert int(clip_id) == 103 and int(target) == 3
    assert ds.skipped == 1
    msgs = " ".join(str(w.message) for w in rec)
    assert "corrupt.mp4" in msgs and "missing.mp4" in msgs
    assert set(ds.bad_clips) == {f"{clips[n]} | {clips[n]}" for n in ("corrupt", "missing")}
    # Known-bad clips are not decoded again and do not warn again, but still count.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(ds[2][3]) == 103
    assert ds.skipped == 2
    # The last clip has no audio stream: wraps around to clip 0.
    with pytest.warns(RuntimeWarning, match="no audio stream"):
        assert int(ds[4][3]) == 100
    assert ds.skipped == 3
    # Readable clips are never counted.
    assert int(ds[0][3]) == 100 and ds.skipped == 3


def test_skip_mode_gives_up(clips):
    ds = AVClipDataset(_entries(clips, ["corrupt", "missing"]), on_error="skip", **KW)
    with pytest.warns(RuntimeWarning), pytest.raises(ClipDecodeError, match="no readable clip"):
        ds[0]
    ds = AVClipDataset(_entries(clips, ["corrupt", "missing", "good"]), on_error="skip", max_skip=1, **KW)
    with pytest.warns(RuntimeWarning), pytest.raises(ClipDecodeError, match="max_skip=1"):
        ds[0]


def test_min_duration_marks_short_clips_bad(clips):
    ds = AVClipDataset(_entries(clips, ["short", "good"]), on_error="skip", min_duration=0.5, **KW)
    with pytest.warns(RuntimeWarning, match="too short"):
        assert int(ds[0][3]) == 101


def test_pickle_and_dataloader(clips):
    ds = AVClipDataset(_entries(clips, ["good", "good2", "good", "good2"]), train=True, **KW)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2.video_paths == ds.video_paths and torch.equal(ds2.targets, ds.targets)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    audio, video, target, clip_id = batch
    assert audio.shape == (4, 64, 32) and video.shape == (4, 4, 3, 32, 32) and video.dtype == torch.uint8
    assert target.tolist() == [0, 1, 2, 3] and clip_id.tolist() == [100, 101, 102, 103]


def test_scan_clips_reports(clips):
    names = ["good", "noaudio", "short", "corrupt", "missing", "audio_only"]
    df = scan_clips([clips[n] for n in names], num_workers=2, min_duration=0.5, decode=True)
    assert list(df.columns) == ["path", "ok", "reason", "duration", "has_audio", "has_video"]
    assert df["path"].tolist() == [str(clips[n]) for n in names]
    by = df.set_index(df["path"].map(lambda p: Path(p).stem))
    assert bool(by.loc["good", "ok"]) and by.loc["good", "reason"] == ""
    assert by.loc["good", "duration"] == pytest.approx(2.0, abs=0.1)
    assert bool(by.loc["good", "has_audio"]) and bool(by.loc["good", "has_video"])
    assert by.loc["noaudio", "reason"] == "no audio stream" and not by.loc["noaudio", "has_audio"]
    assert by.loc["short", "reason"].startswith("too short")
    assert "corrupt" in by.loc["corrupt", "reason"]
    assert by.loc["missing", "reason"] == "file not found" and math.isnan(by.loc["missing", "duration"])
    assert by.loc["audio_only", "reason"] == "no video stream"
    assert df["ok"].tolist() == [True, False, False, False, False, False]
    # Without audio requirement or minimum, the video-only and short clips pass; sequential mode.
    df2 = scan_clips([clips["noaudio"], clips["short"]], num_workers=1, require_audio=False)
    assert df2["ok"].tolist() == [True, True]
