"""Readers for the VGGSound and AudioSet metadata files, and clip-file lookup on disk.

Tables (all read with pandas; each reader checks its columns and values and raises
:class:`~avalanche_av.benchmarks.io.errors.ManifestError` naming the file, the number of
bad rows and a few examples):

- VGGSound CSV (``vggsound.csv``): ``youtube_id,start_seconds,label,split``, with or
  without a header line (the official file has none). A clip's file is
  ``<youtube_id>_<start_seconds:06d>.mp4``.
- AudioSet segment CSVs (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
  ``eval_segments.csv``): ``YTID, start_seconds, end_seconds, positive_labels``; the official
  files open with three ``#`` comment lines and quote the comma-separated label ids.
- AudioSet ontology table: ``class_labels_indices.csv`` (``index,mid,display_name``) or
  ``ontology.json`` (a list of objects with ``id`` and ``name``).

Row checks (:func:`check_clip_rows`): a clip listed twice in one split is used once, and a clip
listed both for training and for evaluation is dropped from training (a train/test leak); the
:class:`TableCheckReport` gives the counts and example names.

Clip lookup (:func:`locate_clips`) maps each table row to the files present under a
dataset root (video files, pre-extracted frame folders, 16 kHz audio files or a
``prepare`` cache) and reports the rows whose files are missing, with counts per split
and example names.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from avalanche_av.benchmarks.io.errors import ManifestError, PathLike
from avalanche_av.benchmarks.io.manifest import read_label_csv, read_manifest

__all__ = [
    "VGGSOUND_COLUMNS",
    "AUDIOSET_COLUMNS",
    "AUDIOSET_NAME_FORMATS",
    "VIDEO_SUFFIXES",
    "AUDIO_SUFFIXES",
    "read_vggsound_csv",
    "read_audioset_segments",
    "read_audioset_ontology",
    "vggsound_clip_name",
    "audioset_clip_names",
    "DatasetLayout",
    "find_layout",
    "ClipLookupReport",
    "locate_clips",
    "read_prepared_cache",
    "TableCheckReport",
    "check_clip_rows",
]

VGGSOUND_COLUMNS = ("youtube_id", "start_seconds", "label", "split")
AUDIOSET_COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac"})
_MAX_EXAMPLES = 5


def _bad_rows(source: str, what: str, mask: np.ndarray, df: pd.DataFrame, line_offset: np.ndarray) -> None:
    if mask.any():
        idx = np.flatnonzero(mask)
        ex = "; ".join(f"line {int(line_offset[i])}: {df.iloc[i].tolist()}" for i in idx[:3])
        raise ManifestError(f"{source}: {len(idx)} of {len(df)} rows have {what} (e.g. {ex})")


# --------------------------------------------------------------------------- VGGSound
def read_vggsound_csv(path: PathLike) -> pd.DataFrame:
    """Read the VGGSound clip table.

    Accepts the official header-less file and files with a header line naming
    ``youtube_id,start_seconds,label,split`` (any case). Labels that contain commas must be
    quoted, as in the official file.

    Returns:
        DataFrame with columns ``youtube_id`` (str), ``start_seconds`` (int64), ``label``
        (str), ``split`` (``"train"`` or ``"test"``), ``row`` (int64, position in the file,
        a stable clip id), in file order.

    Raises:
        ManifestError: missing file, wrong number of columns, empty ids or labels,
            non-integer or negative start times, or splits other than train/test.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"VGGSound table {p} not found")
    source = f"VGGSound table {p}"
    try:
        df = pd.read_csv(p, header=None, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source}: not a readable CSV ({e})") from e
    if df.shape[1] != len(VGGSOUND_COLUMNS):
        raise ManifestError(
            f"{source}: expected {len(VGGSOUND_COLUMNS)} columns {list(VGGSOUND_COLUMNS)}, found {df.shape[1]} "
            f"(first row: {df.iloc[0].tolist() if len(df) else '-'})"
        )
    first_line = 1
    if len(df) and [str(v).strip().lower() for v in df.iloc[0]] == list(VGGSOUND_COLUMNS):
        df = df.iloc[1:]
        first_line = 2
    df.columns = list(VGGSOUND_COLUMNS)
    df = df.reset_index(drop=True)
    lines = np.arange(len(df)) + first_line
    for c in ("youtube_id", "label", "split"):
        df[c] = df[c].str.strip()
    _bad_rows(source, "an empty youtube_id or label", ((df["youtube_id"] == "") | (df["label"] == "")).to_numpy(), df, lines)
    start = pd.to_numeric(df["start_seconds"], errors="coerce")
    bad = (start.isna() | (start < 0) | (start != start.round())).to_numpy()
    _bad_rows(source, "a start_seconds that is not a non-negative integer", bad, df, lines)
    df["split"] = df["split"].str.lower()
    _bad_rows(source, "a split other than 'train'/'test'", (~df["split"].isin(["train", "test"])).to_numpy(), df, lines)
    df["start_seconds"] = start.astype("int64")
    df["row"] = np.arange(len(df), dtype=np.int64)
    return df


