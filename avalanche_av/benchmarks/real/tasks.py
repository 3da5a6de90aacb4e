"""The shipped task definitions of Continual-VS and Continual-AS (package resources).

Both JSON files live in ``avalanche_av/resources/`` and are read with
:mod:`importlib.resources`, never from the source tree's ``shared/`` folder.

- ``continual_vs_tasks.json``: ``task_order``, ``shuffled_task_order`` (paper Table 7),
  ``classes_per_task`` (20), ``max_train_clips_per_class`` (400) and ``groups``: the
  VGGSound class names of each task's category group. A task keeps the first
  ``classes_per_task`` names of its group in alphabetical order.
- ``continual_as_tasks.json``: ``task_order``, ``shuffled_task_order``, ``classes``
  (AudioSet display names per task) and ``parent_categories`` (ontology category names
  per task, used only to decide which task a clip touches).
- ``vggsound_stat.csv``: ``name,count,group`` without header, VGGSound's per-class clip
  counts and the dataset's own category column.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT",
    "TaskDefinition",
    "load_task_definition",
    "vggsound_stat",
    "BenchmarkName",
    "UnknownLabels",
    "find_unknown_labels",
]

BenchmarkName = Literal["continual_vs", "continual_as"]
_FILES = {"continual_vs": "continual_vs_tasks.json", "continual_as": "continual_as_tasks.json"}


def _resource_text(name: str) -> str:
    return resources.files("avalanche_av").joinpath("resources", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class TaskDefinition:
    """One benchmark's tasks after choosing the order and the class counts.

    Attributes:
        name: ``"continual_vs"`` or ``"continual_as"``.
        task_names: task keys in stream order (e.g. ``["sports", "music", ...]``).
        classes: per task (stream order) the class names the task uses; a class's global
            index is its position in :attr:`class_names`.
        all_classes: per task every class name of the definition (before
            ``classes_per_task`` was applied).
        parent_categories: per task the category names that also mark a clip as touching
            the task (Continual-AS only; empty lists for Continual-VS).
        max_train_clips_per_class: training cap per class (``None``: no cap).
        classes_per_task: the class count applied per task (``None``: all of each task).
        shuffled: whether the shuffled order of paper Table 7 was chosen.
    """

    name: str
    task_names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    all_classes: tuple[tuple[str, ...], ...]
    parent_categories: tuple[tuple[str, ...], ...]
    max_train_clips_per_class: Optional[int]
    classes_per_task: Optional[int] = None
    shuffled: bool = False
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def class_names(self) -> list[str]:
        """Every used class, task by task in stream order: the benchmark's target space."""
        return [c for cs in self.classes for c in cs]

    def class_to_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.class_names)}

    def class_to_task(self) -> dict[str, int]:
        return {c: t for t, cs in enumerate(self.classes) for c in cs}


def _check_int(name: str, v: Optional[int], allow_none: bool) -> Optional[int]:
    if v is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be an integer >= 1, got None")
    if isinstance(v, bool) or int(v) != v or int(v) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


#: Sentinel meaning "the value given in the task-definition file".
DEFAULT = "default"


