"""CAV-MAE-style manifests and label tables.

Manifest (JSON)::

    {"data": [{"video_id": "abc", "wav": "/a/abc.wav", "video_path": "/v/abc.mp4",
               "labels": "/m/09x0r,/m/05zppz"}, ...]}

``labels`` is a comma-separated string of label ``mid``s. Entries may carry extra
keys (our disk-mode writer adds e.g. ``clip_id``, ``task``, ``target``); readers keep
them as extra columns. ``video_path`` is a video file, a frame folder, or (CAV-MAE's
own layout) a root folder with ``frame_k/{video_id}.jpg`` images. The same
columns can also come as a CSV table.

Label table (CSV): columns ``index,mid,display_name``; ``index`` is the class index
used as the retrieval ``target``.

Confinement: given a ``root``, :func:`read_manifest` refuses an entry whose ``wav`` or
``video_path`` resolves outside it (``../../outside/frames``, ``/etc/...``), unless
``allow_outside_root=True``; see :func:`check_paths_under_root`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from avalanche_av.benchmarks.io.errors import ManifestError, PathLike

__all__ = [
    "MANIFEST_KEYS",
    "LABEL_COLUMNS",
    "read_manifest",
    "write_manifest",
    "read_label_csv",
    "write_label_csv",
    "labels_to_targets",
    "ManifestFileReport",
    "check_manifest_files",
    "manifest_to_entries",
    "load_manifest_entries",
    "check_paths_under_root",
]

MANIFEST_KEYS = ("video_id", "wav", "video_path", "labels")
LABEL_COLUMNS = ("index", "mid", "display_name")
_PATH_KEYS = ("wav", "video_path")

Entries = Union[pd.DataFrame, Sequence[Mapping[str, Any]]]


def _validate_records(records: Any, source: str) -> pd.DataFrame:
    if not isinstance(records, list):
        raise ManifestError(f"{source}: 'data' must be a list of entries, got {type(records).__name__}")
    bad_type = [i for i, r in enumerate(records) if not isinstance(r, Mapping)]
    if bad_type:
        raise ManifestError(f"{source}: entries must be objects; {len(bad_type)} are not (first at index {bad_type[0]})")
    missing = [(i, [k for k in MANIFEST_KEYS if k not in r]) for i, r in enumerate(records)]
    missing = [(i, ks) for i, ks in missing if ks]
    if missing:
        examples = "; ".join(f"entry {i} lacks {ks}" for i, ks in missing[:3])
        raise ManifestError(
            f"{source}: {len(missing)} of {len(records)} entries lack required keys {list(MANIFEST_KEYS)} ({examples})"
        )
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(MANIFEST_KEYS))
    return _normalise_columns(df, source)


def _normalise_columns(df: pd.DataFrame, source: str) -> pd.DataFrame:
    lacking = [k for k in MANIFEST_KEYS if k not in df.columns]
    if lacking:
        raise ManifestError(f"{source}: missing required columns {lacking}; have {list(df.columns)}")
    df = df.copy()
    # CAV-MAE stores labels as "mid1,mid2"; accept lists too.
    df["labels"] = [",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for v in df["labels"]]
    for k in MANIFEST_KEYS:
        nonstr = [i for i, v in enumerate(df[k]) if not isinstance(v, str)]
        if nonstr:
            raise ManifestError(
                f"{source}: key '{k}' must be a string; {len(nonstr)} entries are not "
                f"(first at index {nonstr[0]}: {df[k].iloc[nonstr[0]]!r})"
            )
    empty = [i for i, v in enumerate(df["video_path"]) if not v]
    if empty:
        raise ManifestError(f"{source}: {len(empty)} entries have an empty 'video_path' (first at index {empty[0]})")
    return df.reset_index(drop=True)


def _resolve(df: pd.DataFrame, base: Path) -> pd.DataFrame:
    for k in _PATH_KEYS:
        df[k] = [v if (not v or os.path.isabs(v)) else os.fspath(base / v) for v in df[k]]
    return df


Roots = Union[PathLike, Sequence[PathLike]]


def _norm(p: PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(p)))


def check_paths_under_root(
    df: pd.DataFrame,
    roots: Roots,
    source: str,
    base: Optional[PathLike] = None,
    columns: Sequence[str] = _PATH_KEYS,
) -> None:
    """Require every non-empty path in ``columns`` to lie inside one of ``roots``.

    A path is resolved against ``base`` (relative values; absolute ones stay) and normalised
    (``..`` and ``.`` removed) before the check. The check is lexical: symbolic links are
    not followed, so a link the user placed inside the root to data elsewhere keeps working,
    while a manifest entry cannot climb out with ``..`` or name an absolute path elsewhere.

    Args:
        df: manifest rows (``video_id`` is used in the message when present).
        roots: the folder(s) the paths must lie in.
        source: the manifest's name for the message.
        base: folder relative paths are relative to (default: the current directory).
        columns: the path columns.

    Raises:
        ManifestError: naming the manifest, the number of offending entries and the first
            one (index, ``video_id``, key, value and where it resolves), and the opt-in.
    """
    root_list = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    allowed = [_norm(r) for r in root_list]
    b = os.fspath(base) if base is not None else os.getcwd()

    def inside(p: str) -> bool:
        return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in allowed)

    bad: list[tuple[int, str, str, str]] = []
    for c in columns:
        if c not in df.columns:
            continue
        for i, v in enumerate(df[c]):
            if isinstance(v, str) and v:
                resolved = _norm(os.path.join(b, v))
                if not inside(resolved):
                    bad.append((i, c, v, resolved))
    if bad:
        i, c, v, resolved = bad[0]
        vid = f" (video_id {df['video_id'].iloc[i]!r})" if "video_id" in df.columns else ""
        where = " or ".join(allowed)
        raise ManifestError(
            f"{source}: {len(bad)} path(s) lie outside the data root {where}; first: entry {i}{vid} {c} {v!r} "
            f"resolves to {resolved}. Pass allow_outside_root=True (--allow-outside-root) to read them anyway"
        )


def read_manifest(
    path: PathLike,
    resolve_relative: bool = True,
    root: Optional[Roots] = None,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Read a manifest (``.json`` as above, or ``.csv`` with the same columns).

    Args:
        path: the manifest file.
        resolve_relative: make relative ``wav``/``video_path`` values relative to the
            manifest's folder (absolute ones are kept).
        root: the data root (or several): every ``wav``/``video_path`` must resolve inside
            it (:func:`check_paths_under_root`). ``None``: no check (a plain CAV-MAE manifest
            with absolute paths anywhere).
        allow_outside_root: explicit opt-in to read entries outside ``root``.

    Returns:
        DataFrame with one row per entry: columns ``video_id, wav, video_path,
        labels`` plus any extra keys.

    Raises:
        ManifestError: unreadable file, no ``data`` list, entries lacking required
            keys or with non-string values (message gives counts and examples), or a path
            outside ``root``.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest {p} not found")
    source = f"manifest {p}"
    if p.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(p, dtype={k: str for k in MANIFEST_KEYS}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ManifestError(f"{source}: not a readable CSV ({e})") from e
        df = _normalise_columns(df, source)
    else:
        try:
            with open(p, encoding="utf-8") as fh:
                obj = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{source}: not valid JSON ({e})") from e
        if not isinstance(obj, Mapping) or "data" not in obj:
            raise ManifestError(f'{source}: expected an object {{"data": [...]}}, got {type(obj).__name__} '
                                f"with keys {list(obj)[:5] if isinstance(obj, Mapping) else '-'}")
        df = _validate_records(obj["data"], source)
    if root is not None and not allow_outside_root:
        check_paths_under_root(df, root, source, base=p.parent.resolve())
    return _resolve(df, p.parent.resolve()) if resolve_relative else df


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return os.fspath(v)
    return v


def write_manifest(path: PathLike, entries: Entries, relative_paths: bool = False) -> Path:
    """Write entries as a CAV-MAE JSON manifest (``.json``) or a CSV table (``.csv``).

    Args:
        entries: DataFrame or sequence of mappings with at least
            ``video_id, wav, video_path, labels``; extra keys are written as well.
        relative_paths: store ``wav``/``video_path`` relative to the manifest's
            folder (portable across machines; :func:`read_manifest` resolves them).

    Raises:
        ManifestError: an entry lacks a required key or has a non-string value.
    """
    out = Path(path)
    df = entries.copy() if isinstance(entries, pd.DataFrame) else None
    if df is None:
        records = [dict(e) for e in entries]
        df = _validate_records(records, f"entries for {out}")
    else:
        df = _normalise_columns(df, f"entries for {out}")
    if relative_paths:
        base = out.parent.resolve()
        for k in _PATH_KEYS:
            df[k] = [os.path.relpath(os.path.abspath(v), base) if v else v for v in df[k]]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        df.to_csv(out, index=False)
        return out
    records = [{k: _jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"data": records}, fh, indent=1)
    return out


def read_label_csv(path: PathLike) -> pd.DataFrame:
    """Read a label table with columns ``index, mid, display_name``.

    Returns:
        DataFrame sorted by ``index`` (int64), ``mid`` and ``display_name`` as str.

    Raises:
        ManifestError: missing columns, non-integer or duplicate ``index``, duplicate ``mid``.
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"label table {p} not found")
    try:
        df = pd.read_csv(p, dtype={"mid": str, "display_name": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"label table {p}: not a readable CSV ({e})") from e
    return _validate_labels(df, f"label table {p}")


def _validate_labels(df: pd.DataFrame, source: str) -> pd.DataFrame:
    lacking = [c for c in LABEL_COLUMNS if c not in df.columns]
    if lacking:
        raise ManifestError(f"{source}: missing columns {lacking}; need {list(LABEL_COLUMNS)}, have {list(df.columns)}")
    idx = pd.to_numeric(df["index"], errors="coerce")
    if idx.isna().any() or (idx != idx.round()).any():
        raise ManifestError(f"{source}: 'index' must be integers")
    df = df.assign(index=idx.astype("int64"))
    for c in ("index", "mid"):
        dup = df[c][df[c].duplicated()]
        if len(dup):
            raise ManifestError(f"{source}: {len(dup)} duplicate '{c}' values, e.g. {dup.iloc[0]!r}")
    return df.sort_values("index").reset_index(drop=True)


def write_label_csv(
    path: PathLike,
    labels: Union[pd.DataFrame, Sequence[str]],
    mids: Optional[Sequence[str]] = None,
) -> Path:
    """Write a label table.

    Args:
        labels: a DataFrame with ``index, mid, display_name``, or the display names
            in class-index order.
        mids: the label ids when ``labels`` is a list of names; defaults to the
            names themselves.
    """
    if isinstance(labels, pd.DataFrame):
        df = labels
    else:
        names = list(labels)
        ids = list(mids) if mids is not None else names
        if len(ids) != len(names):
            raise ValueError(f"mids ({len(ids)}) and labels ({len(names)}) differ in length")
        df = pd.DataFrame({"index": range(len(names)), "mid": ids, "display_name": names})
    df = _validate_labels(df, f"label table for {path}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    df[list(LABEL_COLUMNS)].to_csv(out, index=False)
    return out


def labels_to_targets(labels: Iterable[str], label_table: pd.DataFrame) -> np.ndarray:
    """Map each entry's label string to a class index.

    The target of a multi-label entry is its **first** label that the table knows
    (in the order written in ``labels``); entries with no known label get ``-1``.
    A label is looked up by ``mid`` first, then by ``display_name``.

    Returns:
        ``(N,)`` int64 array.
    """
    table = _validate_labels(label_table, "label table")
    lookup = dict(zip(table["display_name"], table["index"]))
    lookup.update(zip(table["mid"], table["index"]))  # mids win over names
    targets = []
    for s in labels:
        t = -1
        for lab in str(s).split(","):
            lab = lab.strip()
            if lab in lookup:
                t = int(lookup[lab])
                break
        targets.append(t)
    return np.asarray(targets, dtype=np.int64)


@dataclass
class ManifestFileReport:
    """Which files a manifest refers to do not exist.

    Attributes:
        n_entries: entries checked.
        missing: per path column, the number of entries whose file is missing.
        examples: per path column, up to ``max_examples`` missing paths.
        missing_rows: row positions with at least one missing file.
    """

    n_entries: int
    missing: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    missing_rows: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.missing.values())

    def summary(self) -> str:
        if self.ok:
            return f"all files of {self.n_entries} entries exist"
        parts = [
            f"{n} of {self.n_entries} '{k}' paths missing (e.g. {', '.join(self.examples[k])})"
            for k, n in self.missing.items()
            if n
        ]
        return "; ".join(parts)

    def raise_if_missing(self, source: str = "manifest") -> None:
        """Raise :class:`ManifestError` with counts and examples when any file is missing."""
        if not self.ok:
            raise ManifestError(f"{source}: {self.summary()}")


def check_manifest_files(
    manifest: pd.DataFrame,
    columns: Sequence[str] = _PATH_KEYS,
    max_examples: int = 5,
) -> ManifestFileReport:
    """Check that every path in ``columns`` exists (files or frame folders).

    Empty values are treated as "not given" and not reported (e.g. an empty
    ``wav`` means "audio comes from the video file"). Each distinct path is
    checked once.
    """
    report = ManifestFileReport(n_entries=len(manifest))
    bad_rows: set[int] = set()
    for c in columns:
        if c not in manifest.columns:
            raise ManifestError(f"manifest has no column '{c}'; have {list(manifest.columns)}")
        values = manifest[c].astype(str).tolist()
        exists = {v: os.path.exists(v) for v in set(values) if v}
        rows = [i for i, v in enumerate(values) if v and not exists[v]]
        report.missing[c] = len(rows)
        report.examples[c] = list(dict.fromkeys(values[i] for i in rows))[:max_examples]
        bad_rows.update(rows)
    report.missing_rows = sorted(bad_rows)
    return report


def manifest_to_entries(
    manifest: pd.DataFrame,
    label_table: Optional[pd.DataFrame] = None,
    clip_id_start: int = 0,
) -> pd.DataFrame:
    """Turn manifest rows into the entries :class:`~avalanche_av.benchmarks.io.dataset.AVClipDataset` reads.

    Columns of the result: ``video_path``, ``audio_path`` (the ``wav`` value, or the
    video file when ``wav`` is empty), ``target``, ``clip_id``, ``video_id``, plus
    the manifest's extra columns.

    - ``target``: an existing integer ``target`` column wins; else the first known
      label via ``label_table`` (:func:`labels_to_targets`); else ``-1``.
    - ``clip_id``: an existing ``clip_id`` column wins; else
      ``clip_id_start + row position``.
    """
    df = _normalise_columns(manifest, "manifest")
    out = df.copy()
    out["audio_path"] = [w if w else v for w, v in zip(df["wav"], df["video_path"])]
    if "target" in df.columns:
        out["target"] = pd.to_numeric(df["target"], errors="raise").astype("int64")
    elif label_table is not None:
        out["target"] = labels_to_targets(df["labels"], label_table)
    else:
        out["target"] = np.full(len(df), -1, dtype=np.int64)
    if "clip_id" in df.columns:
        out["clip_id"] = pd.to_numeric(df["clip_id"], errors="raise").astype("int64")
        if out["clip_id"].duplicated().any():
            raise ManifestError(f"manifest: 'clip_id' values are not unique, e.g. {out['clip_id'][out['clip_id'].duplicated()].iloc[0]}")
    else:
        out["clip_id"] = np.arange(clip_id_start, clip_id_start + len(df), dtype=np.int64)
    return out


def load_manifest_entries(
    manifest_path: PathLike,
    label_csv: Optional[PathLike] = None,
    check_files: bool = True,
    clip_id_start: int = 0,
    root: Optional[Roots] = None,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Read a manifest (and label table), check its files exist, and build dataset entries.

    ``root`` / ``allow_outside_root``: see :func:`read_manifest`.

    Raises:
        ManifestError: malformed manifest/label table, a path outside ``root``, or
            (``check_files``) missing files, with counts and examples.
    """
    df = read_manifest(manifest_path, root=root, allow_outside_root=allow_outside_root)
    if check_files:
        check_manifest_files(df).raise_if_missing(f"manifest {manifest_path}")
    table = read_label_csv(label_csv) if label_csv is not None else None
    return manifest_to_entries(df, table, clip_id_start)