def vggsound_clip_name(youtube_id: Union[str, pd.Series], start_seconds: Union[int, pd.Series]) -> Union[str, pd.Series]:
    """VGGSound's clip stem ``<youtube_id>_<start:06d>`` (vectorised over Series)."""
    if isinstance(youtube_id, pd.Series):
        return youtube_id.astype(str) + "_" + pd.Series(start_seconds, index=youtube_id.index).astype("int64").astype(str).str.zfill(6)
    return f"{youtube_id}_{int(start_seconds):06d}"


# --------------------------------------------------------------------------- row checks
@dataclass
class TableCheckReport:
    """Rows of a dataset table that must not be used as listed.

    Attributes:
        source: the table(s) checked.
        n_rows: rows checked.
        keep: ``(n_rows,)`` bool, the rows to use.
        duplicated: rows dropped because an earlier row lists the same clip in the same
            split (only the first is used, so a clip listed 3x trains once).
        label_conflicts: of the ``duplicated`` rows, those whose label differs from the kept
            row's (the kept row's label is used).
        leaked_dropped: clips listed both in a training split and in the evaluation split,
            whose training rows were dropped so that retrieval clips are never trained on.
        unknown_labels: rows whose label is not a class of the dataset (set by the caller
            from :func:`~avalanche_av.benchmarks.real.tasks.find_unknown_labels`).
        unknown_label_names: ``{label: rows}`` of those labels, most frequent first.
        examples: per field (``"duplicated"``, ``"label_conflicts"``, ``"leaked_dropped"``),
            up to 5 clip names.
    """

    source: str
    n_rows: int
    keep: np.ndarray
    duplicated: int = 0
    label_conflicts: int = 0
    leaked_dropped: int = 0
    unknown_labels: int = 0
    unknown_label_names: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.duplicated or self.leaked_dropped or self.unknown_labels)

    def counts(self) -> dict[str, int]:
        """The counts, named as in the benchmark's data report."""
        return {"duplicated": int(self.duplicated), "leaked_dropped": int(self.leaked_dropped),
                "unknown_labels": int(self.unknown_labels)}

    def summary(self) -> str:
        """One line naming each problem with its count and examples ('' when there is none)."""
        parts = []
        if self.duplicated:
            conflict = f", {self.label_conflicts} with another label" if self.label_conflicts else ""
            parts.append(f"{self.duplicated} duplicated row(s) dropped{conflict} "
                         f"(e.g. {', '.join(self.examples.get('duplicated', []))})")
        if self.leaked_dropped:
            parts.append(f"{self.leaked_dropped} clip(s) listed for both training and evaluation, dropped from "
                         f"training (e.g. {', '.join(self.examples.get('leaked_dropped', []))})")
        if self.unknown_labels:
            names = ", ".join(f"{k!r} ({v})" for k, v in list(self.unknown_label_names.items())[:_MAX_EXAMPLES])
            parts.append(f"{self.unknown_labels} row(s) with a label that is not a class of the dataset, left out: "
                         f"{names}")
        return f"{self.source}: " + "; ".join(parts) if parts else ""


