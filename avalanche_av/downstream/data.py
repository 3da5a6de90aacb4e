"""Datasets of the downstream tasks: one :class:`DownstreamData` per (dataset, split layout).

A :class:`DownstreamData` holds the clips (the shared contract tuple ``(audio, video, target,
clip_id)``), a ``train`` / ``val`` / ``test`` assignment per clip, and the labels a task needs:
clip labels (single- or multi-label), per-segment labels (event localization) or per-frame
pixel masks (sound-source segmentation).

Builders:

* :func:`synthetic_data`: the built-in sounding-objects stream, read through the generator's
  own functions (:func:`~avalanche_av.benchmarks.synthetic.build_classes`,
  :func:`~avalanche_av.benchmarks.synthetic.sample_scenes`,
  :func:`~avalanche_av.benchmarks.synthetic.render_clips`,
  :func:`~avalanche_av.benchmarks.synthetic.sounding_masks`). Segments are frames; masks are
  the source's patch cells in the frames where it sounds, upsampled to pixels.
* :func:`ave_data`, :func:`avsbench_s4_data`, :func:`msrvtt_data`, :func:`vggsound_data`,
  :func:`audioset_data`: local copies of the real datasets (``docs/downstream.md``).

Heads are selected on a validation split, never on the test split. Datasets without an official
validation split (the synthetic stream, VGGSound, AudioSet, MSR-VTT) get one carved out of
their training split: ``val_fraction`` of each class (of the whole split when unlabelled),
chosen with ``split_seed``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DownstreamData",
    "MaskSource",
    "TensorMaskSource",
    "SyntheticClips",
    "carve_validation",
    "limit_train",
    "synthetic_data",
    "ave_data",
    "avsbench_s4_data",
    "msrvtt_data",
    "vggsound_data",
    "audioset_data",
    "DATASETS",
    "build_data",
]

SPLITS = ("train", "val", "test")
#: clips no task reads (e.g. left out by a few-shot limit)
UNUSED = "unused"


class MaskSource(Protocol):
    """Per-clip masks: ``source[i] -> (masks (F, H, W) bool, valid (F,) bool)``; ``get_batch(idx)`` stacks
    them, ``valid_frames()`` is ``(N, F)`` bool without loading any mask."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def valid_frames(self) -> torch.Tensor: ...


