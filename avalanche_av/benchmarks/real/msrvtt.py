"""MSR-VTT "1k-A" style split manifests (Yu et al. 2018's split): reader and a fake layout.

Layout of a local copy::

    ROOT/
      MSRVTT_train.9k.csv          header ``video_id`` (other columns ignored); 9,000 clips
                                   (``MSRVTT_train.7k.csv`` is the 7k variant)
      MSRVTT_JSFUSION_test.csv     header ``key,vid_key,video_id,sentence``; the 1,000 test clips
      videos/all/video<N>.mp4      (or ``videos/``; ``video_dir=`` points elsewhere)

Only the clip ids matter for audio <-> video retrieval; captions are ignored. Each id is
``video`` followed by digits. A clip listed twice in one manifest is used once (the JSFusion
file has one row per test clip, caption files may have more).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd

from ..io.errors import ManifestError, PathLike
from ._csv import read_csv_strict

__all__ = ["MSRVTT_TRAIN_FILES", "MSRVTT_TEST_FILE", "MSRVTTTable", "read_msrvtt_split", "read_msrvtt", "make_fake_msrvtt"]

MSRVTT_TRAIN_FILES = ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv")
MSRVTT_TEST_FILE = "MSRVTT_JSFUSION_test.csv"
_ID = re.compile(r"^video\d+$")
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def read_msrvtt_split(path: PathLike, split: Optional[str] = None) -> pd.DataFrame:
    """Read one split manifest.

    Returns:
        DataFrame with ``video_id``, ``line`` (1-based line of its first row) and ``split``
        (default: the file's stem), one row per distinct clip in file order; ``attrs['duplicates']``
        counts the rows that repeated a clip.

    Raises:
        ManifestError: missing file, a line whose field count differs from the header's, no ``video_id``
            column, or an id that is not ``video<digits>`` (the message names the file and line).
    """
    p = Path(path)
    df = read_csv_strict(p, "MSR-VTT split manifest")
    if "video_id" not in df.columns:
        raise ManifestError(f"{p}: no video_id column; the header has {[c for c in df.columns if c != 'line']}")
    ids = df["video_id"]
    lines = df["line"].to_numpy()
    bad = ~ids.str.match(_ID)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ManifestError(f"{p}: line {int(lines[i])}: video_id {ids.iloc[i]!r} is not 'video<digits>' "
                            f"({int(bad.sum())} such rows)")
    out = pd.DataFrame({"video_id": ids, "line": lines})
    first = ~out["video_id"].duplicated()
    n_dup = int((~first).sum())
    out = out[first.to_numpy()].reset_index(drop=True)
    out["split"] = split if split is not None else p.stem
    out.attrs["duplicates"] = n_dup
    return out


@dataclass
class MSRVTTTable:
    """A read MSR-VTT split: ``clips`` (``video_id, line, split, video_path``), the manifests used,
    the ids without a file (``missing``) and the rows that repeated a clip (``duplicates``)."""

    clips: pd.DataFrame
    manifests: dict[str, str]
    missing: list[str] = field(default_factory=list)
    duplicates: int = 0


def read_msrvtt(
    root: PathLike,
    train_csv: Optional[PathLike] = None,
    test_csv: Optional[PathLike] = None,
    video_dir: Optional[PathLike] = None,
    on_missing: Literal["error", "skip"] = "error",
) -> MSRVTTTable:
    """Read the train and test manifests of an MSR-VTT copy and find the clip files.

    Args:
        root: dataset root.
        train_csv, test_csv: manifests (default: ``MSRVTT_train.9k.csv`` (else ``.7k``) and
            ``MSRVTT_JSFUSION_test.csv`` in ``root``, relative paths resolved against it).
        video_dir: clip folder, default ``ROOT/videos/all`` (else ``ROOT/videos``, else ``ROOT``).
        on_missing: a listed clip without a file raises (naming the file) or is left out.

    Raises:
        FileNotFoundError: ``root`` or the video folder does not exist.
        ManifestError: a bad or missing manifest, a clip in both splits, a missing clip file.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"MSR-VTT root {r} does not exist or is not a folder")
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")

    def resolve(p: Optional[PathLike], defaults: tuple[str, ...]) -> Path:
        if p is not None:
            q = Path(p)
            return q if q.is_absolute() else r / q
        for name in defaults:
            if (r / name).is_file():
                return r / name
        return r / defaults[0]

    tr = resolve(train_csv, MSRVTT_TRAIN_FILES)
    te = resolve(test_csv, (MSRVTT_TEST_FILE,))
    a, b = read_msrvtt_split(tr, "train"), read_msrvtt_split(te, "test")
    both = sorted(set(a["video_id"]) & set(b["video_id"]))
    if both:
        raise ManifestError(f"MSR-VTT: {len(both)} clips are in both {tr} and {te}, e.g. {both[0]!r}")
    df = pd.concat([a, b], ignore_index=True)
    if video_dir is not None:
        vdir = Path(video_dir)
    else:
        vdir = next((d for d in (r / "videos" / "all", r / "videos") if d.is_dir()), r)
    if not vdir.is_dir():
        raise FileNotFoundError(f"MSR-VTT video folder {vdir} does not exist")
    files = {}
    for name in os.listdir(vdir):
        stem, suf = os.path.splitext(name)
        if suf.lower() in _VIDEO_SUFFIXES:
            files.setdefault(stem, str(vdir / name))
    df["video_path"] = [files.get(v, "") for v in df["video_id"]]
    miss = (df["video_path"] == "").to_numpy()
    missing = df["video_id"][miss].tolist()
    if missing and on_missing == "error":
        first = df[miss].iloc[0]
        src = tr if first["split"] == "train" else te
        raise ManifestError(f"MSR-VTT: {len(missing)} of {len(df)} listed clips have no file under {vdir}; "
                            f"e.g. {vdir / (first['video_id'] + '.mp4')} ({src} line {first['line']})")
    df = df[~miss].reset_index(drop=True)
    return MSRVTTTable(clips=df, manifests={"train": str(tr), "test": str(te)}, missing=missing,
                       duplicates=int(a.attrs["duplicates"] + b.attrs["duplicates"]))