def check_clip_rows(
    table: pd.DataFrame,
    key: Sequence[str],
    names: Sequence[str],
    eval_split: str,
    label_col: Optional[str] = None,
    source: str = "table",
) -> TableCheckReport:
    """Find the rows that repeat a clip, and the clips listed for training and evaluation.

    Two rows name the same clip when their ``key`` columns are equal (VGGSound:
    ``youtube_id, start_seconds``; AudioSet: ``ytid, start_seconds``).

    - **Duplicates**: a row naming the same clip in the same ``split`` as an earlier row is
      dropped (the first row wins, with its label).
    - **Leaks**: a clip with a row in ``eval_split`` and a row in any other split keeps only
      its evaluation row: the retrieval sets are the fixed test split, and a clip trained on
      must never be a retrieval query.

    Vectorised (pandas ``duplicated``/``isin``), so it scales to the 200k-row VGGSound table.

    Args:
        table: rows with ``key`` columns and a ``split`` column.
        key: the columns that identify a clip.
        names: one clip name per row (used in the examples).
        eval_split: the ``split`` value of evaluation rows (``"test"``, ``"eval"``).
        label_col: compare this column to count ``label_conflicts`` (``None``: skip).
        source: the table's name for the report.

    Returns:
        A :class:`TableCheckReport`; ``report.keep`` is aligned with ``table``'s rows.
    """
    n = len(table)
    names = np.asarray(list(names), dtype=object)
    if len(names) != n:
        raise ValueError(f"names ({len(names)}) and table rows ({n}) differ in length")
    lacking = [c for c in (*key, "split") if c not in table.columns]
    if lacking:
        raise ValueError(f"{source}: check_clip_rows needs columns {lacking}; have {list(table.columns)}")
    df = table[[*key, "split"] + ([label_col] if label_col else [])].reset_index(drop=True)
    dup = df.duplicated(subset=[*key, "split"], keep="first").to_numpy()
    conflicts = 0
    if label_col and dup.any():
        first_label = df[~dup].set_index([*key, "split"])[label_col]
        dup_rows = df[dup]
        kept_label = first_label.reindex(pd.MultiIndex.from_frame(dup_rows[[*key, "split"]])).to_numpy()
        conflicts = int((kept_label != dup_rows[label_col].to_numpy()).sum())
    keep = ~dup
    clip = pd.MultiIndex.from_frame(df[list(key)])
    is_eval = (df["split"] == eval_split).to_numpy()
    eval_clips = clip[is_eval & keep]
    leaked = keep & ~is_eval & np.asarray(clip.isin(eval_clips))
    keep &= ~leaked
    return TableCheckReport(
        source=source,
        n_rows=n,
        keep=keep,
        duplicated=int(dup.sum()),
        label_conflicts=conflicts,
        leaked_dropped=int(leaked.sum()),
        examples={"duplicated": list(dict.fromkeys(names[dup]))[:_MAX_EXAMPLES],
                  "leaked_dropped": list(dict.fromkeys(names[leaked]))[:_MAX_EXAMPLES]},
    )


