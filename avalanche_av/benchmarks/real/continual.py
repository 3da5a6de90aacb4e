"""Continual-VS (VGGSound) and Continual-AS (AudioSet) as Avalanche benchmarks (paper Sec. 4.1 and Appendix; docs/datasets.md).

Both generators read a local copy of the dataset (nothing is downloaded), apply the shipped
task definition (:mod:`.tasks`) and return a
:class:`~avalanche_av.benchmarks.base.RealAVBenchmark` shaped like the synthetic one: a
``train_stream`` with one experience per task (its training clips) and a ``test_stream``
with one experience per task (its retrieval clips), with task labels.
Samples follow the shared contract ``(audio (T, F), video (n_frames, 3, S, S) uint8,
target, clip_id)`` plus the task label. Clips are decoded lazily by
:class:`~avalanche_av.benchmarks.real.dataset.RealClipDataset` (no per-clip work at
construction, safe for DataLoader workers).

Which clips are used (deterministic given ``seed``):

- A class's candidate clips are ordered by a seeded hash of their file stem, so the choice
  does not depend on the order of the CSV and changes only locally when files come or go.
  The training set of a class is its first ``max_train_clips_per_class`` available
  candidates from the training split; its retrieval set the first
  ``retrieval_clips_per_class`` (5) from the evaluation split (VGGSound ``test``, AudioSet
  ``eval_segments``).
- Clips whose files are missing are reported (count per split, example names) and left out
  (``missing="skip"``) or raise (``missing="raise"``).
- Bad clips (unreadable, no audio stream, too short) are found by the ``prepare`` report
  when a cache is used, by a header scan of the chosen clips with ``scan=True``, or when
  they are decoded. ``on_error="skip"`` leaves them out (the next candidate of the class
  takes the place of a clip found bad before training) and counts them in
  ``benchmark.bad_clips``; ``on_error="raise"`` raises :class:`ClipDecodeError` naming them.
- The initial pre-training pool (``benchmark.pretrain_pool``) holds the training-split
  clips that carry no task class (Continual-AS: no task class and no task parent
  category).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.task_aware import with_task_labels

from avalanche_av.benchmarks.base import DataReport, RealAVBenchmark
from avalanche_av.benchmarks.io.dataset import scan_clips
from avalanche_av.benchmarks.io.errors import ClipDecodeError, ManifestError, PathLike
from avalanche_av.benchmarks.real.dataset import RealClipDataset
from avalanche_av.benchmarks.real.readers import (
    AUDIOSET_NAME_FORMATS,
    audioset_clip_names,
    check_clip_rows,
    find_layout,
    locate_clips,
    read_audioset_ontology,
    read_audioset_segments,
    read_vggsound_csv,
    vggsound_clip_name,
)
from avalanche_av.benchmarks.real.tasks import (
    DEFAULT,
    TaskDefinition,
    find_unknown_labels,
    load_task_definition,
    vggsound_stat,
)
from avalanche_av.benchmarks.synthetic.benchmark import as_avalanche_dataset

__all__ = [
    "RealBenchmarkConfig",
    "continual_vs",
    "continual_as",
    "benchmark_stats",
    "format_stats",
    "order_key",
]

OnError = Literal["skip", "raise"]
_ROLE_TRAIN, _ROLE_RETRIEVAL, _ROLE_POOL = "train", "retrieval", "pool"


@dataclasses.dataclass(frozen=True)
class RealBenchmarkConfig:
    """How a real benchmark was built (``benchmark.config``).

    ``n_frames``, ``image_size``, ``target_length`` and ``num_mel_bins`` are the decoding
    parameters; the model's input shapes must match them (the runner takes them from the
    chosen model preset).
    """

    name: str
    root: str
    task_names: tuple[str, ...]
    shuffled: bool
    classes_per_task: Optional[int]
    max_train_clips_per_class: Optional[int]
    retrieval_clips_per_class: int
    seed: int
    n_frames: int
    image_size: int
    target_length: int
    num_mel_bins: int
    min_duration: float
    on_error: str
    missing: str
    scan: bool
    prepared: Optional[str]
    allow_outside_root: bool = False


# --------------------------------------------------------------------------- selection helpers
def order_key(stems: pd.Series, seed: int) -> np.ndarray:
    """Seeded, order-independent ranking key of clip stems: ``(N,)`` uint64.

    A clip's key depends only on ``(seed, stem)``, so adding or removing other clips never
    reorders the rest.
    """
    key = f"{int(seed) & 0xFFFFFFFFFFFFFFFF:016x}"
    return pd.util.hash_pandas_object(stems.astype(str).reset_index(drop=True), index=False, hash_key=key).to_numpy()


def _first_k_per_class(df: pd.DataFrame, k: Optional[int]) -> pd.Index:
    """Index of the first ``k`` rows per ``target`` by ``key`` among rows not marked ``bad``.

    Rows with ``target < 0`` (clips of a task without a class) are all kept: a cap is per class.
    """
    ok = df[~df["bad"]]
    if k is None:
        return ok.index
    ranked = ok.sort_values(["target", "key"], kind="stable")
    keep = (ranked.groupby("target").cumcount().to_numpy() < k) | (ranked["target"].to_numpy() < 0)
    return ranked.index[keep]


def _check_on_error(on_error: str, missing: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if missing not in ("skip", "raise"):
        raise ValueError(f"missing must be 'skip' or 'raise', got {missing!r}")


def _check_decode_args(n_frames: int, image_size: int, target_length: int, num_mel_bins: int,
                       retrieval_clips_per_class: int, min_duration: float) -> None:
    for name, v in (("n_frames", n_frames), ("image_size", image_size), ("target_length", target_length),
                    ("num_mel_bins", num_mel_bins), ("retrieval_clips_per_class", retrieval_clips_per_class)):
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if min_duration < 0:
        raise ValueError(f"min_duration must be >= 0, got {min_duration}")


# --------------------------------------------------------------------------- the shared builder
def _build(
    rows: pd.DataFrame,
    stems: list[list[str]],
    defn: TaskDefinition,
    cfg: RealBenchmarkConfig,
    source: str,
    scan_workers: int,
    audio_dtype: torch.dtype,
    video_backend: str,
    video_dir: Optional[PathLike],
    extra_task_stats: Optional[pd.DataFrame] = None,
    data_report: Optional[DataReport] = None,
) -> RealAVBenchmark:
    """Turn labelled rows into the benchmark.

    ``rows`` columns: ``clip_id``, ``split``, ``role`` (``train``/``retrieval``/``pool``
    candidate, or ``""`` unused), ``task`` (-1 none), ``target`` (-1 none). ``stems`` holds
    one candidate stem list per name format, aligned with ``rows``. ``data_report`` carries
    the counts the caller found in the tables (duplicated, leaked, unknown labels); the
    missing, bad and replaced counts are added here.
    """
    rel_mask = (rows["role"] != "").to_numpy()
    rel = rows[rel_mask].reset_index(drop=True)
    rel_stems = [list(np.asarray(s, dtype=object)[rel_mask]) for s in stems]
    layout = find_layout(cfg.root, video_dir=video_dir, prepared=cfg.prepared,
                         allow_outside_root=cfg.allow_outside_root)
    located, report, _ = locate_clips(rel, rel_stems, layout, source)
    if report.n_missing:
        if cfg.missing == "raise":
            raise ManifestError(report.summary())
        warnings.warn(f"{report.summary()}; they are left out", RuntimeWarning, stacklevel=3)

    located["key"] = order_key(located["stem"], cfg.seed)
    located["bad"] = located["cache_bad"].to_numpy().copy()
    located["bad_reason"] = located["cache_reason"].where(located["cache_bad"], "")
    located["bad_source"] = np.where(located["cache_bad"], "prepare", "")
    usable = located["found"] | located["bad"]
    cand = {
        _ROLE_TRAIN: located[(located["role"] == _ROLE_TRAIN) & usable],
        _ROLE_RETRIEVAL: located[(located["role"] == _ROLE_RETRIEVAL) & usable],
    }
    caps = {_ROLE_TRAIN: cfg.max_train_clips_per_class, _ROLE_RETRIEVAL: cfg.retrieval_clips_per_class}
    scanned: dict[str, str] = {}
    while True:
        chosen = {r: _first_k_per_class(located.loc[c.index], caps[r]) for r, c in cand.items()}
        if not cfg.scan:
            break
        sel = pd.concat([located.loc[chosen[r], ["video_path", "audio_path"]] for r in chosen])
        sel = sel[~sel["video_path"].isin(scanned)].drop_duplicates("video_path")
        if sel.empty:
            break
        # A clip whose audio lives in a separate file may have a silent video track.
        own_audio = sel["audio_path"] == sel["video_path"]
        for need_audio in (True, False):
            paths = sel.loc[own_audio == need_audio, "video_path"].tolist()
            if paths:
                res = scan_clips(paths, num_workers=scan_workers, min_duration=cfg.min_duration,
                                 require_audio=need_audio)
                scanned.update({p: ("" if ok else str(reason))
                                for p, ok, reason in zip(res["path"], res["ok"], res["reason"])})
        newly = located["video_path"].map(lambda p: bool(scanned.get(p, ""))) & ~located["bad"]
        if not newly.any():
            break
        located.loc[newly, "bad"] = True
        located.loc[newly, "bad_reason"] = located.loc[newly, "video_path"].map(scanned)
        located.loc[newly, "bad_source"] = "scan"

    bad_cand = located[located["bad"] & located["role"].isin([_ROLE_TRAIN, _ROLE_RETRIEVAL])]
    bad_table = pd.DataFrame({
        "video_id": bad_cand["stem"], "video_path": bad_cand["video_path"], "split": bad_cand["split"],
        "target": bad_cand["target"], "reason": bad_cand["bad_reason"], "found_by": bad_cand["bad_source"],
    }).reset_index(drop=True)
    if len(bad_table):
        ex = "; ".join(f"{v}: {r}" for v, r in zip(bad_table["video_id"][:5], bad_table["reason"][:5]))
        if cfg.on_error == "raise":
            first = bad_table.iloc[0]
            raise ClipDecodeError(
                first["video_path"] or first["video_id"],
                f"{len(bad_table)} bad clip(s) among the benchmark's candidates (on_error='raise'): {ex}",
            )
        warnings.warn(f"{source}: {len(bad_table)} bad clip(s) skipped: {ex}", RuntimeWarning, stacklevel=3)

    located["selected"] = ""
    for r, idx in chosen.items():
        located.loc[idx, "selected"] = r
    pool_mask = (located["role"] == _ROLE_POOL) & located["found"] & ~located["bad"]
    located.loc[pool_mask, "selected"] = _ROLE_POOL

    names = defn.class_names
    train_sets, eval_sets, decoders = [], [], []
    for t, tname in enumerate(defn.task_names):
        for role, sets, is_train in ((_ROLE_TRAIN, train_sets, True), (_ROLE_RETRIEVAL, eval_sets, False)):
            part = located[(located["selected"] == role) & (located["task"] == t)].sort_values("clip_id")
            if part.empty:
                raise ValueError(
                    f"{source}: task {t} ({tname!r}) has no {'training' if is_train else 'retrieval'} clips on disk "
                    f"(classes {list(defn.classes[t])}); check the layout (docs/datasets.md) or the overrides"
                )
            decoders.append(_dataset(part, is_train, cfg, audio_dtype, video_backend))
            sets.append(as_avalanche_dataset(decoders[-1], part["target"].tolist(), t))

    pool = located[located["selected"] == _ROLE_POOL].sort_values("clip_id")
    clip_table = located[located["selected"] != ""].assign(
        class_name=lambda d: [names[i] if i >= 0 else "" for i in d["target"]],
        role=lambda d: d["selected"],
    )[["clip_id", "stem", "split", "role", "task", "target", "class_name", "video_path", "audio_path"]]
    clip_table = clip_table.rename(columns={"stem": "video_id"}).sort_values("clip_id").reset_index(drop=True)

    pool_ds = _dataset(pool, True, cfg, audio_dtype, video_backend) if len(pool) else None
    if pool_ds is not None:
        decoders.append(pool_ds)
    class_table, task_table = _stats_tables(located, defn, extra_task_stats)
    return RealAVBenchmark(
        scenario=with_task_labels(benchmark_from_datasets(train=train_sets, test=eval_sets)),
        config=cfg,
        task_names=list(defn.task_names),
        class_names=names,
        retrieval_sets=eval_sets,
        clip_table=clip_table,
        class_table=class_table,
        data_report=_data_report(data_report, located, caps, report, bad_table),
        decoders=decoders,
        definition=defn,
        root=Path(cfg.root),
        task_table=task_table,
        pretrain_pool=as_avalanche_dataset(pool_ds, [-1] * len(pool), 0) if pool_ds is not None else None,
        pretrain_table=clip_table[clip_table["role"] == _ROLE_POOL].reset_index(drop=True),
        missing_report=report,
        bad_clips=bad_table,
    )


def _data_report(base: Optional[DataReport], located: pd.DataFrame, caps: dict[str, Optional[int]],
                 lookup: Any, bad_table: pd.DataFrame) -> DataReport:
    """``base`` plus the missing, bad (by category) and replaced counts of the selection."""
    from avalanche_av.benchmarks.prepare import BAD_CATEGORIES, categorise_reason  # noqa: PLC0415 - import cycle

    rep = dataclasses.replace(base, bad=dict(base.bad)) if base is not None else DataReport()
    rep.missing += int(lookup.n_missing)
    for reason in bad_table["reason"]:
        # prepare-cache reasons read "category: reason"; scan reasons are raw.
        head = str(reason).split(": ", 1)[0]
        rep.add_bad(head if head in BAD_CATEGORIES else categorise_reason(str(reason)))
    # A chosen clip replaced a missing or bad one when it ranks beyond its class's cap among
    # all of the class's listed candidates.
    for role, cap in caps.items():
        if cap is None:
            continue
        cand = located[(located["role"] == role) & (located["target"] >= 0)].sort_values(["target", "key"],
                                                                                         kind="stable")
        rank = cand.groupby("target").cumcount().to_numpy()
        rep.replaced += int(((cand["selected"] == role).to_numpy() & (rank >= cap)).sum())
    return rep


def _dataset(part: pd.DataFrame, train: bool, cfg: RealBenchmarkConfig, audio_dtype: torch.dtype,
             video_backend: str) -> RealClipDataset:
    entries = pd.DataFrame({
        "video_path": part["video_path"].to_numpy(), "audio_path": part["audio_path"].to_numpy(),
        "target": part["target"].to_numpy(np.int64), "clip_id": part["clip_id"].to_numpy(np.int64),
        "video_id": part["stem"].to_numpy(),
    })
    return RealClipDataset(
        entries, n_frames=cfg.n_frames, image_size=cfg.image_size, target_length=cfg.target_length,
        num_mel_bins=cfg.num_mel_bins, train=train, on_error=cfg.on_error, audio_dtype=audio_dtype,
        video_backend=video_backend, min_duration=cfg.min_duration,
    )


def _stats_tables(located: pd.DataFrame, defn: TaskDefinition,
                  extra_task_stats: Optional[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    names = defn.class_names
    c2t = defn.class_to_task()
    cls = located[located["target"] >= 0]
    n_cls = len(names)

    def count(mask: pd.Series) -> np.ndarray:
        return np.bincount(cls.loc[mask, "target"].to_numpy(np.int64), minlength=n_cls)

    is_tr, is_re = cls["role"] == _ROLE_TRAIN, cls["role"] == _ROLE_RETRIEVAL
    ok = cls["found"] & ~cls["bad"]
    class_table = pd.DataFrame({
        "class": np.arange(n_cls),
        "name": names,
        "task": [c2t[n] for n in names],
        "task_name": [defn.task_names[c2t[n]] for n in names],
        "train_available": count(is_tr & ok),
        "train_used": count(cls["selected"] == _ROLE_TRAIN),
        "retrieval_available": count(is_re & ok),
        "retrieval_used": count(cls["selected"] == _ROLE_RETRIEVAL),
        "missing": count(~cls["found"] & ~cls["bad"]),
        "bad": count(cls["bad"]),
    })
    g = class_table.groupby("task")

    def per_task(mask: pd.Series) -> np.ndarray:
        return np.bincount(located.loc[mask, "task"].to_numpy(np.int64), minlength=defn.n_tasks)[: defn.n_tasks]

    task_table = pd.DataFrame({
        "task": np.arange(defn.n_tasks),
        "name": list(defn.task_names),
        "classes": g.size().reindex(range(defn.n_tasks), fill_value=0).to_numpy(),
        "train_clips": per_task(located["selected"] == _ROLE_TRAIN),
        "retrieval_clips": per_task(located["selected"] == _ROLE_RETRIEVAL),
        "min_train_per_class": g["train_used"].min().reindex(range(defn.n_tasks), fill_value=0).to_numpy(),
        "max_train_per_class": g["train_used"].max().reindex(range(defn.n_tasks), fill_value=0).to_numpy(),
        "train_available": g["train_available"].sum().reindex(range(defn.n_tasks), fill_value=0).to_numpy(),
        "missing": g["missing"].sum().reindex(range(defn.n_tasks), fill_value=0).to_numpy(),
        "bad": g["bad"].sum().reindex(range(defn.n_tasks), fill_value=0).to_numpy(),
    })
    if extra_task_stats is not None:
        task_table = task_table.merge(extra_task_stats, on="task", how="left").fillna(0)
    pool = located[located["selected"] == _ROLE_POOL]
    task_table.attrs["pretrain_pool_clips"] = int(len(pool))
    return class_table, task_table


def benchmark_stats(benchmark: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(task_table, class_table)`` of a real benchmark.

    Task table: ``task, name, classes, train_clips, retrieval_clips, min/max_train_per_class,
    train_available`` (before the cap), ``missing`` (files not on disk), ``bad``; for
    Continual-AS also ``spanning_excluded`` (clips touching this and another task) and
    ``unclassed`` (clips touching only this task but none of its used classes). Class table:
    ``class, name, task, task_name, train_available, train_used, retrieval_available,
    retrieval_used, missing, bad``.
    """
    if not isinstance(benchmark, RealAVBenchmark):
        raise ValueError("benchmark_stats needs a benchmark built by continual_vs or continual_as")
    return benchmark.task_table, benchmark.class_table