def load_task_definition(
    name: BenchmarkName,
    shuffled: bool = False,
    task_order: Optional[Sequence[str]] = None,
    n_tasks: Optional[int] = None,
    classes_per_task: Union[int, None, str] = DEFAULT,
    max_train_clips_per_class: Union[int, None, str] = DEFAULT,
) -> TaskDefinition:
    """Load a shipped task definition and apply order and size overrides.

    Args:
        name: ``"continual_vs"`` or ``"continual_as"``.
        shuffled: use ``shuffled_task_order`` (paper Table 7) instead of ``task_order``.
        task_order: an explicit order of task keys (overrides ``shuffled``); may name a
            subset of the tasks.
        n_tasks: keep only the first ``n_tasks`` tasks of the order.
        classes_per_task: classes kept per task. Continual-VS: the first ``k`` of the group
            in alphabetical order (default 20 from the file). Continual-AS: the first ``k`` in
            the file's order (default ``None``: all).
        max_train_clips_per_class: training cap per class (default 400 for Continual-VS,
            ``None`` = no cap for Continual-AS).

    Raises:
        ValueError: unknown benchmark or task key, or a non-positive count.
    """
    if name not in _FILES:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {sorted(_FILES)}")
    raw = json.loads(_resource_text(_FILES[name]))
    if task_order is not None:
        order = [str(t) for t in task_order]
    else:
        order = list(raw["shuffled_task_order"] if shuffled else raw["task_order"])
    known = list(raw["groups"] if name == "continual_vs" else raw["classes"])
    bad = [t for t in order if t not in known]
    if bad:
        raise ValueError(f"unknown task(s) {bad} for {name}; allowed: {known}")
    if len(set(order)) != len(order):
        raise ValueError(f"task_order repeats a task: {order}")
    if n_tasks is not None:
        n_tasks = _check_int("n_tasks", n_tasks, False)
        if n_tasks > len(order):
            raise ValueError(f"n_tasks={n_tasks} but {name} has only {len(order)} tasks in this order")
        order = order[:n_tasks]

    if name == "continual_vs":
        cpt = raw["classes_per_task"] if classes_per_task == DEFAULT else classes_per_task
        cap = raw["max_train_clips_per_class"] if max_train_clips_per_class == DEFAULT else max_train_clips_per_class
        all_classes = [tuple(sorted(raw["groups"][t])) for t in order]
        parents: list[tuple[str, ...]] = [() for _ in order]
    else:
        cpt = None if classes_per_task == DEFAULT else classes_per_task
        cap = None if max_train_clips_per_class == DEFAULT else max_train_clips_per_class
        all_classes = [tuple(raw["classes"][t]) for t in order]
        parents = [tuple(raw.get("parent_categories", {}).get(t, ())) for t in order]
    for nm, v in (("classes_per_task", cpt), ("max_train_clips_per_class", cap)):
        if isinstance(v, str):
            raise ValueError(f"{nm} must be an integer >= 1, None or {DEFAULT!r}, got {v!r}")
    cpt = _check_int("classes_per_task", cpt, allow_none=True)
    cap = _check_int("max_train_clips_per_class", cap, allow_none=True)
    classes = [cs[:cpt] if cpt is not None else cs for cs in all_classes]
    return TaskDefinition(
        name=name,
        task_names=tuple(order),
        classes=tuple(tuple(c) for c in classes),
        all_classes=tuple(all_classes),
        parent_categories=tuple(parents),
        max_train_clips_per_class=cap,
        classes_per_task=cpt,
        shuffled=bool(shuffled and task_order is None),
        raw=raw,
    )


def vggsound_stat() -> pd.DataFrame:
    """VGGSound's class table shipped with the package: columns ``name, count, group``."""
    from io import StringIO  # noqa: PLC0415

    return pd.read_csv(
        StringIO(_resource_text("vggsound_stat.csv")), header=None, names=["name", "count", "group"],
        dtype={"name": str, "group": str}, keep_default_na=False,
    )


@dataclass(frozen=True)
class UnknownLabels:
    """Rows whose label(s) are not classes of the dataset.

    Attributes:
        mask: ``(N,)`` bool, rows with at least one unknown label.
        labels: ``{label: rows}`` of every unknown label, most frequent first (ties by name).
    """

    mask: np.ndarray
    labels: dict[str, int]

    @property
    def n_rows(self) -> int:
        return int(self.mask.sum())


def find_unknown_labels(labels: Iterable[Union[str, Sequence[str]]], known: Iterable[str]) -> UnknownLabels:
    """Which rows carry a label that ``known`` does not list.

    A VGGSound label that is not one of the dataset's classes (a typo, another dataset's
    label) would otherwise count as "no task class" and land in the pre-training pool,
    where a misspelt task class would leak task material; the builders leave such rows out
    and report them.

    Args:
        labels: one entry per row: a label, or a sequence of labels (AudioSet's label ids).
        known: the valid labels (VGGSound: :func:`vggsound_stat`'s ``name``; AudioSet: the
            ontology's ids and display names).

    Returns:
        :class:`UnknownLabels`, with ``mask`` aligned with ``labels``.
    """
    known_set = set(known)
    rows = [(lab,) if isinstance(lab, str) else tuple(lab) for lab in labels]
    flat = pd.Series([x for r in rows for x in r], dtype=object)
    pos = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    unknown = ~flat.isin(known_set).to_numpy() if len(flat) else np.zeros(0, bool)
    mask = np.zeros(len(rows), bool)
    mask[pos[unknown]] = True
    counts = flat[unknown].value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    return UnknownLabels(mask=mask, labels={str(k): int(v) for k, v in ordered})