# --------------------------------------------------------------------------- AudioSet
def read_audioset_segments(path: PathLike, split: Optional[str] = None) -> pd.DataFrame:
    """Read an AudioSet segment CSV.

    Lines starting with ``#`` (the official files' three comment lines, the last of which
    names the columns) and blank lines are skipped; a plain header line
    ``YTID,start_seconds,...`` is accepted too. Fields may be separated by ``", "``.

    Args:
        path: the CSV file.
        split: value of the returned ``split`` column; default the file's stem (e.g.
            ``"eval_segments"``).

    Returns:
        DataFrame with columns ``ytid`` (str), ``start_seconds``, ``end_seconds`` (float64),
        ``positive_labels`` (the raw comma-separated string), ``labels`` (tuple of label
        ids), ``split`` and ``row`` (position among the file's data rows).

    Raises:
        ManifestError: missing file, wrong column count, non-numeric times, an end before
            the start, or rows without labels.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"AudioSet segment table {p} not found")
    source = f"AudioSet segment table {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{source}: not UTF-8 text ({e})") from e
    kept, line_no = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            kept.append(line)
            line_no.append(i)
    if kept and kept[0].replace(" ", "").lower().startswith("ytid,"):
        kept, line_no = kept[1:], line_no[1:]
    try:
        df = pd.read_csv(StringIO("\n".join(kept)), header=None, dtype=str, keep_default_na=False,
                         skipinitialspace=True, quotechar='"') if kept else pd.DataFrame(columns=range(4))
    except pd.errors.ParserError as e:
        raise ManifestError(f"{source}: rows with the wrong number of fields ({e}); "
                            f"label lists must be quoted as in the official files") from e
    if df.shape[1] != len(AUDIOSET_COLUMNS):
        raise ManifestError(
            f"{source}: expected {len(AUDIOSET_COLUMNS)} columns {list(AUDIOSET_COLUMNS)}, found {df.shape[1]} "
            f"(first data row: {df.iloc[0].tolist() if len(df) else '-'})"
        )
    df.columns = ["ytid", "start_seconds", "end_seconds", "positive_labels"]
    lines = np.asarray(line_no, dtype=np.int64)
    df["ytid"] = df["ytid"].str.strip()
    start = pd.to_numeric(df["start_seconds"], errors="coerce")
    end = pd.to_numeric(df["end_seconds"], errors="coerce")
    _bad_rows(source, "non-numeric start/end times", (start.isna() | end.isna()).to_numpy(), df, lines)
    _bad_rows(source, "end_seconds <= start_seconds or a negative start", ((end <= start) | (start < 0)).to_numpy(), df, lines)
    labels = [tuple(x.strip() for x in s.split(",") if x.strip()) for s in df["positive_labels"]]
    _bad_rows(source, "no positive_labels", np.array([len(l) == 0 for l in labels], bool), df, lines)
    _bad_rows(source, "an empty YTID", (df["ytid"] == "").to_numpy(), df, lines)
    df["start_seconds"], df["end_seconds"] = start.astype("float64"), end.astype("float64")
    df["positive_labels"] = [",".join(l) for l in labels]
    df["labels"] = labels
    df["split"] = split if split is not None else p.stem
    df["row"] = np.arange(len(df), dtype=np.int64)
    return df


def read_audioset_ontology(path: PathLike) -> pd.DataFrame:
    """Read the AudioSet label id -> display name table.

    Args:
        path: ``class_labels_indices.csv`` (``index,mid,display_name``) or ``ontology.json``
            (a list of objects with at least ``id`` and ``name``; ``child_ids`` is kept).

    Returns:
        DataFrame with ``index`` (int64), ``mid``, ``display_name`` (str); from
        ``ontology.json`` also ``child_ids`` (tuples) and ``index`` = position in the file.

    Raises:
        ManifestError: missing file, missing columns/keys, duplicate ids.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"AudioSet ontology table {p} not found")
    if p.suffix.lower() != ".json":
        return read_label_csv(p)
    source = f"AudioSet ontology {p}"
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(obj, list) or not all(isinstance(o, Mapping) for o in obj):
        raise ManifestError(f"{source}: expected a list of objects with 'id' and 'name'")
    lacking = [i for i, o in enumerate(obj) if "id" not in o or "name" not in o]
    if lacking:
        raise ManifestError(f"{source}: {len(lacking)} of {len(obj)} entries lack 'id' or 'name' (first at index {lacking[0]})")
    df = pd.DataFrame({
        "index": np.arange(len(obj), dtype=np.int64),
        "mid": [str(o["id"]) for o in obj],
        "display_name": [str(o["name"]) for o in obj],
        "child_ids": [tuple(o.get("child_ids", ())) for o in obj],
    })
    dup = df["mid"][df["mid"].duplicated()]
    if len(dup):
        raise ManifestError(f"{source}: {len(dup)} duplicate ids, e.g. {dup.iloc[0]!r}")
    return df