def format_stats(benchmark: Any, per_class: bool = True) -> str:
    """The statistics of :func:`benchmark_stats` as printable text."""
    tasks, classes = benchmark_stats(benchmark)
    cfg = benchmark.config
    lines = [
        f"{cfg.name} at {cfg.root}: {len(tasks)} tasks, {len(classes)} classes, "
        f"{int(tasks['train_clips'].sum())} training clips, {int(tasks['retrieval_clips'].sum())} retrieval clips, "
        f"pre-training pool {tasks.attrs.get('pretrain_pool_clips', 0)} clips",
        f"order: {' -> '.join(cfg.task_names)}{' (shuffled, paper Table 7)' if cfg.shuffled else ''}; "
        f"training cap per class: {cfg.max_train_clips_per_class if cfg.max_train_clips_per_class else 'none'}, "
        f"retrieval clips per class: {cfg.retrieval_clips_per_class}",
        f"files: {benchmark.missing_report.summary()}; bad clips left out: {len(benchmark.bad_clips)}",
        f"data: {benchmark.data_report.summary()}",
        "",
        tasks.to_string(index=False),
    ]
    if per_class:
        lines += ["", classes.to_string(index=False)]
    return "\n".join(lines)


def _config(name: str, root: PathLike, defn: TaskDefinition, **kw: Any) -> RealBenchmarkConfig:
    prepared = kw.pop("prepared")
    return RealBenchmarkConfig(
        name=name, root=os.fspath(root), task_names=defn.task_names, shuffled=defn.shuffled,
        classes_per_task=defn.classes_per_task, max_train_clips_per_class=defn.max_train_clips_per_class,
        prepared=None if prepared is None else os.fspath(prepared), **kw,
    )