class TensorMaskSource:
    """Masks held on a coarse grid and upsampled to pixels on access.

    Args:
        grid: ``(N, F, gh, gw)`` bool, e.g. the synthetic stream's sounding patch cells.
        scale: pixels per grid cell (the patch size).
        valid: ``(N, F)`` bool annotated frames (default all).
    """

    def __init__(self, grid: torch.Tensor, scale: int, valid: Optional[torch.Tensor] = None) -> None:
        if grid.dim() != 4:
            raise ValueError(f"grid must be (N, F, gh, gw), got {tuple(grid.shape)}")
        self.grid, self.scale = grid.bool(), int(scale)
        self.valid = torch.ones(grid.shape[:2], dtype=torch.bool) if valid is None else valid.bool()

    def __len__(self) -> int:
        return int(self.grid.shape[0])

    def valid_frames(self) -> torch.Tensor:
        """``(N, F)`` bool annotated frames."""
        return self.valid

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grid[idx]
        px = g.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)
        return px, self.valid[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        m, v = self.get_batch(torch.tensor([int(i)]))
        return m[0], v[0]


@dataclass
class DownstreamData:
    """One dataset prepared for the downstream tasks.

    Attributes:
        name: human-readable name, e.g. ``"synthetic"`` or ``"ave"``.
        key: identity of the clips and their decoding (the feature-cache key).
        clips: dataset of ``(audio (T, F), video (n_frames, 3, H, W) uint8, target, clip_id)``.
        split: ``(N,)`` str array, each ``"train"``, ``"val"`` or ``"test"``.
        input_shapes: ``audio_length``, ``num_mel_bins``, ``n_frames``, ``image_size`` of the clips.
        class_names: ``C`` names.
        labels: ``(N,)`` int64 class indices, or ``(N, C)`` bool multi-hot; ``None`` if unlabelled.
        segment_labels: ``(N, S)`` int64; background is ``C``.
        masks: per-frame pixel masks, aligned with the clips' frames.
        mask_size: ``(H, W)`` of the masks.
        report: counts worth reporting (clips per split, missing files, ...).
    """

    name: str
    key: str
    clips: Dataset
    split: np.ndarray
    input_shapes: dict
    class_names: list[str]
    labels: Optional[torch.Tensor] = None
    segment_labels: Optional[torch.Tensor] = None
    masks: Optional[Any] = None
    mask_size: Optional[tuple[int, int]] = None
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.clips)  # type: ignore[arg-type]
        self.split = np.asarray(self.split, dtype=object)
        if self.split.shape != (n,):
            raise ValueError(f"{self.name}: split has {self.split.shape[0]} entries for {n} clips")
        bad = sorted(set(self.split.tolist()) - {*SPLITS, UNUSED})
        if bad:
            raise ValueError(f"{self.name}: unknown split names {bad}; allowed: {list(SPLITS)}")
        for attr in ("labels", "segment_labels"):
            t = getattr(self, attr)
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{self.name}: {attr} has {t.shape[0]} rows for {n} clips")
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"{self.name}: masks has {len(self.masks)} entries for {n} clips")
        self.report.setdefault("clips", {s: int((self.split == s).sum()) for s in (*SPLITS, UNUSED)})

    def __len__(self) -> int:
        return int(self.split.shape[0])

    @property
    def multi_label(self) -> bool:
        return self.labels is not None and self.labels.dim() == 2

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_segments(self) -> Optional[int]:
        return None if self.segment_labels is None else int(self.segment_labels.shape[1])

    def indices(self, split: str) -> torch.Tensor:
        """``(n,)`` int64 clip indices of one split, in clip order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return torch.from_numpy(np.flatnonzero(self.split == split)).long()

    def require(self, what: str, task: str) -> None:
        """Raise a ``ValueError`` when the dataset lacks what ``task`` needs."""
        have = {"labels": self.labels is not None, "segment_labels": self.segment_labels is not None,
                "masks": self.masks is not None}[what]
        if not have:
            raise ValueError(f"task {task!r} needs {what.replace('_', ' ')}, which dataset {self.name!r} does not have")
        for s in ("train", "val", "test"):
            if not (self.split == s).any():
                raise ValueError(f"dataset {self.name!r} has no {s} clips; task {task!r} needs train, val and test")


def limit_train(data: "DownstreamData", per_class: int, seed: int = 0) -> "DownstreamData":
    """A copy of ``data`` whose training split keeps ``per_class`` clips of each class (few-shot heads).

    The other training clips are marked ``"unused"``; validation and test clips are unchanged and
    the feature cache is shared (same clips). Unlabelled or multi-label data keeps
    ``per_class x n_classes`` (or ``per_class``) clips of the whole split.
    """
    import dataclasses  # noqa: PLC0415

    if per_class < 1:
        raise ValueError(f"train_per_class must be >= 1, got {per_class}")
    split = np.asarray(data.split, dtype=object).copy()
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(split == "train")
    if data.labels is None or data.multi_label:
        keep = per_class * max(1, data.n_classes)
        split[rng.permutation(train)[keep:]] = UNUSED
    else:
        lab = data.labels.numpy()[train]
        for c in np.unique(lab):
            split[rng.permutation(train[lab == c])[per_class:]] = UNUSED
    report = {**data.report, "train_per_class": per_class}
    report.pop("clips", None)
    return dataclasses.replace(data, split=split, report=report)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def carve_validation(split: np.ndarray, labels: Optional[torch.Tensor], fraction: float, seed: int) -> np.ndarray:
    """Move ``fraction`` of each class's training clips to ``"val"`` (at least one per class with 2+ clips).

    Multi-label or unlabelled data is carved over the whole training split. Returns a new array.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    out = np.asarray(split, dtype=object).copy()
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(out == "train")
    if labels is None or labels.dim() == 2:
        groups = [train]
    else:
        lab = labels.numpy()[train]
        groups = [train[lab == c] for c in np.unique(lab)]
    for g in groups:
        if len(g) < 2:
            continue
        k = max(1, int(round(fraction * len(g))))
        out[rng.permutation(g)[:k]] = "val"
    return out