#: Default clip-name formats tried for AudioSet segments, in order. Fields: ``ytid``,
#: ``start``/``end`` (whole seconds), ``start_ms``/``end_ms`` (milliseconds).
AUDIOSET_NAME_FORMATS = ("{ytid}_{start:06d}", "{ytid}", "Y{ytid}", "{ytid}_{start_ms}_{end_ms}")


def audioset_clip_names(df: pd.DataFrame, fmt: str) -> list[str]:
    """File stems of AudioSet segments under one name format (see ``AUDIOSET_NAME_FORMATS``)."""
    out = []
    for y, s, e in zip(df["ytid"], df["start_seconds"], df["end_seconds"]):
        out.append(fmt.format(ytid=y, start=int(s), end=int(e), start_ms=int(round(s * 1000)), end_ms=int(round(e * 1000))))
    return out


# --------------------------------------------------------------------------- files on disk
@dataclass
class DatasetLayout:
    """Where a dataset root keeps its clips (see ``docs/datasets.md``).

    Attributes:
        root: the dataset root.
        video_dirs: folders searched (recursively) for video files.
        audio_dir: optional folder of extracted audio files (``<stem>.wav``/``.flac``...).
        frames_dir: optional folder of pre-extracted frame folders (``<stem>/*.jpg``).
        prepared_dir: optional ``avalanche-av prepare`` cache (holds ``manifest.json``).
        allow_outside_root: read cache manifest entries that resolve outside ``root`` and
            the cache folder (refused by default; see :func:`read_prepared_cache`).
    """

    root: Path
    video_dirs: list[Path] = field(default_factory=list)
    audio_dir: Optional[Path] = None
    frames_dir: Optional[Path] = None
    prepared_dir: Optional[Path] = None
    allow_outside_root: bool = False


_VIDEO_DIR_NAMES = ("video", "videos", "clips", "mp4")