# --------------------------------------------------------------------------- Continual-VS
def continual_vs(
    root: PathLike,
    *,
    csv: Optional[PathLike] = None,
    shuffled: bool = False,
    task_order: Optional[Sequence[str]] = None,
    n_tasks: Optional[int] = None,
    classes_per_task: Union[int, None, str] = DEFAULT,
    max_train_clips_per_class: Union[int, None, str] = DEFAULT,
    retrieval_clips_per_class: int = 5,
    seed: int = 0,
    n_frames: int = 4,
    image_size: int = 224,
    target_length: int = 1024,
    num_mel_bins: int = 128,
    min_duration: float = 1.0,
    on_error: OnError = "skip",
    missing: OnError = "skip",
    scan: bool = False,
    scan_workers: int = 8,
    prepared: Union[str, PathLike, None] = "auto",
    video_dir: Optional[PathLike] = None,
    audio_dtype: torch.dtype = torch.float16,
    video_backend: str = "auto",
    allow_outside_root: bool = False,
) -> RealAVBenchmark:
    """Continual-VS: VGGSound split into 8 tasks by category (paper App. B).

    Layout (``docs/datasets.md``): ``root/vggsound.csv`` and the clips
    ``<youtube_id>_<start:06d>.mp4`` (or ``.mkv``/``.webm``) anywhere under ``root/video/``
    (else ``root``); optionally ``root/audio/<stem>.wav`` and ``root/frames/<stem>/`` or a
    ``prepare`` cache in ``root/prepared/``.

    Args:
        root: dataset root.
        csv: the clip table (default ``root/vggsound.csv``).
        shuffled: the task order of paper Table 7.
        task_order, n_tasks: an explicit order / only the first tasks (for small runs).
        classes_per_task: classes per task, the first of each group alphabetically (20).
        max_train_clips_per_class: training cap per class (400; ``None``: no cap).
        retrieval_clips_per_class: retrieval clips per class, from the ``test`` split (5).
        seed: seeds which clips fill the caps.
        n_frames, image_size, target_length, num_mel_bins: decoding parameters; they must
            match the model's input shapes.
        min_duration: clips shorter than this (seconds) are bad.
        on_error: ``"skip"`` bad clips (counted in ``bad_clips``) or ``"raise"``.
        missing: ``"skip"`` rows whose files are missing (with a warning giving counts and
            examples) or ``"raise"`` a :class:`ManifestError`.
        scan: probe the headers of the chosen clips first (``scan_workers`` threads), so
            that bad ones are replaced before training instead of skipped at load time.
        prepared: a ``prepare`` cache to read frames/audio from (``"auto"``: ``root/prepared``
            if present; ``None``: none).
        video_dir: the video folder, if not one of the defaults.
        audio_dtype: dtype of the fbank in samples (float16 halves host memory).
        video_backend: ``"auto"``, ``"decord"`` or ``"pyav"``.
        allow_outside_root: read ``prepare``-cache manifest entries whose paths resolve
            outside ``root`` and the cache folder (refused by default, see
            ``docs/reliability.md``).

    Table checks (``docs/reliability.md``): a clip listed twice in a split is used once
    (``data_report.duplicated``); a clip listed in both ``train`` and ``test`` is dropped
    from training (``leaked_dropped``); rows whose label is not a VGGSound class are left
    out, also of the pre-training pool (``unknown_labels``). Each is warned about with
    examples.

    Returns:
        A :class:`~avalanche_av.benchmarks.base.RealAVBenchmark`: ``scenario`` with
        ``train_stream``/``test_stream`` (one experience per task), and the fields
        ``config`` (:class:`RealBenchmarkConfig`), ``definition``,
        ``task_names``, ``class_names`` (target ``i`` is ``class_names[i]``),
        ``retrieval_sets``, ``pretrain_pool`` (an Avalanche dataset, task label 0, targets
        -1; ``None`` if empty) and ``pretrain_table``, ``clip_table`` (every used clip with
        its role), ``class_table``/``task_table`` (see :func:`benchmark_stats`),
        ``missing_report``, ``bad_clips``, ``data_report`` (counts of missing, bad by
        category and replaced clips) and ``decoders``.
    """
    _check_on_error(on_error, missing)
    _check_decode_args(n_frames, image_size, target_length, num_mel_bins, retrieval_clips_per_class, min_duration)
    defn = load_task_definition("continual_vs", shuffled=shuffled, task_order=task_order, n_tasks=n_tasks,
                                classes_per_task=classes_per_task, max_train_clips_per_class=max_train_clips_per_class)
    root = Path(root)
    csv_path = Path(csv) if csv is not None else root / "vggsound.csv"
    if not csv_path.is_file():
        found = sorted(p.name for p in root.glob("*.csv")) if root.is_dir() else []
        raise FileNotFoundError(f"VGGSound table {csv_path} not found (CSV files in {root}: {found or 'none'})")
    table = read_vggsound_csv(csv_path)
    checks = check_clip_rows(table, ["youtube_id", "start_seconds"],
                             vggsound_clip_name(table["youtube_id"], table["start_seconds"]), eval_split="test",
                             label_col="label", source=f"VGGSound table {csv_path}")
    unknown = find_unknown_labels(table["label"], vggsound_stat()["name"])
    checks.unknown_labels, checks.unknown_label_names = unknown.n_rows, unknown.labels
    if not checks.ok:
        warnings.warn(checks.summary(), RuntimeWarning, stacklevel=2)
    c2i, c2t = defn.class_to_index(), defn.class_to_task()
    target = table["label"].map(c2i).fillna(-1).astype("int64")
    task = table["label"].map(c2t).fillna(-1).astype("int64")
    is_task = target >= 0
    role = np.where(is_task & (table["split"] == "train"), _ROLE_TRAIN,
                    np.where(is_task & (table["split"] == "test"), _ROLE_RETRIEVAL,
                             np.where(~is_task & (table["split"] == "train"), _ROLE_POOL, "")))
    role = np.where(checks.keep & ~unknown.mask, role, "")
    rows = pd.DataFrame({
        "clip_id": table["row"].to_numpy(np.int64), "split": table["split"], "role": role,
        "task": np.where(is_task, task, -1), "target": np.where(is_task, target, -1), "label": table["label"],
    })
    stems = [list(vggsound_clip_name(table["youtube_id"], table["start_seconds"]))]
    cfg = _config("continual_vs", root, defn, retrieval_clips_per_class=int(retrieval_clips_per_class), seed=int(seed), n_frames=int(n_frames),
                  image_size=int(image_size), target_length=int(target_length), num_mel_bins=int(num_mel_bins),
                  min_duration=float(min_duration), on_error=on_error, missing=missing, scan=bool(scan),
                  prepared=prepared, allow_outside_root=bool(allow_outside_root))
    return _build(rows, stems, defn, cfg, f"VGGSound table {csv_path}", scan_workers, audio_dtype, video_backend,
                  video_dir, data_report=DataReport(**checks.counts()))


