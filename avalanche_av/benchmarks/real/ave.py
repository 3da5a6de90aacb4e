"""AVE (Audio-Visual Event localization, Tian et al. 2018): annotation reader and a fake layout.

Layout of a local copy (the official ``AVE_Dataset`` folder)::

    ROOT/
      Annotations.txt        optional; every clip, same format as the split files
      trainSet.txt           Category&VideoID&Quality&StartTime&EndTime, one clip a line
      valSet.txt
      testSet.txt
      AVE/<VideoID>.mp4      10-second clips (``video_dir=`` points elsewhere)

Each line is ``Category&VideoID&Quality&StartTime&EndTime``, e.g.
``Church bell&RUhOCu3LNXM&good&0&10``; a first line spelling the field names is a header and
is skipped. Start and end are whole seconds; segment ``s`` (``[s, s+1)`` seconds) belongs to
the event when ``StartTime <= s < EndTime``, otherwise it is background. Classes are the
categories in sorted order; background is label ``n_classes`` (the last one).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd

from ..io.errors import ManifestError, PathLike

__all__ = [
    "AVE_FIELDS",
    "AVE_SPLIT_FILES",
    "AVETable",
    "read_ave_annotations",
    "read_ave",
    "ave_segment_labels",
    "make_fake_ave",
]

AVE_FIELDS = ("Category", "VideoID", "Quality", "StartTime", "EndTime")
#: split name -> file name in the dataset root.
AVE_SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
_VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def read_ave_annotations(path: PathLike, split: Optional[str] = None, n_segments: int = 10) -> pd.DataFrame:
    """Read one AVE annotation file (``Annotations.txt`` or a split file).

    Args:
        path: the file.
        split: value of the returned ``split`` column (default: the file's stem).
        n_segments: clip length in one-second segments (10 in AVE); ``EndTime`` may not exceed it.

    Returns:
        DataFrame with ``category``, ``video_id``, ``quality`` (str), ``start``, ``end`` (int64),
        ``line`` (1-based line number in the file) and ``split``, in file order.

    Raises:
        ManifestError: missing file; a line without exactly five ``&``-separated fields; an
            empty category or id; non-integer times or times outside ``0 <= start < end <=
            n_segments``; a video id listed twice. The message names the file and the line.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"AVE annotation file {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"AVE annotation file {p}: not UTF-8 text ({e})") from e
    rows, seen = [], {}
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = [x.strip() for x in line.split("&")]
        if len(parts) != len(AVE_FIELDS):
            raise ManifestError(f"{p}: line {i}: expected {len(AVE_FIELDS)} '&'-separated fields "
                                f"{'&'.join(AVE_FIELDS)}, got {len(parts)}: {raw!r}")
        if [x.lower() for x in parts] == [f.lower() for f in AVE_FIELDS]:
            continue  # header
        cat, vid, quality, start, end = parts
        if not cat or not vid:
            raise ManifestError(f"{p}: line {i}: empty Category or VideoID: {raw!r}")
        try:
            s, e = int(start), int(end)
        except ValueError:
            raise ManifestError(f"{p}: line {i}: StartTime and EndTime must be whole seconds, got {start!r}, {end!r}") from None
        if not 0 <= s < e <= n_segments:
            raise ManifestError(f"{p}: line {i}: need 0 <= StartTime < EndTime <= {n_segments}, got {s}, {e}")
        if vid in seen:
            raise ManifestError(f"{p}: line {i}: VideoID {vid!r} already listed on line {seen[vid]}")
        seen[vid] = i
        rows.append((cat, vid, quality, s, e, i))
    df = pd.DataFrame(rows, columns=["category", "video_id", "quality", "start", "end", "line"])
    df[["start", "end", "line"]] = df[["start", "end", "line"]].astype("int64")
    df["split"] = split if split is not None else p.stem
    return df


def ave_segment_labels(start: np.ndarray, end: np.ndarray, target: np.ndarray, n_segments: int,
                       background: int) -> np.ndarray:
    """``(N, n_segments)`` int64 labels: ``target`` inside ``[start, end)``, ``background`` elsewhere."""
    s = np.arange(n_segments)[None, :]
    inside = (s >= np.asarray(start)[:, None]) & (s < np.asarray(end)[:, None])
    return np.where(inside, np.asarray(target, dtype=np.int64)[:, None], background).astype(np.int64)


@dataclass
class AVETable:
    """A read AVE copy.

    Attributes:
        clips: one row per clip: ``category, video_id, quality, start, end, line, split,
            target`` (class index), ``video_path`` (``""`` when missing).
        class_names: sorted categories; background is label ``len(class_names)``.
        segment_labels: ``(N, n_segments)`` int64, aligned with ``clips``.
        missing: video ids without a file (left out when ``on_missing='skip'``).
    """

    clips: pd.DataFrame
    class_names: list[str]
    segment_labels: np.ndarray
    missing: list[str] = field(default_factory=list)

    @property
    def background(self) -> int:
        return len(self.class_names)


def _index_videos(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        for name in sorted(files):
            stem, suf = os.path.splitext(name)
            if suf.lower() in _VIDEO_SUFFIXES and stem not in out:
                out[stem] = os.path.join(dirpath, name)
    return out


def read_ave(
    root: PathLike,
    video_dir: Optional[PathLike] = None,
    splits: Sequence[str] = ("train", "val", "test"),
    n_segments: int = 10,
    on_missing: Literal["error", "skip"] = "error",
) -> AVETable:
    """Read an AVE copy: the split files, the class list and the clip files.

    Args:
        root: the dataset root (see the module docstring).
        video_dir: folder of the clips; default ``ROOT/AVE`` (else ``ROOT``).
        splits: which split files to read.
        n_segments: one-second segments per clip.
        on_missing: a listed clip without a video file raises (``"error"``, naming the file it
            expected) or is left out and listed in ``missing`` (``"skip"``).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ManifestError: a split file is missing or malformed, a clip is in two splits, or a
            video file is missing (``on_missing='error'``).
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"AVE root {r} does not exist or is not a folder")
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    unknown = sorted(set(splits) - set(AVE_SPLIT_FILES))
    if unknown:
        raise ValueError(f"unknown AVE split(s) {unknown}; allowed: {list(AVE_SPLIT_FILES)}")
    parts = [read_ave_annotations(r / AVE_SPLIT_FILES[s], split=s, n_segments=n_segments) for s in splits]
    df = pd.concat(parts, ignore_index=True)
    dup = df["video_id"][df["video_id"].duplicated()]
    if len(dup):
        both = df[df["video_id"] == dup.iloc[0]]["split"].tolist()
        raise ManifestError(f"AVE {r}: {len(dup)} clips are listed in more than one split file, "
                            f"e.g. {dup.iloc[0]!r} in {both}")
    classes = sorted(df["category"].unique().tolist())
    ann = r / "Annotations.txt"
    if ann.is_file():
        # The full list fixes the class set even when a split lacks a category.
        classes = sorted(set(classes) | set(read_ave_annotations(ann, "all", n_segments)["category"]))
    df["target"] = df["category"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    vdir = Path(video_dir) if video_dir is not None else (r / "AVE" if (r / "AVE").is_dir() else r)
    if not vdir.is_dir():
        raise FileNotFoundError(f"AVE video folder {vdir} does not exist")
    videos = _index_videos(vdir)
    df["video_path"] = [videos.get(v, "") for v in df["video_id"]]
    missing_mask = (df["video_path"] == "").to_numpy()
    missing = df["video_id"][missing_mask].tolist()
    if missing and on_missing == "error":
        first = df[missing_mask].iloc[0]
        raise ManifestError(f"AVE: {len(missing)} of {len(df)} clips have no video file under {vdir}; "
                            f"e.g. {vdir / (first['video_id'] + '.mp4')} (listed in "
                            f"{r / AVE_SPLIT_FILES[first['split']]} line {first['line']})")
    df = df[~missing_mask].reset_index(drop=True)
    seg = ave_segment_labels(df["start"].to_numpy(), df["end"].to_numpy(), df["target"].to_numpy(),
                             n_segments, background=len(classes))
    return AVETable(clips=df, class_names=classes, segment_labels=seg, missing=missing)


def make_fake_ave(
    root: PathLike,
    counts: Optional[dict[str, int]] = None,
    categories: Sequence[str] = ("Church bell", "Dog", "Frying (food)"),
    media: bool = False,
    seconds: float = 10.0,
    size: int = 32,
    seed: int = 0,
) -> dict[str, list[tuple]]:
    """Write a fake AVE copy in the official layout (for tests and examples).

    Args:
        root: output folder.
        counts: clips per split (default train 6, val 3, test 3).
        categories: event categories, used round-robin.
        media: write decodable mp4 clips (a tone and coloured frames that both depend on the
            category, loud only inside the event) instead of empty placeholder files.
        seconds, size: clip length and frame side when ``media``.

    Returns:
        split -> list of ``(category, video_id, quality, start, end)`` written.
    """
    counts = dict(counts or {"train": 6, "val": 3, "test": 3})
    r = Path(root)
    (r / "AVE").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple]] = {}
    header = "&".join(AVE_FIELDS)
    k = 0
    all_rows = []
    for split, n in counts.items():
        rows = []
        for _ in range(n):
            cat = categories[k % len(categories)]
            start = int(rng.integers(0, 6))
            end = int(rng.integers(start + 1, 11))
            rows.append((cat, f"ave{k:07d}", "good", start, end))
            k += 1
        written[split] = rows
        all_rows += rows
        lines = [header] + ["&".join(str(x) for x in row) for row in rows]
        (r / AVE_SPLIT_FILES[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (r / "Annotations.txt").write_text("\n".join([header] + ["&".join(str(x) for x in row) for row in all_rows]) + "\n",
                                       encoding="utf-8")
    for cat, vid, _q, start, end in all_rows:
        out = r / "AVE" / f"{vid}.mp4"
        if not media:
            out.write_bytes(b"")
            continue
        _write_event_clip(out, categories.index(cat), start, end, seconds, size, rng)
    return written


def _write_event_clip(out: Path, cls: int, start: int, end: int, seconds: float, size: int,
                      rng: np.random.Generator) -> None:
    from ..io.writer import write_av_clip  # noqa: PLC0415

    fps, sr = 4.0, 16000
    n = int(round(seconds * fps))
    t_frame = np.arange(n) / fps
    active = (t_frame >= start) & (t_frame < end)
    frames = np.full((n, size, size, 3), 30, np.uint8)
    colour = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]][cls % 4], np.uint8)
    h = size // 2
    frames[active, :h, :h] = colour
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 300.0 * 2 ** (cls / 3)
    env = ((t >= start) & (t < end)).astype(np.float32)
    audio = (0.4 * env * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    write_av_clip(out, frames, fps, audio, sr)
