"""Per-step training diagnostics as Avalanche metrics (docs/metrics.md, "Training diagnostics").

Each metric reads what a training plugin exposes publicly, never patches it, and averages the
values over windows of ``every`` training iterations:

* :class:`AVMMatchMetric`: STELLA's AVM match accuracy and matching loss on the current batch
  (``plugin.last_stats.avm_acc`` / ``.avm_loss``; chance accuracy 0.5).
* :class:`ExcludedFractionMetric`: the share of audio and video patches STELLA's correlation
  step excluded (``plugin.last_stats.excluded_frac_a`` / ``_v``, paper Eq. 4).
* :class:`MemoryFillMetric`: how full a replay memory is (``len(plugin.storage) /
  plugin.mem_size``), for every online-memory method.
* :class:`TrainLocalizationMetric`: the share of STELLA's video importance (``plugin.step.imp_v``,
  the map its selection samples from) on the ground-truth sounding patches of the training
  clips, with its chance level and AUC (:mod:`avalanche_av.evaluation.localization`).

:func:`training_diagnostics` builds them all; put them in an ``EvaluationPlugin`` (e.g.
``av_evaluator(...)`` then ``EvaluationPlugin(*metrics, ...)``, or add them to its ``metrics``).

Host syncs. Values stay on the device and are summed there; one ``tolist()`` per metric every
``every`` iterations (and at the end of each experience, for a last partial window) moves the
window means to the host. So the metrics never make the training loop wait for the device
between logging points.

Timing. The plugins expose a step's values from their ``before_forward`` until their own
``after_training_iteration`` (STELLA clears ``plugin.step`` there, and Avalanche calls the
evaluator after every other plugin). The metrics therefore read in ``after_forward`` and emit
in ``after_training_iteration``. A plugin that exposes nothing (another method, a STELLA
ablation without exclusion still exposes zeros) simply produces no value; a value object the
metric has already read (``last_stats`` not refreshed) is not counted twice.

Emitted names follow Avalanche's ``{metric}/train_phase/train_stream/TaskXXX`` with ``XXX`` the
training experience's index; ``x_plot`` is ``strategy.clock.train_iterations``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor

from .localization import auc_rows, sounding_patches

__all__ = [
    "TrainingDiagnostic",
    "AVMMatchMetric",
    "ExcludedFractionMetric",
    "MemoryFillMetric",
    "TrainLocalizationMetric",
    "training_diagnostics",
]

Number = Union[Tensor, float, int]
#: What :meth:`TrainingDiagnostic.read` returns: value name -> (sum, count) for this step.
Reading = Dict[str, Tuple[Number, Number]]


class TrainingDiagnostic(PluginMetric[Dict[str, float]]):
    """Base of the per-step diagnostics: read each step, average over windows, emit.

    Subclasses implement :meth:`find_source` (which plugin to read) and :meth:`read` (this
    step's ``(sum, count)`` per value name; tensors may stay on the device).

    Args:
        every: window length in training iterations (``>= 1``); a window mean is emitted every
            ``every`` iterations and at the end of each training experience.
        plugin: the plugin to read; default the first plugin of the strategy that fits
            (:meth:`find_source`).
        name: metric-name prefix.

    Attributes:
        history: one record per emission: ``{"iteration", "experience", "values": {name: mean}}``.
    """

    def __init__(self, every: int = 10, plugin: Any = None, name: str = "Train") -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{type(self).__name__}: every must be an int >= 1, got {every!r}")
        self.every = every
        self.plugin = plugin
        self.name = name
        self.history: List[Dict[str, Any]] = []
        self._last: Dict[str, float] = {}
        self._clear_window()
        self._seen: Any = None
        self._iters = 0

    # ------------------------------------------------------------------ to implement
    def find_source(self, strategy: Any) -> Any:
        """The object :meth:`read` reads (a plugin), or ``None`` when the strategy has none."""
        raise NotImplementedError

    def read(self, strategy: Any, source: Any) -> Optional[Reading]:
        """This step's values as ``name -> (sum, count)``, or ``None`` for nothing new."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _clear_window(self) -> None:
        self._sums: Dict[str, Number] = {}
        self._counts: Dict[str, Number] = {}

    def reset(self) -> None:
        """Forget the open window and the history."""
        self._clear_window()
        self.history = []
        self._last = {}
        self._iters = 0

    def result(self) -> Dict[str, float]:
        """The last emitted window means, by value name."""
        return dict(self._last)

    def state_dict(self) -> Dict[str, Any]:
        """History and last values as plain containers (checkpoints load with ``weights_only=True``)."""
        return {"history": [dict(h, values=dict(h["values"])) for h in self.history], "last": dict(self._last)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.reset()
        self.history = [dict(h) for h in state["history"]]
        self._last = dict(state["last"])

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: ``{"every": k, "history": [...]}``."""
        return {"every": self.every, "history": self.state_dict()["history"]}

    def __str__(self) -> str:
        return self.name

    def _source(self, strategy: Any) -> Any:
        return self.plugin if self.plugin is not None else self.find_source(strategy)

    # ------------------------------------------------------------------ callbacks
    def before_training_exp(self, strategy: Any) -> None:
        self._clear_window()
        self._iters = 0

    def after_forward(self, strategy: Any) -> None:
        source = self._source(strategy)
        if source is None:
            return
        reading = self.read(strategy, source)
        if not reading:
            return
        for key, (total, count) in reading.items():
            # Device tensors are added on the device: no host sync here.
            self._sums[key] = self._sums.get(key, 0.0) + total
            self._counts[key] = self._counts.get(key, 0) + count

    def after_training_iteration(self, strategy: Any) -> Optional[List[MetricValue]]:
        self._iters += 1
        if self._iters % self.every == 0:
            return self._emit(strategy)
        return None

    def after_training_exp(self, strategy: Any) -> Optional[List[MetricValue]]:
        return self._emit(strategy) if self._sums else None

    # ------------------------------------------------------------------ emission
    def _emit(self, strategy: Any) -> List[MetricValue]:
        if not self._sums:
            return []
        keys = sorted(self._sums)
        raw = [x for k in keys for x in (self._sums[k], self._counts[k])]
        dev = next((x.device for x in raw if isinstance(x, Tensor)), torch.device("cpu"))
        parts = [torch.as_tensor(x, dtype=torch.float32, device=dev).reshape(()) for x in raw]
        flat = torch.stack(parts).tolist()  # the one host sync of the window
        self._clear_window()
        means = {}
        for i, k in enumerate(keys):
            total, count = flat[2 * i], flat[2 * i + 1]
            if count > 0 and math.isfinite(total):
                means[k] = total / count
        exp = getattr(strategy, "experience", None)
        task = int(getattr(exp, "current_experience", 0) or 0)
        stream = getattr(getattr(exp, "origin_stream", None), "name", "train")
        x = int(getattr(getattr(strategy, "clock", None), "train_iterations", 0) or 0)
        self.history.append({"iteration": x, "experience": task, "values": dict(means)})
        self._last.update(means)
        return [
            MetricValue(self, f"{self.name}_{k}/train_phase/{stream}_stream/Task{task:03}", v, x)
            for k, v in means.items()
        ]


def _first_plugin(strategy: Any, *attrs: str) -> Any:
    for p in getattr(strategy, "plugins", []):
        if all(hasattr(p, a) for a in attrs):
            return p
    return None


class _StatsDiagnostic(TrainingDiagnostic):
    """Reads STELLA's ``last_stats`` (a ``StellaStepStats``), once per stats object."""

    def find_source(self, strategy: Any) -> Any:
        return _first_plugin(strategy, "last_stats", "avm")

    def _fresh_stats(self, source: Any) -> Any:
        stats = getattr(source, "last_stats", None)
        if stats is None or stats is self._seen:
            return None
        self._seen = stats
        return stats


class AVMMatchMetric(_StatsDiagnostic):
    """STELLA's AVM on the current batch: match accuracy (``AVM_Acc``, chance 0.5, half the
    pairs deranged) and matching loss (``AVM_Loss``), window means."""

    def read(self, strategy: Any, source: Any) -> Optional[Reading]:
        stats = self._fresh_stats(source)
        if stats is None:
            return None
        return {"AVM_Acc": (stats.avm_acc.detach().float(), 1), "AVM_Loss": (stats.avm_loss.detach().float(), 1)}


class ExcludedFractionMetric(_StatsDiagnostic):
    """Share of audio (``Excluded_a``) and video (``Excluded_v``) patches of the current batch
    that STELLA's replay-guided correlation step excluded (paper Eq. 4); 0 on the first step, with
    ``use_correlation=False`` and under the Random / MATS ablations."""

    def read(self, strategy: Any, source: Any) -> Optional[Reading]:
        stats = self._fresh_stats(source)
        if stats is None:
            return None
        return {"Excluded_a": (stats.excluded_frac_a.detach().float(), 1),
                "Excluded_v": (stats.excluded_frac_v.detach().float(), 1)}


class MemoryFillMetric(TrainingDiagnostic):
    """``MemoryFill``: stored clips over the memory size, for any online-memory plugin (host
    integers, no device work)."""

    def find_source(self, strategy: Any) -> Any:
        return _first_plugin(strategy, "storage", "mem_size")

    def read(self, strategy: Any, source: Any) -> Optional[Reading]:
        if not (hasattr(source, "storage") and hasattr(source, "mem_size")):
            return None
        size = int(source.mem_size)
        return {"MemoryFill": (len(source.storage) / size if size else 0.0, 1)}


class TrainLocalizationMetric(TrainingDiagnostic):
    """Localization on the training clips: the share of STELLA's video importance on the
    sounding patches (``Loc_Share``), its chance level (``Loc_Chance``, a uniform map's share)
    and the rank AUC (``Loc_AUC``, chance 0.5), over the current clips that have ground truth.

    The map is ``plugin.step.imp_v``, what the selection samples from: the AVM's importance for
    STELLA, motion under the MATS ablation, uniform under RCA and Random.

    Args:
        sounding_masks: ``(N_clips, n, gh, gw)`` bool, indexed by clip id (``AVBenchmark.sounding_masks``).
        active_frames: optional ``(N_clips, n)`` bool; when given only sounding frames count.
        every, plugin, name: as :class:`TrainingDiagnostic`.
    """

    def __init__(self, sounding_masks: Tensor, active_frames: Optional[Tensor] = None, every: int = 10,
                 plugin: Any = None, name: str = "Train") -> None:
        super().__init__(every=every, plugin=plugin, name=name)
        self._gt = sounding_patches(sounding_masks, active_frames)  # (N_clips, Nv) bool, CPU
        self._gt_dev: Dict[str, Tensor] = {}

    def find_source(self, strategy: Any) -> Any:
        return _first_plugin(strategy, "step", "avm")

    def _gt_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._gt_dev:  # moved once per device, not per step
            self._gt_dev[key] = self._gt.to(device)
        return self._gt_dev[key]

    def read(self, strategy: Any, source: Any) -> Optional[Reading]:
        step = getattr(source, "step", None)
        if step is None or step is self._seen or getattr(step, "imp_v", None) is None:
            return None
        self._seen = step
        imp = step.imp_v.detach().float()
        b = imp.shape[0]
        if imp.shape[1] != self._gt.shape[1]:
            raise ValueError(f"TrainLocalizationMetric: the plugin's imp_v has {imp.shape[1]} video patches, the "
                             f"sounding masks {self._gt.shape[1]}; build the masks for this model's input shape")
        gt = self._gt_on(imp.device)[strategy.mb_clip_id[:b].to(imp.device).long()]
        keep = gt.any(dim=1)
        g = gt.float()
        share = (imp * g).sum(1) / imp.sum(1).clamp_min(1e-12)
        chance = g.sum(1) / g.shape[1]
        auc = auc_rows(imp, gt)
        auc_ok = ~torch.isnan(auc)
        n = keep.sum()
        zero = torch.zeros((), device=imp.device)
        return {
            "Loc_Share": (torch.where(keep, share, zero).sum(), n),
            "Loc_Chance": (torch.where(keep, chance, zero).sum(), n),
            "Loc_AUC": (torch.where(auc_ok, auc, zero).sum(), auc_ok.sum()),
        }


def training_diagnostics(
    every: int = 10,
    sounding_masks: Optional[Tensor] = None,
    active_frames: Optional[Tensor] = None,
    plugin: Any = None,
) -> List[TrainingDiagnostic]:
    """All per-step diagnostics: AVM match, excluded fractions, memory fill and, given the
    ground truth, training-clip localization.

    Args:
        every: window length in iterations.
        sounding_masks, active_frames: ``AVBenchmark.sounding_masks`` / ``.active_frames`` (the
            synthetic stream); ``None`` leaves out :class:`TrainLocalizationMetric`.
        plugin: the plugin to read; default each metric finds the first that fits.

    Returns:
        The metrics, for an ``EvaluationPlugin``. With a method that exposes nothing they emit
        nothing.
    """
    metrics: List[TrainingDiagnostic] = [
        AVMMatchMetric(every, plugin),
        ExcludedFractionMetric(every, plugin),
        MemoryFillMetric(every, plugin),
    ]
    if sounding_masks is not None:
        metrics.append(TrainLocalizationMetric(sounding_masks, active_frames, every, plugin))
    return metrics