# --------------------------------------------------------------------------- Continual-AS
_AS_TRAIN_FILES = ("balanced_train_segments.csv", "unbalanced_train_segments.csv")
_AS_EVAL_FILE = "eval_segments.csv"
_AS_ONTOLOGY_FILES = ("class_labels_indices.csv", "ontology.json")


def _as_membership(
    table: pd.DataFrame, defn: TaskDefinition, ontology: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Per row: the number of tasks it touches, the touched task (if one) and its target.

    A label touches task ``t`` when its display name is one of the task's definition
    classes (all of them, before ``classes_per_task``) or parent categories. The target is
    the smallest class index among the row's labels that are used classes of its task
    (i.e. the first in the definition's order), ``-1`` when it has none.

    Returns:
        ``n_touched (N,)``, ``task (N,)`` (-1 unless exactly one), ``target (N,)`` (-1 unless
        exactly one task and a used class of it), and the ``(pos, task)`` touch pairs.
    """
    mid2name = dict(zip(ontology["mid"], ontology["display_name"]))
    names = set(ontology["display_name"])
    name2tasks: dict[str, list[int]] = {}
    for t, (allc, parents) in enumerate(zip(defn.all_classes, defn.parent_categories)):
        for nm in (*allc, *parents):
            name2tasks.setdefault(nm, [])
            if t not in name2tasks[nm]:
                name2tasks[nm].append(t)
    c2i = defn.class_to_index()
    n = len(table)
    ex = pd.DataFrame({"pos": np.arange(n), "label": table["labels"].to_numpy()}).explode("label")
    # Labels are ontology ids; a display name given instead is accepted as itself.
    name = ex["label"].map(lambda x: mid2name.get(x, x if x in names else None))
    ex = ex.assign(name=name.to_numpy()).dropna(subset=["name"])
    ex["cls"] = ex["name"].map(c2i).fillna(-1).astype("int64")
    ex["task"] = ex["name"].map(lambda x: name2tasks.get(x, []))
    pairs = ex[["pos", "task"]].explode("task").dropna(subset=["task"]).astype("int64").drop_duplicates()
    n_touch = np.bincount(pairs["pos"].to_numpy(np.int64), minlength=n).astype(np.int64)
    task = np.full(n, -1, np.int64)
    one = n_touch[pairs["pos"].to_numpy(np.int64)] == 1
    task[pairs["pos"].to_numpy(np.int64)[one]] = pairs["task"].to_numpy(np.int64)[one]
    target = np.full(n, -1, np.int64)
    cls = ex[ex["cls"] >= 0].groupby("pos")["cls"].min()
    target[cls.index.to_numpy(np.int64)] = cls.to_numpy(np.int64)
    target[n_touch != 1] = -1
    return n_touch, task, target, pairs.reset_index(drop=True)


def continual_as(
    root: PathLike,
    *,
    train_csvs: Optional[Sequence[PathLike]] = None,
    eval_csv: Optional[PathLike] = None,
    ontology: Optional[PathLike] = None,
    name_formats: Sequence[str] = AUDIOSET_NAME_FORMATS,
    include_unclassed: bool = False,
    shuffled: bool = False,
    task_order: Optional[Sequence[str]] = None,
    n_tasks: Optional[int] = None,
    classes_per_task: Union[int, None, str] = DEFAULT,
    max_train_clips_per_class: Union[int, None, str] = DEFAULT,
    retrieval_clips_per_class: int = 5,
    seed: int = 0,
    n_frames: int = 4,
    image_size: int = 224,
    target_length: int = 1024,
    num_mel_bins: int = 128,
    min_duration: float = 1.0,
    on_error: OnError = "skip",
    missing: OnError = "skip",
    scan: bool = False,
    scan_workers: int = 8,
    prepared: Union[str, PathLike, None] = "auto",
    video_dir: Optional[PathLike] = None,
    audio_dtype: torch.dtype = torch.float16,
    video_backend: str = "auto",
    allow_outside_root: bool = False,
) -> RealAVBenchmark:
    """Continual-AS: AudioSet split into 7 tasks by ontology category (paper App. B).

    Layout (``docs/datasets.md``): the segment CSVs ``balanced_train_segments.csv``
    (and/or ``unbalanced_train_segments.csv``) and ``eval_segments.csv``, an ontology table
    (``class_labels_indices.csv`` or ``ontology.json``) in ``root``; clips under
    ``root/video/`` named by one of ``name_formats`` (default ``<YTID>_<start:06d>``,
    ``<YTID>``, ``Y<YTID>``, ``<YTID>_<start_ms>_<end_ms>``).

    Task membership: a clip *touches* a task when one of its labels is one of the task's
    classes or parent categories (by display name). Clips touching several tasks are
    excluded everywhere. A clip touching one task is a training (or retrieval) clip of the
    task when it carries one of the task's used classes; its target is the first such class
    in the definition's order. Clips touching one task through a parent category or an
    unused class only are left out unless ``include_unclassed`` (then they train the task
    with target -1, uncapped). Clips touching no task form the pre-training pool.

    Args:
        train_csvs: training segment tables (default: those of ``balanced_train_segments.csv``,
            ``unbalanced_train_segments.csv`` present in ``root``).
        eval_csv: the evaluation table (default ``root/eval_segments.csv``); retrieval clips
            come from it.
        ontology: the label table (default: the first of ``class_labels_indices.csv``,
            ``ontology.json`` in ``root``).
        classes_per_task: the first ``k`` classes of each task in the file's order (default:
            all). max_train_clips_per_class: default no cap.
        Other arguments: as in :func:`continual_vs`.

    Returns:
        As :func:`continual_vs`; ``task_table`` also counts ``spanning_excluded`` and
        ``unclassed`` clips per task.
    """
    _check_on_error(on_error, missing)
    _check_decode_args(n_frames, image_size, target_length, num_mel_bins, retrieval_clips_per_class, min_duration)
    defn = load_task_definition("continual_as", shuffled=shuffled, task_order=task_order, n_tasks=n_tasks,
                                classes_per_task=classes_per_task, max_train_clips_per_class=max_train_clips_per_class)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
    if train_csvs is None:
        train_paths = [root / f for f in _AS_TRAIN_FILES if (root / f).is_file()]
        if not train_paths:
            raise FileNotFoundError(f"no AudioSet training table in {root}: expected one of {list(_AS_TRAIN_FILES)}")
    else:
        train_paths = [Path(p) for p in train_csvs]
    eval_path = Path(eval_csv) if eval_csv is not None else root / _AS_EVAL_FILE
    if ontology is None:
        onto = [root / f for f in _AS_ONTOLOGY_FILES if (root / f).is_file()]
        if not onto:
            raise FileNotFoundError(f"no AudioSet ontology table in {root}: expected one of {list(_AS_ONTOLOGY_FILES)}")
        onto_path = onto[0]
    else:
        onto_path = Path(ontology)
    onto_df = read_audioset_ontology(onto_path)
    lacking = sorted({c for cs in defn.classes for c in cs} - set(onto_df["display_name"]))
    if lacking:
        warnings.warn(f"{onto_path}: {len(lacking)} task classes are not in the ontology table and get no clips: "
                      f"{lacking[:5]}", RuntimeWarning, stacklevel=2)

    parts = [read_audioset_segments(p, split="train") for p in train_paths]
    parts.append(read_audioset_segments(eval_path, split="eval"))
    table = pd.concat(parts, ignore_index=True)
    table["row"] = np.arange(len(table), dtype=np.int64)
    checks = check_clip_rows(table, ["ytid", "start_seconds"], audioset_clip_names(table, name_formats[0]),
                             eval_split="eval", label_col="positive_labels",
                             source=f"AudioSet tables {[p.name for p in [*train_paths, eval_path]]}")
    unknown = find_unknown_labels(table["labels"], [*onto_df["mid"], *onto_df["display_name"]])
    checks.unknown_labels, checks.unknown_label_names = unknown.n_rows, unknown.labels
    if not checks.ok:
        warnings.warn(checks.summary(), RuntimeWarning, stacklevel=2)

    n_touch, task, target, pairs = _as_membership(table, defn, onto_df)
    is_train = (table["split"] == "train").to_numpy()
    valid = checks.keep & ~unknown.mask
    classed = (n_touch == 1) & (target >= 0) & valid
    unclassed = (n_touch == 1) & (target < 0) & valid
    in_task = classed | (unclassed & include_unclassed)
    role = np.where(in_task & is_train, _ROLE_TRAIN,
                    np.where(classed & ~is_train, _ROLE_RETRIEVAL,
                             np.where(valid & (n_touch == 0) & is_train, _ROLE_POOL, "")))
    rows = pd.DataFrame({
        "clip_id": table["row"].to_numpy(np.int64), "split": table["split"], "role": role,
        "task": np.where(role != "", task, -1), "target": np.where(role != "", target, -1),
    })
    # Per-task counts of what the membership rule left out (for the stats table).
    spanning_pos = np.flatnonzero((n_touch > 1) & valid)
    span_tasks = pairs["task"].to_numpy(np.int64)[np.isin(pairs["pos"].to_numpy(np.int64), spanning_pos)]
    extra = pd.DataFrame({
        "task": np.arange(defn.n_tasks),
        "spanning_excluded": np.bincount(span_tasks, minlength=defn.n_tasks)[: defn.n_tasks],
        "unclassed": np.bincount(task[unclassed], minlength=defn.n_tasks)[: defn.n_tasks],
    })
    stems = [audioset_clip_names(table, f) for f in name_formats]
    cfg = _config("continual_as", root, defn,
                  retrieval_clips_per_class=int(retrieval_clips_per_class), seed=int(seed), n_frames=int(n_frames),
                  image_size=int(image_size), target_length=int(target_length), num_mel_bins=int(num_mel_bins),
                  min_duration=float(min_duration), on_error=on_error, missing=missing, scan=bool(scan),
                  prepared=prepared, allow_outside_root=bool(allow_outside_root))
    return _build(rows, stems, defn, cfg, f"AudioSet tables {[p.name for p in train_paths]} + {eval_path.name}",
                  scan_workers, audio_dtype, video_backend, video_dir, extra_task_stats=extra,
                  data_report=DataReport(**checks.counts()))