def make_fake_msrvtt(root: PathLike, n_train: int = 8, n_test: int = 4, media: bool = False, seconds: float = 2.0,
                     size: int = 32) -> dict[str, list[str]]:
    """Write a fake MSR-VTT copy: both manifests and ``videos/all/video<N>.mp4``.

    With ``media`` the clips are decodable (frames and a tone that both depend on the clip), else
    empty placeholder files. Returns split -> ids.
    """
    r = Path(root)
    vdir = r / "videos" / "all"
    vdir.mkdir(parents=True, exist_ok=True)
    train = [f"video{i}" for i in range(n_train)]
    test = [f"video{n_train + i}" for i in range(n_test)]
    pd.DataFrame({"video_id": train}).to_csv(r / MSRVTT_TRAIN_FILES[0], index=False)
    pd.DataFrame({"key": [f"ret{i}" for i in range(n_test)], "vid_key": [f"msr{v[5:]}" for v in test],
                  "video_id": test, "sentence": ["a clip"] * n_test}).to_csv(r / MSRVTT_TEST_FILE, index=False)
    if media:
        from .fake import fake_clip_content  # noqa: PLC0415
        from ..io.writer import write_av_clip  # noqa: PLC0415

        for i, v in enumerate(train + test):
            frames, audio = fake_clip_content(i, seconds=seconds, fps=4.0, size=size)
            write_av_clip(vdir / f"{v}.mp4", frames, 4.0, audio, 16000)
    else:
        for v in train + test:
            (vdir / f"{v}.mp4").write_bytes(b"")
    return {"train": train, "test": test}
