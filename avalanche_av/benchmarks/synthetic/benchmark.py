"""The built-in synthetic audio-video stream as an Avalanche benchmark (docs/synthetic.md)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import (
    AvalancheDataset,
    DataAttribute,
    TaskAwareSupervisedClassificationDataset,
    TaskLabels,
)
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from torch.utils.data import Dataset, Subset

from ..base import DataReport, SyntheticAVBenchmark
from .config import SoundingObjectsConfig
from .render import SHAPE_NAMES
from .scene import ClassTable, Scenes, build_classes, render_clips, sample_scenes, sounding_masks

__all__ = [
    "SyntheticClipDataset",
    "as_avalanche_dataset",
    "generate_sounding_objects",
    "sounding_objects",
    "write_sounding_objects",
    "SyntheticStreamData",
]

_SPLITS = ("train", "eval")
_CONFIG_FILE = "config.json"
_MANIFEST_FILE = "manifest.json"
#: Each frame is repeated this many times in disk mode, so that any evenly spaced frame
#: sampler (centred or randomly shifted window) lands inside the right audio segment.
DISK_FRAME_REPEATS = 4


class SyntheticClipDataset(Dataset):
    """Tensor-backed clips returning the shared contract tuple.

    ``__getitem__(i)`` returns ``(audio (T_a, F) float16, video (n_frames, 3, H, W) uint8,
    target int64 0-d, clip_id int64 0-d)``. The tensors may be views of one larger store
    (no copy per task).
    """

    def __init__(self, audio: torch.Tensor, video: torch.Tensor, targets: torch.Tensor, clip_ids: torch.Tensor) -> None:
        n = audio.shape[0]
        if audio.dim() != 3:
            raise ValueError(f"audio must be (N, T_a, F), got {tuple(audio.shape)}")
        if video.dim() != 5 or video.shape[2] != 3 or video.dtype != torch.uint8:
            raise ValueError(f"video must be uint8 (N, n_frames, 3, H, W), got {video.dtype} {tuple(video.shape)}")
        if not (video.shape[0] == targets.shape[0] == clip_ids.shape[0] == n):
            raise ValueError(
                f"audio, video, targets and clip_ids disagree on N: {n}, {video.shape[0]}, "
                f"{targets.shape[0]}, {clip_ids.shape[0]}"
            )
        self.audio, self.video = audio, video
        self.targets = targets.to(torch.int64)
        self.clip_ids = clip_ids.to(torch.int64)

    def __len__(self) -> int:
        return int(self.audio.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.audio[index], self.video[index], self.targets[index], self.clip_ids[index]


def as_avalanche_dataset(dataset: Dataset, targets: Sequence[int], task_label: int) -> AvalancheDataset:
    """Wrap a contract-tuple dataset as an Avalanche dataset with ``targets`` and task labels.

    The task label is appended to every sample, so a collated minibatch is
    ``[audio, video, target, clip_id, task]``.
    """
    targets = [int(t) for t in targets]
    if len(targets) != len(dataset):  # type: ignore[arg-type]
        raise ValueError(f"targets has {len(targets)} entries for a dataset of {len(dataset)}")  # type: ignore[arg-type]
    return TaskAwareSupervisedClassificationDataset(
        [dataset],
        data_attributes=[
            DataAttribute(targets, "targets"),
            TaskLabels(ConstantSequence(int(task_label), len(targets))),
        ],
    )


@dataclasses.dataclass
class SyntheticStreamData:
    """Everything generated for a stream, before it is wrapped for Avalanche.

    Attributes:
        config: the generation knobs.
        classes: class definitions.
        scenes: per-clip scene parameters (``N = config.n_clips``, indexed by clip id).
        audio: ``(N, T_a, F)`` float16 fbank, or ``None`` when only written to disk.
        video: ``(N, n_frames, 3, H, W)`` uint8, or ``None`` when only written to disk.
    """

    config: SoundingObjectsConfig
    classes: ClassTable
    scenes: Scenes
    audio: torch.Tensor | None
    video: torch.Tensor | None


def _resolve_config(config: SoundingObjectsConfig | None, overrides: dict[str, Any]) -> SoundingObjectsConfig:
    cfg = config if config is not None else SoundingObjectsConfig()
    if not isinstance(cfg, SoundingObjectsConfig):
        raise ValueError(f"config must be a SoundingObjectsConfig, got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(SoundingObjectsConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown sounding_objects option(s) {unknown}; allowed: {sorted(known)}")
    return cfg.replace(**overrides) if overrides else cfg


def generate_sounding_objects(
    config: SoundingObjectsConfig | None = None,
    chunk_size: int = 32,
    render: bool = True,
    **overrides: Any,
) -> SyntheticStreamData:
    """Generate the whole stream in memory.

    Args:
        config: knobs; ``overrides`` (any :class:`SoundingObjectsConfig` field) replace its values.
        chunk_size: clips rendered together (memory ~ chunk_size x a few MB at 64²).
        render: also render video and fbank (``False``: classes and scenes only).
    """
    cfg = _resolve_config(config, overrides)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    classes = build_classes(cfg)
    scenes = sample_scenes(cfg, classes, torch.arange(cfg.n_clips, dtype=torch.int64))
    audio = video = None
    if render:
        n, hw = cfg.n_clips, cfg.image_size
        audio = torch.empty(n, cfg.target_length, cfg.num_mel_bins, dtype=torch.float16)
        video = torch.empty(n, cfg.n_frames, 3, hw, hw, dtype=torch.uint8)
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            v, a, _ = render_clips(cfg, classes, scenes.select(slice(lo, hi)))
            video[lo:hi], audio[lo:hi] = v, a
    return SyntheticStreamData(cfg, classes, scenes, audio, video)


# --------------------------------------------------------------------------- tables
def _class_table(cfg: SoundingObjectsConfig, classes: ClassTable) -> pd.DataFrame:
    names = classes.names
    n_harm = (classes.harmonic_amps > 0).sum(dim=1)
    return pd.DataFrame(
        {
            "class": range(cfg.n_classes),
            "task": classes.task.tolist(),
            "name": names,
            "identity": classes.identity.tolist(),
            "shape": [SHAPE_NAMES[int(i) // classes.n_colours] for i in classes.identity],
            "colour": [classes.colour_names[int(i) % classes.n_colours] for i in classes.identity],
            "f0": classes.f0.tolist(),
            "n_harmonics": n_harm.tolist(),
            "am_rate": classes.am_rate.tolist(),
            "am_depth": classes.am_depth.tolist(),
            "partner": classes.partner.tolist(),
        }
    )


def _clip_table(cfg: SoundingObjectsConfig, classes: ClassTable, scenes: Scenes) -> pd.DataFrame:
    k, bgrid = cfg.object_cells, cfg.block_grid
    pos = scenes.block_pos[:, 0]
    names = classes.names
    ident_name = classes.identity_name
    active = scenes.bright[:, 0]
    recur = scenes.recur_class.tolist()
    return pd.DataFrame(
        {
            "clip_id": scenes.clip_id.tolist(),
            "task": scenes.task.tolist(),
            "split": [_SPLITS[s] for s in scenes.split.tolist()],
            "class": scenes.target.tolist(),
            "class_name": [names[c] for c in scenes.target.tolist()],
            "index_in_class": scenes.index_in_class.tolist(),
            "source_identity": scenes.identity[:, 0].tolist(),
            "source_name": [ident_name(i) for i in scenes.identity[:, 0].tolist()],
            "source_row": ((pos // bgrid) * k).tolist(),
            "source_col": ((pos % bgrid) * k).tolist(),
            "source_size": scenes.size_norm[:, 0].tolist(),
            "pitch_shift": scenes.pitch_shift.tolist(),
            "gain_db": scenes.gain_db.tolist(),
            "active_frames": ["".join("1" if b else "0" for b in row) for row in active.tolist()],
            "n_active": active.sum(dim=1).tolist(),
            "recur_class": recur,
            "recur_name": [names[c] if c >= 0 else "" for c in recur],
            "distractors": ["|".join(ident_name(i) for i in row) for row in scenes.identity[:, 1:].tolist()],
        }
    )


# --------------------------------------------------------------------------- disk mode
def _config_json(cfg: SoundingObjectsConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def write_sounding_objects(
    root: str | os.PathLike,
    config: SoundingObjectsConfig | None = None,
    overwrite: bool = False,
    chunk_size: int = 32,
    crf: int = 18,
    **overrides: Any,
) -> Path:
    """Write the stream as real mp4 files (H.264 + AAC) plus a CAV-MAE JSON manifest.

    Layout under ``root``::

        config.json            the generation knobs (checked on reuse)
        manifest.json          {"data": [{"video_id", "wav", "video_path", "labels",
                                 "clip_id", "task", "target", "split"}, ...]}
        labels.csv             index, mid, display_name (class names)
        clip_table.csv         per-clip ground truth (see ``sounding_objects``)
        clips/task{t}/{video_id}.mp4

    Paths in the manifest are relative to ``root``. ``wav`` is empty: audio comes from the
    mp4. Each frame is held for ``DISK_FRAME_REPEATS`` video frames, so the video lasts as
    long as the audio and any evenly spaced frame sampler picks one frame per segment.

    If ``root`` already holds a stream written with the same config, nothing is rewritten;
    with a different config, ``overwrite=True`` is required.

    Returns:
        The manifest path.
    """
    from ..io.manifest import write_label_csv, write_manifest  # noqa: PLC0415
    from ..io.writer import write_av_clip  # noqa: PLC0415

    cfg = _resolve_config(config, overrides)
    if cfg.image_size % 2:
        raise ValueError(f"disk mode needs an even image_size (yuv420p), got {cfg.image_size}")
    root = Path(root)
    manifest_path = root / _MANIFEST_FILE
    cfg_path = root / _CONFIG_FILE
    want = _config_json(cfg)
    if cfg_path.is_file() and manifest_path.is_file():
        with open(cfg_path, encoding="utf-8") as fh:
            have = json.load(fh)
        if have == want:
            return manifest_path
        if not overwrite:
            raise ValueError(
                f"{root} already holds a synthetic stream with a different config; "
                f"pass overwrite=True or choose another root"
            )
    root.mkdir(parents=True, exist_ok=True)
    # The config is written last, so an interrupted write is never mistaken for a finished one.
    if cfg_path.exists():
        cfg_path.unlink()

    data = generate_sounding_objects(cfg, render=False)
    classes, scenes = data.classes, data.scenes
    names = classes.names
    duration = cfg.n_samples / cfg.sample_rate
    fps = DISK_FRAME_REPEATS * cfg.n_frames / duration
    records = []
    for lo in range(0, cfg.n_clips, chunk_size):
        part = scenes.select(slice(lo, min(lo + chunk_size, cfg.n_clips)))
        video, _, wave = render_clips(cfg, classes, part, with_waveform=True)
        assert wave is not None
        frames = video.permute(0, 1, 3, 4, 2).repeat_interleave(DISK_FRAME_REPEATS, dim=1)
        for i in range(len(part)):
            cid, task, tgt = int(part.clip_id[i]), int(part.task[i]), int(part.target[i])
            vid = f"so{cid:06d}"
            rel = Path("clips") / f"task{task}" / f"{vid}.mp4"
            write_av_clip(root / rel, frames[i], fps=fps, audio=wave[i], sample_rate=cfg.sample_rate, crf=crf)
            records.append(
                {
                    "video_id": vid,
                    "wav": "",
                    "video_path": rel.as_posix(),
                    "labels": names[tgt],
                    "clip_id": cid,
                    "task": task,
                    "target": tgt,
                    "split": _SPLITS[int(part.split[i])],
                }
            )
    # Written with root-relative paths; read_manifest resolves them against the manifest's folder.
    write_manifest(manifest_path, records)
    write_label_csv(root / "labels.csv", names)
    _clip_table(cfg, classes, scenes).to_csv(root / "clip_table.csv", index=False)
    with open(cfg_path, "w", encoding="utf-8") as fh:
        json.dump(want, fh, indent=1)
    return manifest_path


# --------------------------------------------------------------------------- public entry point
def sounding_objects(
    config: SoundingObjectsConfig | None = None,
    *,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
    chunk_size: int = 32,
    validation_clips_per_class: int = 0,
    **overrides: Any,
) -> SyntheticAVBenchmark:
    """The built-in synthetic continual audio-video stream ("sounding objects").

    Each clip shows ``n_objects`` shapes on a noisy background; exactly one is the sound
    source, bright in the frames whose audio segment sounds. Distractors brighten at
    random; from task 1 on, an object that was a source in an earlier task often sits next
    to the new source as a silent distractor (correlation overwriting, paper Fig. 3). Audio
    is a class timbre (fundamental, harmonics, modulation) pitch-shifted by the source's
    size, gated by the on/off pattern, plus noise, through the shared fbank front end.

    Args:
        config: generation knobs (:class:`SoundingObjectsConfig`); keyword ``overrides``
            replace single fields, e.g. ``sounding_objects(seed=3, n_tasks=2)``.
            Base-config shapes: ``image_size=224, object_cells=2 or 3,
            target_length=1024, num_mel_bins=128``.
        root: disk mode. Write mp4 + manifest under ``root`` (see
            :func:`write_sounding_objects`, reused when already written with the same
            config) and load every experience back through
            :class:`~avalanche_av.benchmarks.io.dataset.AVClipDataset` (real decoders,
            evaluation-mode decoding, float16 fbank). ``None``: everything in memory, nothing
            written.
        overwrite: disk mode, replace a stream written with another config.
        chunk_size: clips rendered together.
        validation_clips_per_class: carve this many clips per class out of each task's
            **training** clips into a validation set (``validation_sets`` /
            ``validation_stream``); they are then not trained on. The retrieval sets are
            untouched, and the generated clips are the same as without the split. Use it to
            choose settings without looking at the retrieval clips.

    Returns:
        A :class:`~avalanche_av.benchmarks.base.SyntheticAVBenchmark`: ``scenario`` is the
        Avalanche benchmark with task labels, and

        - ``train_stream``: one experience per task (its training clips);
        - ``test_stream``: one experience per task (its retrieval set);

        Samples are ``(audio (T_a, F) float16, video (n_frames, 3, H, W) uint8, target int64,
        clip_id int64)`` plus the task label; datasets expose ``targets`` and
        ``targets_task_labels``. Its other fields:

        - ``retrieval_sets``: list of the per-task evaluation datasets;
        - ``sounding_masks``: ``(N_clips, n_frames, gh, gw)`` bool, indexed by clip id, the
          patch cells of the source in every frame (``& active_frames[..., None, None]`` for
          the sounding frames only);
        - ``active_frames``: ``(N_clips, n_frames)`` bool, frames where the source sounds;
        - ``clip_table`` / ``class_table``: pandas DataFrames of per-clip ground truth
          (task, class, split, source identity and cell, size, pitch shift, on/off pattern,
          recurring earlier class, distractors) and of class definitions;
        - ``scenes``: the raw per-clip parameters (:class:`Scenes`);
        - ``config``, ``task_names``, ``class_names``, ``data_report`` (all zero for
          rendered clips); in disk mode ``root``, ``manifest_path`` and ``decoders``.

    Memory (in-memory mode): per clip ``n_frames*3*H*W`` bytes of video + ``2*T_a*F`` bytes
    of fbank + ``n_frames*gh*gw`` mask bytes + 16 bytes of ids; the default (64², 4 frames,
    128x64 fbank) is 49,152 + 16,384 + 64 + 16 = 65,616 bytes (~64 KiB), ~151 MB for the
    2,304 clips of the default stream.
    """
    cfg = _resolve_config(config, overrides)
    if cfg.eval_clips_per_class < 1:
        raise ValueError("sounding_objects needs eval_clips_per_class >= 1 (each task's retrieval set)")
    if root is None:
        data = generate_sounding_objects(cfg, chunk_size=chunk_size)
        assert data.audio is not None and data.video is not None
        store = SyntheticClipDataset(data.audio, data.video, data.scenes.target, data.scenes.clip_id)
        make = lambda lo, hi: SyntheticClipDataset(  # noqa: E731
            store.audio[lo:hi], store.video[lo:hi], store.targets[lo:hi], store.clip_ids[lo:hi]
        )
        manifest_path = None
    else:
        from ..io.dataset import AVClipDataset  # noqa: PLC0415
        from ..io.manifest import load_manifest_entries  # noqa: PLC0415

        manifest_path = write_sounding_objects(root, cfg, overwrite=overwrite, chunk_size=chunk_size)
        data = generate_sounding_objects(cfg, render=False)
        entries = load_manifest_entries(manifest_path).sort_values("clip_id").reset_index(drop=True)
        if len(entries) != cfg.n_clips or entries["clip_id"].tolist() != list(range(cfg.n_clips)):
            raise ValueError(f"{manifest_path}: expected clip ids 0..{cfg.n_clips - 1}, the manifest does not match")

        def make(lo: int, hi: int) -> Dataset:
            return AVClipDataset(
                entries.iloc[lo:hi].reset_index(drop=True),
                n_frames=cfg.n_frames,
                image_size=cfg.image_size,
                target_length=cfg.target_length,
                num_mel_bins=cfg.num_mel_bins,
                train=False,
                audio_dtype=torch.float16,
            )

    scenes = data.scenes
    cpt, ntr = cfg.clips_per_task, cfg.classes_per_task * cfg.train_clips_per_class
    targets = scenes.target.tolist()
    train_sets, eval_sets, decoders = [], [], []
    v = validation_clips_per_class
    if not isinstance(v, int) or v < 0 or v >= cfg.train_clips_per_class:
        raise ValueError(
            f"validation_clips_per_class must be an int in [0, train_clips_per_class={cfg.train_clips_per_class}), got {v!r}"
        )
    val_sets = []
    for t in range(cfg.n_tasks):
        lo, mid, hi = t * cpt, t * cpt + ntr, (t + 1) * cpt
        train_ds, eval_ds = make(lo, mid), make(mid, hi)
        if manifest_path is not None:
            decoders += [train_ds, eval_ds]
        if v:
            # The last v training clips of every class (in clip order) become validation clips.
            block = torch.tensor(targets[lo:mid])
            rank = torch.zeros_like(block)
            for c in block.unique().tolist():
                where = torch.nonzero(block == c).squeeze(1)
                rank[where] = torch.arange(where.numel() - 1, -1, -1)
            val_rows = torch.nonzero(rank < v).squeeze(1).tolist()
            tr_rows = torch.nonzero(rank >= v).squeeze(1).tolist()
            val_sets.append(as_avalanche_dataset(Subset(train_ds, val_rows), [targets[lo + i] for i in val_rows], t))
            train_sets.append(as_avalanche_dataset(Subset(train_ds, tr_rows), [targets[lo + i] for i in tr_rows], t))
        else:
            train_sets.append(as_avalanche_dataset(train_ds, targets[lo:mid], t))
        eval_sets.append(as_avalanche_dataset(eval_ds, targets[mid:hi], t))
    val_scenario = (
        with_task_labels(benchmark_from_datasets(train=val_sets, test=val_sets)) if val_sets else None
    )
    names = data.classes.names
    return SyntheticAVBenchmark(
        scenario=with_task_labels(benchmark_from_datasets(train=train_sets, test=eval_sets)),
        config=cfg,
        task_names=[
            f"task{t}: " + ", ".join(names[t * cfg.classes_per_task : (t + 1) * cfg.classes_per_task])
            for t in range(cfg.n_tasks)
        ],
        class_names=list(names),
        retrieval_sets=eval_sets,
        clip_table=_clip_table(cfg, data.classes, scenes),
        class_table=_class_table(cfg, data.classes),
        # Rendered clips cannot be missing, duplicated or leaked: the report stays at zero
        # unless a disk-mode file fails to decode (counted at load time).
        data_report=DataReport(),
        sounding_masks=sounding_masks(cfg, scenes),
        active_frames=scenes.bright[:, 0].clone(),
        decoders=decoders,
        scenes=scenes,
        root=Path(root) if root is not None else None,
        manifest_path=manifest_path,
        validation_sets=val_sets,
        validation_scenario=val_scenario,
    )
