"""The typed object every benchmark builder returns: :class:`AVBenchmark` and its data report.

A builder (:func:`~avalanche_av.benchmarks.sounding_objects`,
:func:`~avalanche_av.benchmarks.continual_vs`, :func:`~avalanche_av.benchmarks.continual_as`)
returns one dataclass holding the Avalanche benchmark (``scenario``, with its train and test
streams) plus what evaluation and reporting need next to it: the retrieval sets, the clip and
class tables, the task names, the build config, the ground-truth sounding masks where they
exist, and a :class:`DataReport` of what happened to the listed clips. ``bench.train_stream``
and ``bench.test_stream`` are the scenario's streams, so code written for a plain Avalanche
benchmark keeps working.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd
import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario

if TYPE_CHECKING:  # pragma: no cover - types only
    from .io.dataset import AVClipDataset
    from .real.readers import ClipLookupReport
    from .real.tasks import TaskDefinition
    from .synthetic.scene import Scenes

__all__ = ["DataReport", "AVBenchmark", "SyntheticAVBenchmark", "RealAVBenchmark"]


@dataclass
class DataReport:
    """What happened to the clips a benchmark's tables list: counts, JSON-ready.

    A clip is counted once, under the first thing that went wrong with it.

    Attributes:
        missing: listed clips whose files are not on disk (left out).
        bad: clips found unreadable, by category (``unreadable``, ``no_audio``,
            ``no_video``, ``too_short``, ``other``): before training by the ``prepare``
            report or a header scan, and during the run when a clip fails to decode.
        replaced: chosen clips that took the place of a missing or bad one: at build time
            the next candidate of the class within the cap, at load time the next readable
            clip of the same set (see :class:`~avalanche_av.benchmarks.io.dataset.AVClipDataset`).
        duplicated: table rows that repeat a clip already listed (only the first is used).
        leaked_dropped: clips listed both for training and for retrieval, dropped from
            training so that the retrieval set stays unseen.
        unknown_labels: rows whose label is not a class of the dataset (never a task class).
        load_time_counted: ``False`` when clips were decoded in DataLoader worker processes,
            whose counters do not reach the main process: load-time ``bad``/``replaced``
            then hold the build-time counts only.
    """

    missing: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    replaced: int = 0
    duplicated: int = 0
    leaked_dropped: int = 0
    unknown_labels: int = 0
    load_time_counted: bool = True

    @property
    def n_bad(self) -> int:
        """Bad clips over all categories."""
        return int(sum(self.bad.values()))

    def add_bad(self, category: str, n: int = 1) -> None:
        if n:
            self.bad[category] = self.bad.get(category, 0) + int(n)

    def merged(self, other: "DataReport") -> "DataReport":
        """The sum of two reports (e.g. build-time and load-time counts)."""
        out = dataclasses.replace(self, bad=dict(self.bad))
        for k, v in other.bad.items():
            out.add_bad(k, v)
        for name in ("missing", "replaced", "duplicated", "leaked_dropped", "unknown_labels"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.load_time_counted = self.load_time_counted and other.load_time_counted
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain ints and dicts, as written to ``results.json`` under ``data``."""
        return {
            "missing": int(self.missing),
            "bad": {k: int(v) for k, v in sorted(self.bad.items())},
            "bad_total": self.n_bad,
            "replaced": int(self.replaced),
            "duplicated": int(self.duplicated),
            "leaked_dropped": int(self.leaked_dropped),
            "unknown_labels": int(self.unknown_labels),
            "load_time_counted": bool(self.load_time_counted),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataReport":
        return cls(
            missing=int(d.get("missing", 0)), bad={str(k): int(v) for k, v in d.get("bad", {}).items()},
            replaced=int(d.get("replaced", 0)), duplicated=int(d.get("duplicated", 0)),
            leaked_dropped=int(d.get("leaked_dropped", 0)), unknown_labels=int(d.get("unknown_labels", 0)),
            load_time_counted=bool(d.get("load_time_counted", True)),
        )

    def summary(self) -> str:
        """One line, e.g. ``missing 3, bad 2 (unreadable 2), replaced 4, duplicated 0, ...``."""
        bad = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items()))
        return (f"missing {self.missing}, bad {self.n_bad}{f' ({bad})' if bad else ''}, replaced {self.replaced}, "
                f"duplicated {self.duplicated}, leaked and dropped {self.leaked_dropped}, "
                f"unknown labels {self.unknown_labels}")


