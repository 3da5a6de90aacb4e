"""Tiny fake copies of VGGSound and AudioSet, laid out exactly like the real ones.

Used by the tests, ``examples/continual_vs.py --make-fake`` and
``benchmarks_av/bench_decode.py``. Clips are real mp4 files (H.264 + AAC) written by
:func:`~avalanche_av.benchmarks.io.writer.write_av_clip`, but tiny (default 32x32, 2 s,
4 fps). Only ``n_distinct`` clips are encoded; the others are byte copies, which keeps
building a few hundred clips to about a second.

Each fake dataset also plants the problems a real copy has:

- ``missing``: rows of the table whose file does not exist;
- ``corrupt``: random bytes named like a clip;
- ``silent``: a video without an audio stream;
- ``short``: a clip of ``short_seconds`` (0.3 s), shorter than the default ``min_duration``.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from avalanche_av.benchmarks.io.errors import PathLike
from avalanche_av.benchmarks.io.writer import write_av_clip
from avalanche_av.benchmarks.real.readers import vggsound_clip_name
from avalanche_av.benchmarks.real.tasks import load_task_definition

__all__ = ["FakeDataset", "make_fake_vggsound", "make_fake_audioset", "fake_clip_content"]

_SR = 16000


@dataclass
class FakeDataset:
    """What a fake dataset holds.

    Attributes:
        root: the dataset root.
        clips: stem -> path of every clip file written (bad ones included).
        missing: stems listed in the tables without a file.
        bad: stem -> kind (``"corrupt"``, ``"silent"``, ``"short"``).
        rows: the table rows written (dicts), in file order.
    """

    root: Path
    clips: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)


def fake_clip_content(seed: int, seconds: float = 2.0, fps: float = 4.0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic clip content: ``(frames (T, size, size, 3) uint8, audio (S,) float32)``.

    Frames are four flat quadrants whose colours depend on ``seed`` and drift per frame;
    the audio is a tone whose pitch depends on ``seed``.
    """
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * fps)))
    base = rng.integers(30, 226, size=(4, 3))
    frames = np.empty((n, size, size, 3), np.uint8)
    h = size // 2
    for t in range(n):
        c = np.clip(base + 6 * t, 0, 255).astype(np.uint8)
        frames[t, :h, :h], frames[t, :h, h:], frames[t, h:, :h], frames[t, h:, h:] = c
    s = int(round(seconds * _SR))
    f0 = 220.0 * 2 ** (int(rng.integers(0, 24)) / 12)
    audio = (0.3 * np.sin(2 * np.pi * f0 * np.arange(s) / _SR)).astype(np.float32)
    return frames, audio