def find_layout(
    root: PathLike,
    video_dir: Optional[PathLike] = None,
    prepared: Union[str, PathLike, None] = "auto",
    allow_outside_root: bool = False,
) -> DatasetLayout:
    """Find the clip folders of a dataset root.

    Args:
        root: dataset root.
        video_dir: folder of video files; default the first of ``video/``, ``videos/``,
            ``clips/``, ``mp4/`` under ``root`` that exists, else ``root`` itself.
        prepared: ``"auto"`` (use ``root/prepared`` when it holds a ``manifest.json``), a
            cache folder, or ``None`` (ignore caches).
        allow_outside_root: let the cache's manifest name files outside ``root`` and the
            cache folder (an explicit opt-in; refused otherwise).

    Raises:
        FileNotFoundError: ``root`` (or an explicit folder) does not exist.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"dataset root {r} does not exist or is not a folder")
    if video_dir is not None:
        vd = Path(video_dir) if Path(video_dir).is_absolute() else r / video_dir
        if not vd.is_dir():
            raise FileNotFoundError(f"video folder {vd} does not exist")
        vdirs = [vd]
    else:
        vdirs = [r / n for n in _VIDEO_DIR_NAMES if (r / n).is_dir()] or [r]
    prep: Optional[Path] = None
    if prepared == "auto":
        prep = r / "prepared" if (r / "prepared" / "manifest.json").is_file() else None
    elif prepared is not None:
        prep = Path(prepared)
        if not (prep / "manifest.json").is_file():
            raise FileNotFoundError(f"prepared cache {prep} holds no manifest.json (run `avalanche-av prepare` first)")
    return DatasetLayout(
        root=r,
        video_dirs=vdirs,
        audio_dir=r / "audio" if (r / "audio").is_dir() else None,
        frames_dir=r / "frames" if (r / "frames").is_dir() else None,
        prepared_dir=prep,
        allow_outside_root=bool(allow_outside_root),
    )


def _index_files(dirs: Sequence[Path], suffixes: frozenset, skip: Sequence[Path] = ()) -> dict[str, str]:
    """``stem -> path`` of files with ``suffixes`` under ``dirs`` (recursive; first one wins)."""
    skip_set = {os.path.abspath(s) for s in skip}
    index: dict[str, str] = {}
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            # The cache and the extracted folders hold files with the same stems as the videos.
            dirnames[:] = sorted(n for n in dirnames if os.path.abspath(os.path.join(dirpath, n)) not in skip_set)
            for name in sorted(filenames):
                stem, suf = os.path.splitext(name)
                if suf.lower() in suffixes and stem not in index:
                    index[stem] = os.path.join(dirpath, name)
    return index


def _index_frame_dirs(frames_dir: Optional[Path]) -> dict[str, str]:
    if frames_dir is None:
        return {}
    return {e.name: e.path for e in os.scandir(frames_dir) if e.is_dir()}


def read_prepared_cache(
    prepared_dir: PathLike,
    root: Optional[PathLike] = None,
    allow_outside_root: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a ``prepare`` cache: ``(ok_entries, bad_clips)``.

    ``ok_entries`` has ``video_id`` (the clip stem), ``video_path`` (frame folder) and
    ``wav`` (audio file) of every finished clip; ``bad_clips`` has ``video_id, path,
    category, reason`` of the clips ``prepare`` rejected (empty if there is no report).

    Every manifest path must resolve inside the cache folder or ``root`` (the dataset
    root); an entry such as ``../../outside/frames`` or an absolute path elsewhere raises
    :class:`ManifestError` naming the manifest and the entry, unless
    ``allow_outside_root=True``.
    """
    d = Path(prepared_dir)
    roots = [d] + ([Path(root)] if root is not None else [])
    ok = read_manifest(d / "manifest.json", root=roots, allow_outside_root=allow_outside_root)
    report = d / "prepare_report.csv"
    if report.is_file():
        bad = pd.read_csv(report, dtype=str, keep_default_na=False)
    else:
        bad = pd.DataFrame(columns=["video_id", "path", "category", "reason"])
    return ok, bad


@dataclass
class ClipLookupReport:
    """Which rows of a dataset table have no clip on disk.

    Attributes:
        source: what was looked up (e.g. ``"VGGSound table /data/vggsound.csv"``).
        n_rows: rows looked up.
        n_found: rows with a clip.
        missing_by_split: per split, rows without a clip.
        examples: up to 5 expected file stems that were not found.
        n_from_cache: rows served by the ``prepare`` cache.
        n_bad_in_cache: rows the cache's report lists as bad (not counted as missing).
    """

    source: str
    n_rows: int
    n_found: int
    missing_by_split: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    n_from_cache: int = 0
    n_bad_in_cache: int = 0

    @property
    def n_missing(self) -> int:
        return self.n_rows - self.n_found - self.n_bad_in_cache

    def summary(self) -> str:
        if self.n_missing == 0:
            s = f"{self.source}: all {self.n_rows} clips found"
        else:
            per = ", ".join(f"{k}: {v}" for k, v in self.missing_by_split.items() if v)
            s = (f"{self.source}: {self.n_missing} of {self.n_rows} clips missing ({per}); "
                 f"e.g. {', '.join(self.examples)}")
        if self.n_from_cache:
            s += f"; {self.n_from_cache} served from the prepare cache"
        if self.n_bad_in_cache:
            s += f"; {self.n_bad_in_cache} marked bad by prepare"
        return s