# --------------------------------------------------------------------------- synthetic
class SyntheticClips(Dataset):
    """Clips of the synthetic stream, rendered on first access (extraction can come from cache).

    ``__getitem__(i)`` returns the contract tuple of clip ``clip_ids[i]``.
    """

    def __init__(self, cfg: Any, clip_ids: torch.Tensor, targets: torch.Tensor, chunk_size: int = 64) -> None:
        self.cfg, self.clip_ids, self.targets = cfg, clip_ids.long(), targets.long()
        self.chunk_size = int(chunk_size)
        self._audio: Optional[torch.Tensor] = None
        self._video: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.clip_ids.shape[0])

    def materialize(self) -> None:
        """Render every clip (video uint8, fbank float16) through the generator."""
        if self._audio is not None:
            return
        from ..benchmarks.synthetic import build_classes, render_clips, sample_scenes  # noqa: PLC0415

        cfg = self.cfg
        classes = build_classes(cfg)
        n = len(self)
        audio = torch.empty(n, cfg.target_length, cfg.num_mel_bins, dtype=torch.float16)
        video = torch.empty(n, cfg.n_frames, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
        for lo in range(0, n, self.chunk_size):
            hi = min(n, lo + self.chunk_size)
            v, a, _ = render_clips(cfg, classes, sample_scenes(cfg, classes, self.clip_ids[lo:hi]))
            video[lo:hi], audio[lo:hi] = v, a
        self._audio, self._video = audio, video

    @property
    def audio(self) -> torch.Tensor:
        self.materialize()
        assert self._audio is not None
        return self._audio

    @property
    def video(self) -> torch.Tensor:
        self.materialize()
        assert self._video is not None
        return self._video

    def __getitem__(self, i: int):
        return self.audio[i], self.video[i], self.targets[i], self.clip_ids[i]


def synthetic_data(
    seed: int = 0,
    n_tasks: int = 4,
    classes_per_task: int = 4,
    train_clips_per_class: int = 128,
    eval_clips_per_class: int = 16,
    heldout_tasks: int = 0,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    **overrides: Any,
) -> DownstreamData:
    """The synthetic sounding-objects stream as a downstream dataset.

    With ``heldout_tasks = 0`` the clips are those of the stream ``sounding_objects(seed,
    n_tasks, ...)`` pre-trains on: its training clips are the heads' training (and validation)
    clips, its evaluation clips, which pre-training never trains on, are the test clips.

    With ``heldout_tasks = h > 0`` the clips are those of ``h`` further tasks of the same
    generator (new classes that pre-training never saw): the stream has the prefix property,
    so tasks ``n_tasks .. n_tasks + h - 1`` extend the pre-training stream. Labels are renumbered
    from 0 over the held-out classes.

    Ground truth: ``labels`` = class; ``segment_labels (N, n_frames)`` = class in the frames where
    the source sounds (``active_frames``), background ``C`` elsewhere; masks = the source's patch
    cells (``sounding_masks``) in sounding frames, empty in silent ones, upsampled to pixels.
    """
    from ..benchmarks.synthetic import SoundingObjectsConfig, build_classes, sample_scenes, sounding_masks  # noqa: PLC0415

    if heldout_tasks < 0:
        raise ValueError(f"heldout_tasks must be >= 0, got {heldout_tasks}")
    cfg = SoundingObjectsConfig(seed=seed, n_tasks=n_tasks + heldout_tasks, classes_per_task=classes_per_task,
                                train_clips_per_class=train_clips_per_class,
                                eval_clips_per_class=eval_clips_per_class).replace(**overrides)
    if cfg.eval_clips_per_class < 1:
        raise ValueError("the synthetic downstream data needs eval_clips_per_class >= 1 (its test clips)")
    first_task = n_tasks if heldout_tasks else 0
    ids = torch.arange(first_task * cfg.clips_per_task, cfg.n_clips, dtype=torch.int64)
    classes = build_classes(cfg)
    scenes = sample_scenes(cfg, classes, ids)
    first_class = first_task * classes_per_task
    labels = scenes.target - first_class
    names = classes.names[first_class:]
    split = np.where(scenes.split.numpy() == 1, "test", "train").astype(object)
    split = carve_validation(split, labels, val_fraction, split_seed)
    active = scenes.bright[:, 0]  # (N, F) frames where the source sounds
    seg = torch.where(active, labels[:, None], torch.full_like(active, len(names), dtype=torch.int64))
    grid = sounding_masks(cfg, scenes) & active[:, :, None, None]
    knobs = {"seed": seed, "n_tasks": n_tasks, "classes_per_task": classes_per_task,
             "train_clips_per_class": train_clips_per_class, "eval_clips_per_class": eval_clips_per_class,
             "heldout_tasks": heldout_tasks, **overrides}
    key = _key({"dataset": "synthetic", "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                   for k, v in cfg.__dict__.items()}, "first_task": first_task})
    return DownstreamData(
        name="synthetic" + ("-heldout" if heldout_tasks else ""),
        key=key,
        clips=SyntheticClips(cfg, ids, labels),
        split=split,
        input_shapes={"audio_length": cfg.target_length, "num_mel_bins": cfg.num_mel_bins,
                      "n_frames": cfg.n_frames, "image_size": cfg.image_size},
        class_names=list(names),
        labels=labels,
        segment_labels=seg,
        masks=TensorMaskSource(grid, cfg.patch_size),
        mask_size=(cfg.image_size, cfg.image_size),
        report={"stream": knobs, "val_fraction": val_fraction, "split_seed": split_seed,
                "sounding_frame_share": float(active.float().mean())},
    )


# --------------------------------------------------------------------------- real datasets
_BASE_SHAPES = {"audio_length": 1024, "num_mel_bins": 128, "n_frames": 4, "image_size": 224}


def _shapes(input_shapes: Optional[dict], **dataset: int) -> dict:
    """Clip shapes: the model's (``input_shapes``, e.g. its preset's) except the time axes a
    dataset fixes (AVE: 10 frames over 10 s of audio; S4: 5 frames over 5 s)."""
    out = {**_BASE_SHAPES, **(input_shapes or {}), **dataset}
    bad = sorted(set(out) - set(_BASE_SHAPES))
    if bad:
        raise ValueError(f"input_shapes may only set {sorted(_BASE_SHAPES)}, got {bad}")
    return {k: int(v) for k, v in out.items()}


def _clip_dataset(entries: Any, shapes: dict, on_error: str = "raise") -> Dataset:
    from ..benchmarks.io.dataset import AVClipDataset  # noqa: PLC0415

    return AVClipDataset(entries, n_frames=shapes["n_frames"], image_size=shapes["image_size"],
                         target_length=shapes["audio_length"], num_mel_bins=shapes["num_mel_bins"], train=False,
                         on_error=on_error, audio_dtype=torch.float16)


def ave_data(root: str, input_shapes: Optional[dict] = None, video_dir: Optional[str] = None,
             on_missing: str = "error") -> DownstreamData:
    """AVE for event localization (10 one-second segments; classification uses the clip category).

    Clips are decoded with 10 frames (one per segment) and 1024 fbank frames (10.24 s); the model
    adapts its positional tables. ``input_shapes`` gives the mel bins and image side.
    """
    from ..benchmarks.real.ave import read_ave  # noqa: PLC0415

    t = read_ave(root, video_dir=video_dir, on_missing=on_missing)  # type: ignore[arg-type]
    shapes = _shapes(input_shapes, n_frames=10, audio_length=1024)
    df = t.clips
    entries = df.assign(audio_path=df["video_path"], clip_id=np.arange(len(df)))
    return DownstreamData(
        name="ave", key=_key({"dataset": "ave", "root": str(Path(root).resolve()), "ids": df["video_id"].tolist(),
                              "shapes": shapes}),
        clips=_clip_dataset(entries, shapes), split=df["split"].to_numpy(), input_shapes=shapes,
        class_names=t.class_names, labels=torch.tensor(df["target"].to_numpy(dtype=np.int64)),
        segment_labels=torch.as_tensor(t.segment_labels), report={"missing": len(t.missing)},
    )


def avsbench_s4_data(root: str, input_shapes: Optional[dict] = None, mask_size: Optional[int] = None,
                     on_missing: str = "error") -> DownstreamData:
    """AVSBench S4 for sound-source segmentation (5 frames; train clips have frame 1 annotated).

    Clips are decoded with all 5 frames and 512 fbank frames (5.12 s, the clips' length); masks
    are resized (nearest) to ``mask_size`` (default ``image_size``). ``frame_index`` in the
    report records which of the five frames were used.
    """
    from ..benchmarks.io.video import sample_frame_indices  # noqa: PLC0415
    from ..benchmarks.real.avsbench import S4_FRAMES, S4MaskSource, read_s4  # noqa: PLC0415

    t = read_s4(root, on_missing=on_missing)  # type: ignore[arg-type]
    shapes = _shapes(input_shapes, n_frames=S4_FRAMES, audio_length=512)
    df = t.clips
    frame_index = sample_frame_indices(S4_FRAMES, shapes["n_frames"], train=False).tolist()
    size = int(mask_size or shapes["image_size"])
    entries = df.assign(video_path=df["frame_dir"], clip_id=np.arange(len(df)))
    return DownstreamData(
        name="avsbench-s4", key=_key({"dataset": "avsbench-s4", "root": str(Path(root).resolve()),
                                      "ids": df["name"].tolist(), "shapes": shapes}),
        clips=_clip_dataset(entries, shapes), split=df["split"].to_numpy(), input_shapes=shapes,
        class_names=t.class_names, labels=torch.tensor(df["target"].to_numpy(dtype=np.int64)),
        masks=S4MaskSource(df["mask_paths"].tolist(), size, frame_index), mask_size=(size, size),
        report={"missing": len(t.missing), "frame_index": frame_index},
    )


def msrvtt_data(root: str, input_shapes: Optional[dict] = None, train_csv: Optional[str] = None,
                test_csv: Optional[str] = None, video_dir: Optional[str] = None, val_fraction: float = 0.1,
                split_seed: int = 0, on_missing: str = "error") -> DownstreamData:
    """MSR-VTT 1k-A clips for retrieval fine-tuning (validation carved from the train list)."""
    from ..benchmarks.real.msrvtt import read_msrvtt  # noqa: PLC0415

    t = read_msrvtt(root, train_csv, test_csv, video_dir, on_missing=on_missing)  # type: ignore[arg-type]
    shapes = _shapes(input_shapes)
    df = t.clips
    entries = df.assign(audio_path=df["video_path"], clip_id=np.arange(len(df)))
    split = carve_validation(df["split"].to_numpy(), None, val_fraction, split_seed)
    return DownstreamData(
        name="msrvtt", key=_key({"dataset": "msrvtt", "root": str(Path(root).resolve()),
                                 "ids": df["video_id"].tolist(), "shapes": shapes}),
        clips=_clip_dataset(entries, shapes), split=split, input_shapes=shapes, class_names=[],
        report={"missing": len(t.missing), "duplicates": t.duplicates, "manifests": t.manifests},
    )


def vggsound_data(root: str, input_shapes: Optional[dict] = None, csv: Optional[str] = None,
                  val_fraction: float = 0.1, split_seed: int = 0, on_missing: str = "skip") -> DownstreamData:
    """VGGSound labels (single-label classification) through the existing readers.

    ``csv`` defaults to ``ROOT/vggsound.csv``. Rows without a clip file are left out and counted
    (``on_missing='skip'``) or raise.
    """
    from ..benchmarks.io.errors import ManifestError  # noqa: PLC0415
    from ..benchmarks.real.readers import find_layout, locate_clips, read_vggsound_csv, vggsound_clip_name  # noqa: PLC0415

    r = Path(root)
    table = read_vggsound_csv(Path(csv) if csv else r / "vggsound.csv")
    located, rep, _ = locate_clips(table, [vggsound_clip_name(table["youtube_id"], table["start_seconds"]).tolist()],
                                   find_layout(r), f"VGGSound table under {r}")
    if on_missing == "error" and rep.n_missing:
        raise ManifestError(rep.summary())
    df = located[located["found"]].reset_index(drop=True)
    classes = sorted(df["label"].unique().tolist())
    labels = torch.tensor(df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64))
    shapes = _shapes(input_shapes)
    entries = df.assign(clip_id=np.arange(len(df)))
    split = carve_validation(df["split"].to_numpy(), labels, val_fraction, split_seed)
    return DownstreamData(
        name="vggsound", key=_key({"dataset": "vggsound", "root": str(r.resolve()), "stems": df["stem"].tolist(),
                                   "shapes": shapes}),
        clips=_clip_dataset(entries, shapes), split=split, input_shapes=shapes, class_names=classes, labels=labels,
        report={"lookup": rep.summary(), "missing": rep.n_missing},
    )


def audioset_data(root: str, input_shapes: Optional[dict] = None, train_csv: Optional[str] = None,
                  test_csv: Optional[str] = None, ontology: Optional[str] = None, val_fraction: float = 0.1,
                  split_seed: int = 0, on_missing: str = "skip") -> DownstreamData:
    """AudioSet segment CSVs as multi-label classification (mAP).

    Defaults: ``balanced_train_segments.csv`` (train), ``eval_segments.csv`` (test) and
    ``class_labels_indices.csv`` in ``root``. Classes are the ontology's labels that occur in
    the training table, in ontology order.
    """
    import pandas as pd  # noqa: PLC0415

    from ..benchmarks.io.errors import ManifestError  # noqa: PLC0415
    from ..benchmarks.real.readers import (  # noqa: PLC0415
        AUDIOSET_NAME_FORMATS,
        audioset_clip_names,
        find_layout,
        locate_clips,
        read_audioset_ontology,
        read_audioset_segments,
    )

    r = Path(root)
    tr = read_audioset_segments(Path(train_csv) if train_csv else r / "balanced_train_segments.csv", split="train")
    te = read_audioset_segments(Path(test_csv) if test_csv else r / "eval_segments.csv", split="test")
    onto = read_audioset_ontology(Path(ontology) if ontology else r / "class_labels_indices.csv")
    table = pd.concat([tr, te], ignore_index=True)
    located, rep, _ = locate_clips(table, [audioset_clip_names(table, f) for f in AUDIOSET_NAME_FORMATS],
                                   find_layout(r), f"AudioSet tables under {r}")
    if on_missing == "error" and rep.n_missing:
        raise ManifestError(rep.summary())
    df = located[located["found"]].reset_index(drop=True)
    used = {m for labs in df.loc[df["split"] == "train", "labels"] for m in labs}
    mids = [m for m in onto["mid"] if m in used]
    names = dict(zip(onto["mid"], onto["display_name"]))
    col = {m: i for i, m in enumerate(mids)}
    multi = torch.zeros(len(df), len(mids), dtype=torch.bool)
    for i, labs in enumerate(df["labels"]):
        for m in labs:
            if m in col:
                multi[i, col[m]] = True
    shapes = _shapes(input_shapes)
    entries = df.assign(clip_id=np.arange(len(df)))
    split = carve_validation(df["split"].to_numpy(), multi, val_fraction, split_seed)
    return DownstreamData(
        name="audioset", key=_key({"dataset": "audioset", "root": str(r.resolve()), "stems": df["stem"].tolist(),
                                   "shapes": shapes}),
        clips=_clip_dataset(entries, shapes), split=split, input_shapes=shapes,
        class_names=[names[m] for m in mids], labels=multi,
        report={"lookup": rep.summary(), "missing": rep.n_missing},
    )


#: ``--data`` name -> builder taking ``root`` first.
DATASETS: dict[str, Callable[..., DownstreamData]] = {
    "ave": ave_data,
    "avsbench-s4": avsbench_s4_data,
    "msrvtt": msrvtt_data,
    "vggsound": vggsound_data,
    "audioset": audioset_data,
}


def build_data(name: str, root: Optional[str] = None, input_shapes: Optional[dict] = None,
               synthetic: Optional[dict] = None, heldout_tasks: int = 0, **kw: Any) -> DownstreamData:
    """Dispatch on ``name``: ``"synthetic"`` or one of :data:`DATASETS` (which need ``root``)."""
    if name == "synthetic":
        return synthetic_data(**{**(synthetic or {}), "heldout_tasks": heldout_tasks},
                              **{k: v for k, v in kw.items() if k in ("val_fraction", "split_seed")})
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {['synthetic', *sorted(DATASETS)]}")
    if not root:
        raise ValueError(f"dataset {name!r} needs a data root (--data-root)")
    import inspect  # noqa: PLC0415

    # Options a dataset has no use for (e.g. a validation fraction where an official split exists) are dropped.
    accepted = inspect.signature(DATASETS[name]).parameters
    return DATASETS[name](root, input_shapes=input_shapes, **{k: v for k, v in kw.items() if k in accepted})