@dataclass(eq=False, repr=False, kw_only=True)
class AVBenchmark:
    """A continual audio-video benchmark: the Avalanche scenario plus its tables and reports.

    Attributes:
        scenario: the Avalanche benchmark, with task labels: ``train_stream`` (one experience
            per task, its training clips) and ``test_stream`` (one per task, its retrieval
            set). Samples are ``(audio (T_a, F), video (n_frames, 3, H, W) uint8, target
            int64, clip_id int64)`` plus the task label.
        config: how the benchmark was built (a
            :class:`~avalanche_av.benchmarks.synthetic.config.SoundingObjectsConfig` or
            :class:`~avalanche_av.benchmarks.real.continual.RealBenchmarkConfig`); its
            ``n_frames``, ``image_size``, ``target_length`` and ``num_mel_bins`` are the
            sample shapes.
        task_names: one name per task, in stream order.
        class_names: target ``i`` is ``class_names[i]``.
        retrieval_sets: the per-task retrieval datasets (``retrieval_sets[t] is
            test_stream[t].dataset``).
        clip_table: one row per used clip (``clip_id``, ``task``, ``target``, ...).
        class_table: one row per class.
        data_report: what happened to the listed clips (:class:`DataReport`).
        sounding_masks: ground truth where it exists (the synthetic stream): ``(N_clips,
            n_frames, gh, gw)`` bool indexed by clip id, the patch cells of the sound source
            in every frame; ``None`` on real data.
        active_frames: ``(N_clips, n_frames)`` bool, the frames where the source sounds;
            ``None`` on real data.
        decoders: the datasets that decode clips from files (empty for in-memory data);
            :meth:`load_time_report` reads their counters.
        validation_sets: per-task validation datasets carved from the **training** clips (empty
            unless the builder was asked for them). Settings are chosen on these, never on the
            retrieval sets; :attr:`validation_stream` wraps them as Avalanche experiences.
        validation_scenario: the Avalanche benchmark whose ``test_stream`` holds them.
    """

    scenario: CLScenario
    config: Any
    task_names: list[str]
    class_names: list[str]
    retrieval_sets: list[Any]
    clip_table: pd.DataFrame
    class_table: pd.DataFrame
    data_report: DataReport = field(default_factory=DataReport)
    sounding_masks: Optional[torch.Tensor] = None
    active_frames: Optional[torch.Tensor] = None
    decoders: list["AVClipDataset"] = field(default_factory=list)
    validation_sets: list[Any] = field(default_factory=list)
    validation_scenario: Optional[CLScenario] = None

    @property
    def validation_stream(self):
        """One experience per task holding its validation clips (carved from training clips).

        Raises:
            ValueError: the benchmark was built without a validation split.
        """
        if self.validation_scenario is None:
            raise ValueError("this benchmark has no validation split; build it with validation_clips_per_class > 0")
        return self.validation_scenario.test_stream

    @property
    def train_stream(self):
        """The scenario's training stream: one experience per task."""
        return self.scenario.train_stream

    @property
    def test_stream(self):
        """The scenario's test stream: one experience per task (its retrieval set)."""
        return self.scenario.test_stream

    @property
    def n_tasks(self) -> int:
        return len(self.scenario.train_stream)

    def load_time_report(self) -> DataReport:
        """Clips found bad while decoding **in this process**, each replaced by the next readable one.

        Counts come from the decoders' ``bad_clips`` (one entry per distinct clip, whatever
        the number of epochs that met it). DataLoader workers keep their own counters, so with
        workers the counts of the clips they decoded are not seen here.
        """
        from .prepare import categorise_reason  # noqa: PLC0415 - prepare pulls in the decoders

        rep = DataReport()
        for ds in self.decoders:
            for message in ds.bad_clips.values():
                # ``message`` is "path: reason"; the category is read from the reason.
                rep.add_bad(categorise_reason(message.split(": ", 1)[-1]))
                rep.replaced += 1
        return rep

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.n_tasks} tasks, {len(self.class_names)} classes, "
                f"{len(self.clip_table)} clips; data: {self.data_report.summary()})")


@dataclass(eq=False, repr=False, kw_only=True)
class SyntheticAVBenchmark(AVBenchmark):
    """:func:`~avalanche_av.benchmarks.sounding_objects`'s benchmark.

    Attributes (besides :class:`AVBenchmark`'s):
        scenes: the raw per-clip scene parameters, indexed by clip id.
        root, manifest_path: disk mode only, where the mp4 files and their manifest are.
    """

    scenes: "Scenes"
    root: Optional[Path] = None
    manifest_path: Optional[Path] = None


@dataclass(eq=False, repr=False, kw_only=True)
class RealAVBenchmark(AVBenchmark):
    """:func:`~avalanche_av.benchmarks.continual_vs` / ``continual_as``'s benchmark.

    Attributes (besides :class:`AVBenchmark`'s):
        definition: the task definition applied.
        root: the dataset root.
        task_table: per-task statistics (see :func:`~avalanche_av.benchmarks.real.benchmark_stats`).
        pretrain_pool: training-split clips of no task, as an Avalanche dataset (task label 0,
            targets -1); ``None`` if empty. pretrain_table: its rows.
        missing_report: which listed files were not found (counts per split, examples).
        bad_clips: the bad clips found before training: ``video_id, video_path, split,
            target, reason, found_by``.
    """

    definition: "TaskDefinition"
    root: Path
    task_table: pd.DataFrame
    pretrain_pool: Optional[Any]
    pretrain_table: pd.DataFrame
    missing_report: "ClipLookupReport"
    bad_clips: pd.DataFrame