def locate_clips(
    table: pd.DataFrame,
    stems: Sequence[Sequence[str]],
    layout: DatasetLayout,
    source: str,
) -> tuple[pd.DataFrame, ClipLookupReport, pd.DataFrame]:
    """Find each row's clip files under ``layout``.

    Args:
        table: dataset rows; must have a ``split`` column.
        stems: one list of candidate file stems per name format, each aligned with
            ``table`` (the first format that finds a file wins for a row).
        layout: from :func:`find_layout`.
        source: name used in the report.

    Resolution order per row: the ``prepare`` cache (frame folder + wav), then a frame
    folder under ``frames/`` with an audio file under ``audio/``, then a video file (with
    ``audio/<stem>.*`` as audio when present, else the video file itself).

    Returns:
        ``(table_with_paths, report, bad_from_cache)``: the table plus ``stem``,
        ``video_path``, ``audio_path`` (empty strings when missing), ``found`` (bool) and
        ``cache_bad`` (bool, rows the cache's report rejected, with ``cache_reason``); the
        report; the cache's bad-clip rows that belong to this table.
    """
    n = len(table)
    cache_ok: dict[str, tuple[str, str]] = {}
    cache_bad: dict[str, str] = {}
    skip = [p for p in (layout.audio_dir, layout.frames_dir, layout.prepared_dir) if p is not None]
    if layout.prepared_dir is not None:
        ok, bad = read_prepared_cache(layout.prepared_dir, root=layout.root,
                                      allow_outside_root=layout.allow_outside_root)
        cache_ok = {v: (vp, w) for v, vp, w in zip(ok["video_id"], ok["video_path"], ok["wav"])}
        cache_bad = dict(zip(bad["video_id"], bad["category"] + ": " + bad["reason"]))
    videos = _index_files(layout.video_dirs, VIDEO_SUFFIXES, skip)
    audios = _index_files([layout.audio_dir], AUDIO_SUFFIXES) if layout.audio_dir is not None else {}
    frames = _index_frame_dirs(layout.frames_dir)

    stem_out = [""] * n
    vpath, apath = [""] * n, [""] * n
    from_cache = np.zeros(n, bool)
    bad_mask = np.zeros(n, bool)
    bad_reason = [""] * n
    for i in range(n):
        cands = [s[i] for s in stems]
        for s in cands:
            if s in cache_ok:
                stem_out[i], (vpath[i], apath[i]) = s, cache_ok[s]
                from_cache[i] = True
                break
            if s in cache_bad:
                stem_out[i], bad_mask[i], bad_reason[i] = s, True, cache_bad[s]
                break
            if s in frames and s in audios:
                stem_out[i], vpath[i], apath[i] = s, frames[s], audios[s]
                break
            if s in videos:
                stem_out[i], vpath[i] = s, videos[s]
                apath[i] = audios.get(s, videos[s])
                break
        if not stem_out[i]:
            stem_out[i] = cands[0]
    out = table.copy()
    out["stem"], out["video_path"], out["audio_path"] = stem_out, vpath, apath
    out["found"] = np.array([bool(v) for v in vpath])
    out["cache_bad"] = bad_mask
    out["cache_reason"] = bad_reason
    missing = ~out["found"].to_numpy() & ~bad_mask
    splits = out["split"].astype(str)
    report = ClipLookupReport(
        source=source,
        n_rows=n,
        n_found=int(out["found"].sum()),
        missing_by_split={k: int(v) for k, v in splits[missing].value_counts().sort_index().items()},
        examples=[s for s in np.asarray(stem_out, dtype=object)[missing][:_MAX_EXAMPLES]],
        n_from_cache=int(from_cache.sum()),
        n_bad_in_cache=int(bad_mask.sum()),
    )
    bad_rows = pd.DataFrame({"video_id": np.asarray(stem_out, dtype=object)[bad_mask],
                             "reason": np.asarray(bad_reason, dtype=object)[bad_mask]})
    return out, report, bad_rows
