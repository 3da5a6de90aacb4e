"""Avalanche metrics for zero-shot audio-video retrieval and the continual metrics A / F.

:class:`RetrievalMetrics` is a :class:`~avalanche.evaluation.PluginMetric`: put it in an
:class:`~avalanche.training.plugins.EvaluationPlugin` (or use :func:`av_evaluator`).

Protocol (paper Sec. 4.1; docs/metrics.md)
-------------------------------------------
* During every eval iteration it stores the unmasked unimodal embeddings
  ``strategy.mb_output.emb_a_unmasked`` / ``.emb_v_unmasked`` ``(B, D)``, the class targets
  ``strategy.mb_y`` ``(B,)``, the clip ids ``strategy.mb_clip_id`` ``(B,)`` and the index of the
  evaluated experience ``strategy.experience.current_experience`` (the *task*), on CPU as float32.
* When the ``eval`` call ends (``after_eval``), per stream: the gallery is the union of all clips
  evaluated in that call (deduplicated by clip id), and task ``i``'s score uses only task ``i``'s
  clips as queries against that whole gallery. Audio->video (``a2v``) queries audio embeddings
  against the video gallery, ``v2a`` the reverse.

Accuracy matrix rows
--------------------
The metric counts completed training experiences itself (``after_training_exp``) and knows
whether a training experience is in progress (between ``before_training_exp`` and
``after_training_exp``):

* an eval **outside** a training experience after ``n >= 1`` completed experiences writes row
  ``n - 1`` ("after training experience ``n - 1``"). A second eval at the same point overwrites
  the tasks it evaluated; tasks not evaluated keep their earlier values.
* an eval before any training (e.g. Avalanche's ``do_initial`` periodic eval) is stored in a
  separate ``init`` row; it is never part of the matrix nor of A / F.
* an eval **inside** a training experience (periodic eval with ``eval_every > 0``) writes no row;
  its scores only go to :attr:`history` and to the per-task MetricValues. Exception: if no
  training iteration ran between that eval and the end of the experience (Avalanche's periodic
  eval after the last epoch, which then skips its own end-of-experience eval), the model it
  measured *is* the end-of-experience model, so at ``after_training_exp`` it is promoted to row
  ``n - 1`` and A / F are emitted then. Training iterations are counted in this metric's
  ``after_training_iteration`` callback.

Avalanche runs its own end-of-experience periodic eval (``eval_every >= 0``) inside the
strategy's ``after_training_exp`` callback, after the evaluator's callbacks, so that eval is
already seen as "after training experience ``n - 1``" and writes the row, as intended. We do not
use ``strategy.clock.train_exp_counter`` for this, because the clock increments only after that
final periodic eval has run.

Columns are task indices ``0 .. C-1`` with ``C`` = ``n_tasks`` (if given) or one more than the
largest task index ever evaluated. ``NaN`` marks unknown entries.

A, F and F_paper (see :mod:`avalanche_av.evaluation.functional`) are emitted after every eval
that writes a row, computed on rows ``0 .. n-1``. With ``average_over="seen"`` they use the first
``min(n, C)`` task columns (the tasks trained so far, assuming experience ``t`` trains task
``t``); with ``"all"`` every column (e.g. for joint multitask training in one experience).
Values that are undefined (``NaN``, e.g. forgetting after the first experience) are not emitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DistributedSampler

from avalanche_av.evaluation.functional import (
    average_accuracy,
    class_recall_at_k,
    forgetting,
    forgetting_paper,
    modality_gap,
    recall_at_k,
    similarity,
)
from avalanche_av.models.distributed import is_distributed

__all__ = ["RetrievalMetrics", "av_evaluator", "get_retrieval_metrics", "DIRECTIONS", "LEVELS"]

DIRECTIONS = ("a2v", "v2a")
LEVELS = ("clip", "class")
INIT_ROW = "init"

RowKey = Union[int, str]
# per-task scores of one eval: level -> direction -> k -> task -> value
Scores = Dict[str, Dict[str, Dict[int, Dict[int, float]]]]


@dataclass
class _Buffer:
    """Per-stream storage of one eval call; every tensor is on CPU."""

    emb_a: List[torch.Tensor] = field(default_factory=list)  # (B, D) float32
    emb_v: List[torch.Tensor] = field(default_factory=list)  # (B, D) float32
    target: List[torch.Tensor] = field(default_factory=list)  # (B,) int64
    clip_id: List[torch.Tensor] = field(default_factory=list)  # (B,) int64
    task: List[torch.Tensor] = field(default_factory=list)  # (B,) int64
    has_clip_ids: bool = True


def _to_cpu_float(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"RetrievalMetrics: strategy.mb_output.{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"RetrievalMetrics: strategy.mb_output.{name} must have shape (B, D), got {tuple(x.shape)}")
    return x.detach().to(device="cpu", dtype=torch.float32)


def _get_output_field(out: Any, name: str) -> Any:
    if out is None:
        raise ValueError(
            "RetrievalMetrics: strategy.mb_output is None; the template must set it to an AVMAEOutput "
            "with emb_a_unmasked / emb_v_unmasked during eval"
        )
    if isinstance(out, dict):
        if name not in out:
            raise ValueError(f"RetrievalMetrics: strategy.mb_output has no key '{name}'")
        return out[name]
    if not hasattr(out, name):
        raise ValueError(
            f"RetrievalMetrics: strategy.mb_output ({type(out).__name__}) has no attribute '{name}'; "
            "expected the unmasked unimodal embeddings (B, D) produced in eval mode"
        )
    return getattr(out, name)


def _stream_name(experience: Any) -> str:
    stream = getattr(experience, "origin_stream", None)
    name = getattr(stream, "name", None)
    return str(name) if name is not None else "test"


def _plain(x: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into plain Python containers."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def _nan_to_none(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """``(U,)`` sorted positions of the first occurrence of every distinct value in ``ids`` ``(N,)``."""
    _, inverse = torch.unique(ids, return_inverse=True)
    n_unique = int(inverse.max()) + 1 if ids.numel() else 0
    pos = torch.arange(ids.numel(), dtype=torch.long)
    first = torch.full((n_unique,), ids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, pos, reduce="amin")
    return first.sort().values


class RetrievalMetrics(PluginMetric[Dict[str, float]]):
    """Zero-shot audio<->video retrieval R@k per task, class-level R@k, modality gap, A and F.

    See the module docstring for the protocol and how rows of the accuracy matrix are assigned.

    Emitted names follow Avalanche's ``{metric}/{phase}_phase/{stream}_stream[/TaskXXX]``:

    * ``Retrieval_R@5_a2v/eval_phase/test_stream/Task003`` - clip-level R@5 of task 3's queries;
      ``Retrieval_ClassR@5_a2v/...`` the class-level variant; ``ModalityGap/.../Task003``.
    * without the ``/TaskXXX`` suffix: the mean over the tasks evaluated in that call.
    * ``Retrieval_A_R@5_a2v``, ``Retrieval_F_R@5_a2v`` (textbook forgetting),
      ``Retrieval_Fpaper_R@5_a2v`` (the paper's variant), and ``..._ClassR@5_...`` versions.

    Here ``TaskXXX`` is the experience index in its stream (our benchmarks have one task per
    experience), not Avalanche's task label.

    Args:
        ks: cut-offs for R@k.
        class_level: also compute class-level R@k (needs targets ``>= 0``).
        modality_gap: also compute the modality gap per task.
        average_over: ``"seen"`` or ``"all"``; which task columns A / F use (module docstring).
        n_tasks: number of matrix columns, if known; otherwise inferred from evaluated tasks.
        name: metric name prefix.
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        class_level: bool = True,
        modality_gap: bool = True,
        average_over: Literal["seen", "all"] = "seen",
        n_tasks: Optional[int] = None,
        name: str = "Retrieval",
    ) -> None:
        super().__init__()
        ks = tuple(ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"RetrievalMetrics: ks must be positive integers, got {ks!r}")
        if average_over not in ("seen", "all"):
            raise ValueError(f"RetrievalMetrics: average_over must be 'seen' or 'all', got {average_over!r}")
        if n_tasks is not None and n_tasks < 1:
            raise ValueError(f"RetrievalMetrics: n_tasks must be >= 1 or None, got {n_tasks}")
        self.ks = tuple(sorted(set(ks)))
        self.class_level = bool(class_level)
        self.compute_modality_gap = bool(modality_gap)
        self.average_over = average_over
        self.n_tasks = n_tasks
        self.name = name
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything: buffers, matrices, history and the training-experience count."""
        self._buffers: Dict[str, _Buffer] = {}
        self._n_trained = 0
        self._in_train_exp = False
        self._iters_in_exp = 0
        # stream -> (iteration stamp, history record) of the latest eval inside the current experience
        self._pending: Dict[str, tuple[int, Dict[str, Any]]] = {}
        # stream -> row key -> {"scores": Scores, "gap": {task: value}}
        self._rows: Dict[str, Dict[RowKey, Dict[str, Any]]] = {}
        self._max_task: Dict[str, int] = {}
        self._last_eval: Dict[str, Dict[str, Any]] = {}
        self._last_stream: Optional[str] = None
        self.history: List[Dict[str, Any]] = []
        self._last_values: Dict[str, float] = {}

    def result(self) -> Dict[str, float]:
        """Last emitted scalar values, keyed by their full metric name."""
        return dict(self._last_values)

    def __str__(self) -> str:
        return self.name

    # Checkpointing: plain containers only, so run checkpoints load with weights_only=True.
    _STATE_FIELDS = ("_n_trained", "_rows", "_max_task", "_last_eval", "_last_stream", "history", "_last_values")

    def state_dict(self) -> Dict[str, Any]:
        """Matrices, history and counters (no per-eval buffers) as plain Python containers."""
        return {f: _plain(getattr(self, f)) for f in self._STATE_FIELDS}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (e.g. when resuming a run)."""
        self.reset()
        for f in self._STATE_FIELDS:
            setattr(self, f, state[f])

    @property
    def n_trained(self) -> int:
        """Training experiences completed so far (as seen by this metric)."""
        return self._n_trained

    # -------------------------------------------------------------- callbacks
    def before_training(self, strategy: Any) -> None:
        # A previous train() that raised may have left the flag set.
        self._in_train_exp = False

    def before_training_exp(self, strategy: Any) -> None:
        self._in_train_exp = True
        self._iters_in_exp = 0
        self._pending = {}

    def after_training_iteration(self, strategy: Any) -> None:
        super().after_training_iteration(strategy)
        self._iters_in_exp += 1

    def after_training_exp(self, strategy: Any) -> List[MetricValue]:
        self._in_train_exp = False
        self._n_trained += 1
        row = self._n_trained - 1
        x_plot = int(getattr(getattr(strategy, "clock", None), "train_iterations", 0) or 0)
        values: List[MetricValue] = []
        for stream, (stamp, record) in self._pending.items():
            if stamp != self._iters_in_exp:
                continue  # the model trained further after that eval
            self._write_row(stream, row, record["scores"], record["modality_gap"])
            record["row"] = row
            values.extend(self._summary_values(stream, row, x_plot))
        self._pending = {}
        for mv in values:
            self._last_values[mv.name] = mv.value
        return values

    def after_training(self, strategy: Any) -> None:
        self._in_train_exp = False

    def before_eval(self, strategy: Any) -> None:
        self._buffers = {}

    def before_eval_exp(self, strategy: Any) -> None:
        buf = self._buffers.get(_stream_name(strategy.experience))
        self._exp_start = 0 if buf is None else len(buf.emb_a)

    def after_eval_exp(self, strategy: Any) -> None:
        if is_distributed():
            self._gather_experience(strategy)

    def _gather_experience(self, strategy: Any) -> None:
        """Several ranks (torchrun): replace this rank's rows of the experience just evaluated by
        the rows of every rank, in dataset order, each clip once, so that every rank scores
        exactly what a single process would (docs/distributed.md).

        Each rank evaluated the shard of its ``DistributedSampler``, padded by repeating the first
        clips; the sampler's indices say which dataset row each embedding is, so the padding is
        removed by index (clip ids are not needed). A loader without such a sampler means every
        rank evaluated everything: nothing to gather.
        """
        from avalanche.distributed import DistributedHelper  # noqa: PLC0415

        sampler = getattr(getattr(strategy, "dataloader", None), "sampler", None)
        if not isinstance(sampler, DistributedSampler) or len(sampler.dataset) == 0:
            return
        stream = _stream_name(strategy.experience)
        buf = self._buffers.setdefault(stream, _Buffer())
        start = getattr(self, "_exp_start", 0)
        index = torch.tensor(list(iter(sampler)), dtype=torch.long)
        n = sum(t.shape[0] for t in buf.emb_a[start:])
        if n != index.numel():
            raise RuntimeError(f"RetrievalMetrics: this rank evaluated {n} rows but its sampler holds {index.numel()}")
        d = buf.emb_a[start].shape[1]
        rows = torch.cat([torch.cat(buf.emb_a[start:]), torch.cat(buf.emb_v[start:])], dim=1)
        ints = torch.stack([torch.cat(getattr(buf, f)[start:]) for f in ("target", "clip_id", "task")] + [index], 1)
        rows = torch.cat(DistributedHelper.gather_all(rows))
        ints = torch.cat(DistributedHelper.gather_all(ints))
        keep = _first_occurrence(ints[:, 3])  # sorted by dataset index: the padding goes
        keep = keep[torch.argsort(ints[keep, 3])]
        rows, ints = rows[keep], ints[keep]
        for lst, t in ((buf.emb_a, rows[:, :d]), (buf.emb_v, rows[:, d:]), (buf.target, ints[:, 0]),
                       (buf.clip_id, ints[:, 1]), (buf.task, ints[:, 2])):
            del lst[start:]
            lst.append(t.contiguous())

    def after_eval_iteration(self, strategy: Any) -> None:
        super().after_eval_iteration(strategy)
        out = strategy.mb_output
        emb_a = _to_cpu_float(_get_output_field(out, "emb_a_unmasked"), "emb_a_unmasked")
        emb_v = _to_cpu_float(_get_output_field(out, "emb_v_unmasked"), "emb_v_unmasked")
        if emb_a.shape != emb_v.shape:
            raise ValueError(
                f"RetrievalMetrics: emb_a_unmasked {tuple(emb_a.shape)} and emb_v_unmasked "
                f"{tuple(emb_v.shape)} must have the same shape (B, D)"
            )
        n = emb_a.shape[0]
        y = getattr(strategy, "mb_y", None)
        y = torch.full((n,), -1, dtype=torch.long) if y is None else torch.as_tensor(y).detach().to("cpu").long().reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"RetrievalMetrics: strategy.mb_y has {y.shape[0]} entries, embeddings have {n}")
        cid = getattr(strategy, "mb_clip_id", None)
        experience = strategy.experience
        task = int(experience.current_experience)
        buf = self._buffers.setdefault(_stream_name(experience), _Buffer())
        if cid is None:
            buf.has_clip_ids = False
            cid_t = torch.full((n,), -1, dtype=torch.long)
        else:
            cid_t = torch.as_tensor(cid).detach().to("cpu").long().reshape(-1)
            if cid_t.shape[0] != n:
                raise ValueError(f"RetrievalMetrics: strategy.mb_clip_id has {cid_t.shape[0]} entries, embeddings have {n}")
        buf.emb_a.append(emb_a)
        buf.emb_v.append(emb_v)
        buf.target.append(y)
        buf.clip_id.append(cid_t)
        buf.task.append(torch.full((n,), task, dtype=torch.long))

    def after_eval(self, strategy: Any) -> List[MetricValue]:
        x_plot = int(getattr(getattr(strategy, "clock", None), "train_iterations", 0) or 0)
        values: List[MetricValue] = []
        for stream, buf in self._buffers.items():
            values.extend(self._finish_stream(stream, buf, x_plot))
        self._buffers = {}
        for mv in values:
            self._last_values[mv.name] = mv.value
        return values

    # ------------------------------------------------------------ computation
    def _compute(self, buf: _Buffer) -> tuple[Scores, Dict[int, float]]:
        emb_a = torch.cat(buf.emb_a)
        emb_v = torch.cat(buf.emb_v)
        target = torch.cat(buf.target)
        task = torch.cat(buf.task)
        if buf.has_clip_ids:
            # The gallery is a set of clips: a clip evaluated twice must not compete with itself.
            keep = _first_occurrence(torch.cat(buf.clip_id))
            emb_a, emb_v, target, task = emb_a[keep], emb_v[keep], target[keep], task[keep]
        gallery = {"a2v": emb_v, "v2a": emb_a}
        queries = {"a2v": emb_a, "v2a": emb_v}
        scores: Scores = {lvl: {d: {k: {} for k in self.ks} for d in DIRECTIONS} for lvl in LEVELS}
        gaps: Dict[int, float] = {}
        for t in torch.unique(task).tolist():
            q_idx = torch.nonzero(task == t).squeeze(1)
            for d in DIRECTIONS:
                sim = similarity(queries[d][q_idx], gallery[d])  # (Q_t, N)
                for k, v in recall_at_k(sim, q_idx, self.ks).items():
                    scores["clip"][d][k][t] = v
                if self.class_level and bool((target[q_idx] >= 0).any()):
                    for k, v in class_recall_at_k(sim, target[q_idx], target, self.ks).items():
                        scores["class"][d][k][t] = v
            if self.compute_modality_gap:
                gaps[t] = modality_gap(emb_a[q_idx], emb_v[q_idx])
        return scores, gaps

    def _finish_stream(self, stream: str, buf: _Buffer, x_plot: int) -> List[MetricValue]:
        if not buf.emb_a:
            return []
        scores, gaps = self._compute(buf)
        tasks = sorted(set(torch.cat(buf.task).tolist()))
        self._max_task[stream] = max(self._max_task.get(stream, -1), tasks[-1])
        self._last_stream = stream

        row: Optional[RowKey]
        if self._in_train_exp:
            row = None
        else:
            row = self._n_trained - 1 if self._n_trained > 0 else INIT_ROW
        if row is not None:
            self._write_row(stream, row, scores, gaps)

        record = {
            "stream": stream,
            "n_trained": self._n_trained,
            "in_training": self._in_train_exp,
            "row": row,
            "train_iterations": x_plot,
            "tasks": tasks,
            "scores": scores,
            "modality_gap": gaps,
        }
        self._last_eval[stream] = record
        self.history.append(record)
        if row is None:
            self._pending[stream] = (self._iters_in_exp, record)

        values: List[MetricValue] = []
        emit = self._emitter(values, stream, x_plot)

        for lvl in LEVELS:
            tag = "R" if lvl == "clip" else "ClassR"
            for d in DIRECTIONS:
                for k in self.ks:
                    per_task = scores[lvl][d][k]
                    metric = f"{self.name}_{tag}@{k}_{d}"
                    for t in sorted(per_task):
                        emit(metric, per_task[t], t)
                    if per_task:
                        emit(metric, float(np.mean(list(per_task.values()))))
        for t in sorted(gaps):
            emit("ModalityGap", gaps[t], t)
        if gaps:
            emit("ModalityGap", float(np.mean(list(gaps.values()))))

        if isinstance(row, int):
            values.extend(self._summary_values(stream, row, x_plot))
        return values

    def _emitter(self, values: List[MetricValue], stream: str, x_plot: int):
        base = f"/eval_phase/{stream}_stream"

        def emit(metric: str, value: float, task: Optional[int] = None) -> None:
            # Undefined values (NaN) are skipped rather than sent to the loggers.
            if value is None or not math.isfinite(value):
                return
            suffix = "" if task is None else f"/Task{task:03}"
            values.append(MetricValue(self, f"{metric}{base}{suffix}", float(value), x_plot))

        return emit

    def _write_row(self, stream: str, row: RowKey, scores: Scores, gaps: Dict[int, float]) -> None:
        entry = self._rows.setdefault(stream, {}).setdefault(
            row, {"scores": {lvl: {d: {k: {} for k in self.ks} for d in DIRECTIONS} for lvl in LEVELS}, "gap": {}}
        )
        for lvl in LEVELS:
            for d in DIRECTIONS:
                for k in self.ks:
                    entry["scores"][lvl][d][k].update(scores[lvl][d][k])
        entry["gap"].update(gaps)

    def _summary_values(self, stream: str, row: int, x_plot: int) -> List[MetricValue]:
        """A, F and F_paper MetricValues on matrix rows ``0 .. row``."""
        values: List[MetricValue] = []
        emit = self._emitter(values, stream, x_plot)
        for lvl in LEVELS:
            tag = "R" if lvl == "clip" else "ClassR"
            for d in DIRECTIONS:
                for k in self.ks:
                    acc = self.matrix(d, k, lvl, stream=stream)[: row + 1]
                    if acc.size == 0 or np.all(np.isnan(acc)):
                        continue
                    n_cols = self._cols_for_average(acc)
                    emit(f"{self.name}_A_{tag}@{k}_{d}", average_accuracy(acc, n_cols))
                    emit(f"{self.name}_F_{tag}@{k}_{d}", forgetting(acc, n_cols))
                    emit(f"{self.name}_Fpaper_{tag}@{k}_{d}", forgetting_paper(acc, n_cols))
        return values

    # -------------------------------------------------------------- accessors
    def _resolve_stream(self, stream: Optional[str]) -> str:
        if stream is None:
            if self._last_stream is None:
                raise ValueError("RetrievalMetrics: nothing has been evaluated yet")
            return self._last_stream
        if stream not in self._max_task:
            raise ValueError(f"RetrievalMetrics: stream {stream!r} was never evaluated; known: {sorted(self._max_task)}")
        return stream

    def _check_query(self, direction: str, k: int, level: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"RetrievalMetrics: direction must be one of {DIRECTIONS}, got {direction!r}")
        if level not in LEVELS:
            raise ValueError(f"RetrievalMetrics: level must be one of {LEVELS}, got {level!r}")
        if k not in self.ks:
            raise ValueError(f"RetrievalMetrics: k must be one of the configured ks {self.ks}, got {k!r}")

    def n_columns(self, stream: Optional[str] = None) -> int:
        """Number of task columns ``C`` of the matrices of ``stream``."""
        stream = self._resolve_stream(stream)
        return max(self.n_tasks or 0, self._max_task[stream] + 1)

    def _n_rows(self, stream: str) -> int:
        rows = [r for r in self._rows.get(stream, {}) if isinstance(r, int)]
        return max(rows) + 1 if rows else 0

    def matrix(
        self, direction: str = "a2v", k: int = 5, level: str = "clip", stream: Optional[str] = None
    ) -> np.ndarray:
        """Accuracy matrix ``(T_trained, T_tasks)``: entry ``[t, i]`` is R@k on task ``i`` after
        training experience ``t``; ``NaN`` where unknown.

        Args:
            direction: ``"a2v"`` or ``"v2a"``.
            k: one of the configured ``ks``.
            level: ``"clip"`` (instance-level) or ``"class"`` (class-level).
            stream: stream name; default the stream evaluated last.
        """
        self._check_query(direction, k, level)
        stream = self._resolve_stream(stream)
        m = np.full((self._n_rows(stream), self.n_columns(stream)), np.nan)
        for r, entry in self._rows.get(stream, {}).items():
            if isinstance(r, int):
                for t, v in entry["scores"][level][direction][k].items():
                    m[r, t] = v
        return m

    def init_scores(
        self, direction: str = "a2v", k: int = 5, level: str = "clip", stream: Optional[str] = None
    ) -> Optional[np.ndarray]:
        """``(T_tasks,)`` scores of the eval before any training, or ``None`` if there was none."""
        self._check_query(direction, k, level)
        stream = self._resolve_stream(stream)
        entry = self._rows.get(stream, {}).get(INIT_ROW)
        if entry is None:
            return None
        v = np.full((self.n_columns(stream),), np.nan)
        for t, x in entry["scores"][level][direction][k].items():
            v[t] = x
        return v

    def modality_gap_matrix(self, stream: Optional[str] = None) -> np.ndarray:
        """``(T_trained, T_tasks)`` modality gap of task ``i`` after training experience ``t``."""
        stream = self._resolve_stream(stream)
        m = np.full((self._n_rows(stream), self.n_columns(stream)), np.nan)
        for r, entry in self._rows.get(stream, {}).items():
            if isinstance(r, int):
                for t, v in entry["gap"].items():
                    m[r, t] = v
        return m

    def _cols_for_average(self, acc: np.ndarray) -> Optional[int]:
        return acc.shape[1] if self.average_over == "all" and acc.size else None

    def summary_metric(
        self,
        which: Literal["A", "F", "F_paper"],
        direction: str = "a2v",
        k: int = 5,
        level: str = "clip",
        stream: Optional[str] = None,
    ) -> float:
        """A, F (textbook) or F_paper on the current matrix; ``NaN`` when undefined."""
        acc = self.matrix(direction, k, level, stream)
        if acc.size == 0:
            return float("nan")
        fn = {"A": average_accuracy, "F": forgetting, "F_paper": forgetting_paper}.get(which)
        if fn is None:
            raise ValueError(f"RetrievalMetrics: which must be 'A', 'F' or 'F_paper', got {which!r}")
        return fn(acc, self._cols_for_average(acc))

    # ---------------------------------------------------------------- export
    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable summary (``NaN`` becomes ``None``; dict keys are strings).

        Layout: ``{"ks", "n_trained", "average_over", "streams": {name: {...}}}`` where each
        stream holds ``tasks`` (column indices), ``last`` (per-task scores of its latest eval:
        ``last[level][direction][k][task]`` and ``last["modality_gap"][task]``), ``A``, ``F``,
        ``F_paper`` (``[level][direction][k]``), ``matrices`` (``[level][direction][k]`` as
        nested lists, plus ``"modality_gap"``), ``init`` (same layout as ``last``, or ``None``)
        and ``history`` (one record per eval, in order).
        """

        def scores_json(scores: Scores, gaps: Dict[int, float]) -> Dict[str, Any]:
            out: Dict[str, Any] = {
                lvl: {
                    d: {str(k): {str(t): _nan_to_none(v) for t, v in sorted(scores[lvl][d][k].items())} for k in self.ks}
                    for d in DIRECTIONS
                }
                for lvl in LEVELS
            }
            out["modality_gap"] = {str(t): _nan_to_none(v) for t, v in sorted(gaps.items())}
            return out

        def mat_json(m: np.ndarray) -> List[List[Optional[float]]]:
            return [[_nan_to_none(float(x)) for x in row] for row in m]

        streams: Dict[str, Any] = {}
        for stream in self._max_task:
            block: Dict[str, Any] = {"tasks": list(range(self.n_columns(stream)))}
            last = self._last_eval.get(stream)
            block["last"] = scores_json(last["scores"], last["modality_gap"]) if last else None
            for which in ("A", "F", "F_paper"):
                block[which] = {
                    lvl: {
                        d: {str(k): _nan_to_none(self.summary_metric(which, d, k, lvl, stream)) for k in self.ks}
                        for d in DIRECTIONS
                    }
                    for lvl in LEVELS
                }
            mats: Dict[str, Any] = {
                lvl: {d: {str(k): mat_json(self.matrix(d, k, lvl, stream)) for k in self.ks} for d in DIRECTIONS}
                for lvl in LEVELS
            }
            mats["modality_gap"] = mat_json(self.modality_gap_matrix(stream))
            block["matrices"] = mats
            init = self._rows.get(stream, {}).get(INIT_ROW)
            block["init"] = scores_json(init["scores"], init["gap"]) if init else None
            block["history"] = [
                {
                    "n_trained": h["n_trained"],
                    "in_training": h["in_training"],
                    "row": h["row"],
                    "train_iterations": h["train_iterations"],
                    "tasks": list(h["tasks"]),
                    **scores_json(h["scores"], h["modality_gap"]),
                }
                for h in self.history
                if h["stream"] == stream
            ]
            streams[stream] = block
        return {
            "ks": list(self.ks),
            "n_trained": self._n_trained,
            "average_over": self.average_over,
            "streams": streams,
        }

    def results(self) -> Dict[str, Any]:
        """Alias of :meth:`to_dict`."""
        return self.to_dict()


def av_evaluator(
    loggers: Optional[Any] = None,
    ks: Sequence[int] = (1, 5, 10),
    strict_checks: bool = False,
    collect_all: bool = True,
    extra_metrics: Sequence[Any] = (),
    **kw: Any,
) -> EvaluationPlugin:
    """Evaluation plugin for audio-video pre-training: loss metrics plus :class:`RetrievalMetrics`.

    Args:
        loggers: Avalanche loggers (or a callable returning them); default ``[InteractiveLogger()]``.
        ks: R@k cut-offs.
        strict_checks: forwarded to :class:`EvaluationPlugin` (whole-stream eval check).
        collect_all: forwarded to :class:`EvaluationPlugin`.
        extra_metrics: more Avalanche metrics for the same plugin (e.g.
            :func:`~avalanche_av.evaluation.training_diagnostics`,
            :class:`~avalanche_av.evaluation.LocalizationMetrics`).
        **kw: forwarded to :class:`RetrievalMetrics` (``class_level``, ``modality_gap``,
            ``average_over``, ``n_tasks``, ``name``).

    Returns:
        The plugin; its :class:`RetrievalMetrics` is also reachable as ``.retrieval_metrics``
        and via :func:`get_retrieval_metrics`.
    """
    retrieval = RetrievalMetrics(ks=ks, **kw)
    if loggers is None:
        loggers = [InteractiveLogger()]
    evaluator = EvaluationPlugin(
        loss_metrics(minibatch=False, epoch=True, experience=True, stream=True),
        retrieval,
        *extra_metrics,
        loggers=loggers,
        collect_all=collect_all,
        strict_checks=strict_checks,
    )
    evaluator.retrieval_metrics = retrieval  # type: ignore[attr-defined]
    return evaluator


def get_retrieval_metrics(evaluator: EvaluationPlugin) -> RetrievalMetrics:
    """The (first) :class:`RetrievalMetrics` inside ``evaluator``; ValueError if there is none."""
    for m in getattr(evaluator, "metrics", []):
        if isinstance(m, RetrievalMetrics):
            return m
    raise ValueError("get_retrieval_metrics: the evaluator holds no RetrievalMetrics; build it with av_evaluator()")