class _ClipWriter:
    """Encodes ``n_distinct`` clips once, then copies them; writes the planted bad files."""

    def __init__(self, folder: Path, n_distinct: int, seconds: float, fps: float, size: int, seed: int) -> None:
        self.folder, self.seconds, self.fps, self.size = folder, seconds, fps, size
        self.n_distinct, self.seed = max(1, n_distinct), seed
        self.sources: list[Path] = []
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def good(self, stem: str, subdir: str = "") -> Path:
        out = self.folder / subdir / f"{stem}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        k = self.count % self.n_distinct
        self.count += 1
        if k < len(self.sources):
            shutil.copyfile(self.sources[k], out)
        else:
            frames, audio = fake_clip_content(self.seed * 1000 + k, self.seconds, self.fps, self.size)
            write_av_clip(out, frames, self.fps, audio, _SR)
            self.sources.append(out)
        return out

    def bad(self, stem: str, kind: str, short_seconds: float) -> Path:
        out = self.folder / f"{stem}.mp4"
        if kind == "corrupt":
            out.write_bytes(np.random.default_rng(self.seed).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        elif kind == "silent":
            frames, _ = fake_clip_content(self.seed + 7, self.seconds, self.fps, self.size)
            write_av_clip(out, frames, self.fps, None)
        elif kind == "short":
            frames, audio = fake_clip_content(self.seed + 9, short_seconds, self.fps, self.size)
            write_av_clip(out, frames[:1], self.fps, audio, _SR)
        else:
            raise ValueError(f"unknown bad clip kind {kind!r}; allowed: corrupt, silent, short")
        return out


def _ytid(prefix: str, i: int) -> str:
    # YouTube ids are 11 characters from [A-Za-z0-9_-]; keep ours recognisably fake.
    return f"{prefix}{i:09d}"[-11:].replace(" ", "-")


def make_fake_vggsound(
    root: PathLike,
    *,
    classes_per_task: int = 2,
    n_tasks: Optional[int] = None,
    train_per_class: int = 3,
    test_per_class: int = 2,
    pool_classes_per_task: int = 1,
    pool_per_class: int = 2,
    n_missing: int = 2,
    bad_kinds: tuple[str, ...] = ("corrupt", "silent", "short"),
    header: bool = False,
    seconds: float = 2.0,
    fps: float = 4.0,
    size: int = 32,
    short_seconds: float = 0.3,
    n_distinct: int = 8,
    seed: int = 0,
) -> FakeDataset:
    """Write a fake VGGSound: ``root/vggsound.csv`` and ``root/video/<id>_<start:06d>.mp4``.

    Task classes are the real first ``classes_per_task`` names (alphabetical) of each of
    the first ``n_tasks`` groups of the shipped definition (default order); each gets
    ``train_per_class`` train and ``test_per_class`` test clips. Pool classes are the
    group's last ``pool_classes_per_task`` names (never task classes), with
    ``pool_per_class`` train clips each. Then ``n_missing`` train rows of the first class
    have no file, and one bad train clip of the first class is written per ``bad_kinds``
    entry (so the first class has ``train_per_class`` good clips plus the bad and missing
    ones).

    Args:
        header: write the header line ``youtube_id,start_seconds,label,split`` (the
            official file has none).
    """
    root = Path(root)
    defn = load_task_definition("continual_vs", n_tasks=n_tasks)
    writer = _ClipWriter(root / "video", n_distinct, seconds, fps, size, seed)
    info = FakeDataset(root=root)
    counter = [0]

    def add(label: str, split: str, kind: str = "good") -> None:
        i = counter[0]
        counter[0] += 1
        yid, start = _ytid("vs", i), 10 * (i % 7)
        stem = vggsound_clip_name(yid, start)
        info.rows.append({"youtube_id": yid, "start_seconds": start, "label": label, "split": split})
        if kind == "good":
            info.clips[stem] = writer.good(stem)
        elif kind == "missing":
            info.missing.append(stem)
        else:
            info.clips[stem] = writer.bad(stem, kind, short_seconds)
            info.bad[stem] = kind

    for allc in defn.all_classes:
        task_classes, pool_classes = allc[:classes_per_task], allc[len(allc) - pool_classes_per_task:]
        for c in task_classes:
            for _ in range(train_per_class):
                add(c, "train")
            for _ in range(test_per_class):
                add(c, "test")
        for c in pool_classes:
            for _ in range(pool_per_class):
                add(c, "train")
    first = defn.all_classes[0][0]
    for _ in range(n_missing):
        add(first, "train", "missing")
    for kind in bad_kinds:
        add(first, "train", kind)
    with open(root / "vggsound.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(["youtube_id", "start_seconds", "label", "split"])
        for r in info.rows:
            w.writerow([r["youtube_id"], r["start_seconds"], r["label"], r["split"]])
    return info


#: Labels used by the fake AudioSet that belong to no task (pool material).
FAKE_AS_OTHER_LABELS = ("Speech", "Silence", "Static")


def make_fake_audioset(
    root: PathLike,
    *,
    classes_per_task: int = 2,
    n_tasks: Optional[int] = None,
    train_per_class: int = 3,
    eval_per_class: int = 2,
    n_pool: int = 3,
    n_missing: int = 1,
    bad_kinds: tuple[str, ...] = ("corrupt", "silent", "short"),
    ontology_format: str = "csv",
    seconds: float = 2.0,
    fps: float = 4.0,
    size: int = 32,
    short_seconds: float = 0.3,
    n_distinct: int = 8,
    seed: int = 0,
) -> FakeDataset:
    """Write a fake AudioSet: segment CSVs, an ontology table and ``root/video/`` clips.

    Files: ``balanced_train_segments.csv`` and ``eval_segments.csv`` in the official format
    (three ``#`` lines, ``YTID, start_seconds, end_seconds, "mid,mid"``),
    ``class_labels_indices.csv`` (or ``ontology.json`` with ``ontology_format="json"``) with
    made-up ids ``/m/fake{k}``, and clips named ``<YTID>_<start:06d>.mp4``.

    Rows, per task ``t`` of the first ``n_tasks`` (default order):

    - per used class (the first ``classes_per_task`` of the task): ``train_per_class``
      training and ``eval_per_class`` evaluation clips labelled with the class and the task's
      first parent category;
    - one training clip labelled only with the parent category (an "unclassed" clip);
    - one training clip labelled with this task's first class and the next task's first class
      (spans two tasks, excluded);

    plus ``n_pool`` training clips labelled only with non-task labels
    (``FAKE_AS_OTHER_LABELS``), ``n_missing`` rows of the first class without a file, and one
    bad training clip of the first class per ``bad_kinds`` entry. One pool clip is named
    ``Y<YTID>.mp4`` (another naming convention the reader accepts).
    """
    import json  # noqa: PLC0415

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    defn = load_task_definition("continual_as", n_tasks=n_tasks)
    names: list[str] = []
    for allc, parents in zip(defn.all_classes, defn.parent_categories):
        names += list(parents) + list(allc)
    names += list(FAKE_AS_OTHER_LABELS)
    names = list(dict.fromkeys(names))
    mid = {n: f"/m/fake{k:04d}" for k, n in enumerate(names)}
    if ontology_format == "csv":
        with open(root / "class_labels_indices.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "mid", "display_name"])
            for k, n in enumerate(names):
                w.writerow([k, mid[n], n])
    elif ontology_format == "json":
        (root / "ontology.json").write_text(json.dumps([{"id": mid[n], "name": n, "child_ids": []} for n in names]))
    else:
        raise ValueError(f"ontology_format must be 'csv' or 'json', got {ontology_format!r}")

    writer = _ClipWriter(root / "video", n_distinct, seconds, fps, size, seed)
    info = FakeDataset(root=root)
    tables: dict[str, list[dict]] = {"train": [], "eval": []}
    counter = [0]

    def add(labels: list[str], split: str, kind: str = "good", name_format: str = "{ytid}_{start:06d}") -> None:
        i = counter[0]
        counter[0] += 1
        yid, start = _ytid("as", i), float(10 * (i % 5))
        stem = name_format.format(ytid=yid, start=int(start))
        row = {"ytid": yid, "start": start, "end": start + 10.0, "labels": ",".join(mid[n] for n in labels),
               "split": split, "stem": stem, "names": labels}
        tables[split].append(row)
        info.rows.append(row)
        if kind == "good":
            info.clips[stem] = writer.good(stem)
        elif kind == "missing":
            info.missing.append(stem)
        else:
            info.clips[stem] = writer.bad(stem, kind, short_seconds)
            info.bad[stem] = kind

    n = defn.n_tasks
    for t in range(n):
        used, parent = defn.all_classes[t][:classes_per_task], defn.parent_categories[t][0]
        for c in used:
            for _ in range(train_per_class):
                add([c, parent], "train")
            for _ in range(eval_per_class):
                add([parent, c], "eval")
        add([parent], "train")
        if n > 1:
            add([defn.all_classes[t][0], defn.all_classes[(t + 1) % n][0]], "train")
    for k in range(n_pool):
        add([FAKE_AS_OTHER_LABELS[k % len(FAKE_AS_OTHER_LABELS)]], "train",
            name_format="Y{ytid}" if k == 0 else "{ytid}_{start:06d}")
    first = defn.all_classes[0][0]
    for _ in range(n_missing):
        add([first], "train", "missing")
    for kind in bad_kinds:
        add([first], "train", kind)

    for split, fname in (("train", "balanced_train_segments.csv"), ("eval", "eval_segments.csv")):
        lines = [
            f"# Segments csv created by avalanche-av's fake AudioSet ({fname})",
            f"# num_ytids={len(tables[split])}, num_segs={len(tables[split])}, num_unique_labels={len(names)}, "
            f"num_positive_labels={sum(len(r['names']) for r in tables[split])}",
            "# YTID, start_seconds, end_seconds, positive_labels",
        ]
        lines += [f'{r["ytid"]}, {r["start"]:.3f}, {r["end"]:.3f}, "{r["labels"]}"' for r in tables[split]]
        (root / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return info
