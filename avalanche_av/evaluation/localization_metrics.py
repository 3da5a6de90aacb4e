"""Localization after each task, for every method, as an Avalanche metric (docs/metrics.md).

:class:`LocalizationMetrics` scores, on every evaluated clip that has ground truth, how much of a
video map falls on the sounding patches, per task, and keeps a ``(tasks trained, tasks)`` matrix
per map and statistic, like the retrieval accuracy matrix:

* ``"cosine"`` (every method): :func:`~avalanche_av.evaluation.localization.cosine_importance`,
  the softmax over patches of the cosine between the clip's pooled audio embedding and each
  video patch token (paper Fig. 7 (b)-(c));
* ``"avm"`` (STELLA): the AVM's video importance (paper Eq. 2), from the AVM of the first
  plugin that has one (``plugin.avm``) or the one given;
* ``"intensity"`` (reference, no audio, no model):
  :func:`~avalanche_av.evaluation.localization.intensity_map`, each patch's mean pixel
  intensity. On the synthetic stream the source is bright while it sounds, so this is what plain
  visual saliency scores.

**Audio-swap control** (``audio_swap=True``): each map that uses audio is also computed with the
audio of another clip of the same batch (a fixed derangement), scored against the video's own
ground truth (``share_swap``, ``auc_swap``). A map that follows the sound loses localization when
the audio is swapped; a map driven by visual saliency alone does not. So ``share - share_swap``
is the part of the localization the audio accounts for.

Statistics per task (means over its clips): ``share`` (on the sounding patches), ``lift``
(share over chance), ``auc`` (rank AUC, chance 0.5), the chance level ``chance`` (a uniform
map's share), and ``share_swap`` / ``auc_swap`` of the audio-swap control. After each row: ``A`` (mean over the tasks trained so far) and ``F`` (textbook
forgetting, :func:`~avalanche_av.evaluation.localization.localization_forgetting`) of ``share``
and ``auc``.

Rows. The metric counts finished training experiences (``after_training_exp``). An eval outside
training after ``n`` of them writes row ``n - 1``; an eval before any training the ``init`` row;
an eval inside a training experience (periodic eval) writes no row, its values are only
emitted. (Unlike :class:`~avalanche_av.evaluation.RetrievalMetrics`, a periodic eval after the
last epoch is not promoted to a row: the main job evaluates after each ``train()`` call.)

Cost: one extra unmasked unimodal pass over each evaluated batch (and two joint passes plus the
AVM for ``"avm"``, one for the swap control), under ``no_grad`` and the strategy's autocast. Batches are read from
``strategy.mb_audio_raw`` / ``mb_video_raw`` and ``mb_clip_id``.

Names: ``Localization_cosine_Share/eval_phase/test_stream/Task002`` (per task; also ``_Lift``,
``_AUC``, ``_ShareSwap``, ``_AUCSwap`` and the ``avm_`` / ``intensity_`` versions),
``Localization_cosine_Share/eval_phase/test_stream`` (mean over the evaluated tasks),
``Localization_Chance/...``, ``Localization_cosine_A_Share`` and ``Localization_cosine_F_Share``
(also for AUC and ShareSwap).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from matplotlib.figure import Figure
from torch import Tensor

from ..models.avm import derangement
from .functional import average_accuracy
from .localization import (
    auc_rows,
    avm_importance,
    cosine_from_tokens,
    intensity_map,
    localization_forgetting,
    map_to_importance,
    plot_attention_rows,
    sounding_patches,
    unimodal_tokens,
)

__all__ = ["LocalizationMetrics", "MAPS", "STATS"]

#: Map kinds.
MAPS = ("cosine", "avm", "intensity")
#: Per-task statistics kept in the matrices.
STATS = ("share", "lift", "auc", "chance", "share_swap", "auc_swap")
#: Metric-name tags of the statistics.
_TAGS = {"share": "Share", "lift": "Lift", "auc": "AUC", "share_swap": "ShareSwap", "auc_swap": "AUCSwap"}
_INIT = "init"
#: Row labels of the attention figures.
_LABELS = {"avm": "AVM importance", "cosine": "audio→video cosine", "intensity": "pixel intensity"}


def _stream_name(experience: Any) -> str:
    name = getattr(getattr(experience, "origin_stream", None), "name", None)
    return str(name) if name is not None else "test"


def _none_if_nan(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


class LocalizationMetrics(PluginMetric[Dict[str, float]]):
    """Share of video-map mass on the true sounding patches, per task, after each task.

    Args:
        sounding_masks: ``(N_clips, n, gh, gw)`` bool by clip id (``AVBenchmark.sounding_masks``).
        active_frames: optional ``(N_clips, n)`` bool; when given only sounding frames count.
        maps: which maps, among :data:`MAPS`; ``"avm"`` is skipped while no AVM is found.
        temperature: softmax temperature of the cosine map; default the model's τ.
        beta: the AVM importance temperature β (paper: 0.4).
        avm: the AVM module to use; default ``plugin.avm`` of the first plugin that has one.
        audio_swap: also score the maps with another clip's audio (the control above).
        swap_seed: seed of the derangements (the same ones at every eval).
        track_clips: clip ids whose maps are kept at every row (for attention figures over
            the stream); see :meth:`tracked_maps`.
        n_tasks: matrix columns, if known.
        name: metric-name prefix.
    """

    def __init__(
        self,
        sounding_masks: Tensor,
        active_frames: Optional[Tensor] = None,
        maps: Sequence[str] = MAPS,
        temperature: Optional[float] = None,
        beta: float = 0.4,
        avm: Optional[torch.nn.Module] = None,
        audio_swap: bool = True,
        swap_seed: int = 0,
        track_clips: Sequence[int] = (),
        n_tasks: Optional[int] = None,
        name: str = "Localization",
    ) -> None:
        super().__init__()
        bad = [m for m in maps if m not in MAPS]
        if bad or not maps:
            raise ValueError(f"LocalizationMetrics: maps must be a non-empty subset of {MAPS}, got {list(maps)}")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"LocalizationMetrics: temperature must be > 0, got {temperature}")
        if not beta > 0:
            raise ValueError(f"LocalizationMetrics: beta must be > 0, got {beta}")
        self._gt = sounding_patches(sounding_masks, active_frames)  # (N_clips, Nv) bool, CPU
        self.maps = tuple(maps)
        self.temperature = temperature
        self.beta = beta
        self.avm = avm
        self.audio_swap = bool(audio_swap)
        self.swap_seed = int(swap_seed)
        self._gen = torch.Generator().manual_seed(self.swap_seed)
        self.track_clips = {int(c) for c in track_clips}
        self.n_tasks = n_tasks
        self.name = name
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self._buf: Dict[str, Dict[int, Dict[str, List[Tensor]]]] = {}
        self._tracked_now: Dict[int, Dict[str, List[float]]] = {}
        self._n_trained = 0
        self._in_train_exp = False
        # stream -> row key (str) -> map -> stat -> {task (str): value}
        self._rows: Dict[str, Dict[str, Dict[str, Dict[str, Dict[str, float]]]]] = {}
        # row key (str) -> clip id (str) -> map -> (Nv,) list
        self._tracked: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
        self._last_stream: Optional[str] = None
        self._last: Dict[str, float] = {}

    def result(self) -> Dict[str, float]:
        return dict(self._last)

    def __str__(self) -> str:
        return self.name

    _STATE = ("_n_trained", "_rows", "_tracked", "_last_stream", "_last")

    def state_dict(self) -> Dict[str, Any]:
        """Matrices, tracked maps and the experience count (plain containers, string keys)."""
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.reset()
        for k in self._STATE:
            setattr(self, k, state[k])

    # ------------------------------------------------------------------ callbacks
    def before_training(self, strategy: Any) -> None:
        self._in_train_exp = False

    def before_training_exp(self, strategy: Any) -> None:
        self._in_train_exp = True

    def after_training_exp(self, strategy: Any) -> None:
        self._in_train_exp = False
        self._n_trained += 1

    def before_eval(self, strategy: Any) -> None:
        self._buf = {}
        self._tracked_now = {}
        self._gen = torch.Generator().manual_seed(self.swap_seed)  # same derangements at every eval

    def _find_avm(self, strategy: Any) -> Optional[torch.nn.Module]:
        if self.avm is not None:
            return self.avm
        for p in getattr(strategy, "plugins", []):
            avm = getattr(p, "avm", None)
            if isinstance(avm, torch.nn.Module):
                return avm
        return None

    @torch.no_grad()
    def after_eval_iteration(self, strategy: Any) -> None:
        super().after_eval_iteration(strategy)
        ids = strategy.mb_clip_id.detach().long().cpu()
        if ids.numel() == 0 or int(ids.max()) >= self._gt.shape[0] or int(ids.min()) < 0:
            raise ValueError(f"LocalizationMetrics: clip ids {int(ids.min())}..{int(ids.max())} fall outside the "
                             f"{self._gt.shape[0]} clips of the sounding masks (masks of another benchmark?)")
        gt = self._gt[ids]
        model = strategy.model
        audio, video = strategy.mb_audio_raw, strategy.mb_video_raw
        n = audio.shape[0]
        perm = derangement(n, self._gen).to(audio.device) if self.audio_swap and n >= 2 else None
        auto = strategy.autocast() if hasattr(strategy, "autocast") else contextlib.nullcontext()
        maps: Dict[str, Tensor] = {}
        swaps: Dict[str, Tensor] = {}
        with auto:
            if "cosine" in self.maps:
                tau = float(model.config.temperature) if self.temperature is None else self.temperature
                tok_a, tok_v = unimodal_tokens(model, audio, video)
                maps["cosine"] = map_to_importance(cosine_from_tokens(tok_a, tok_v), tau)
                if perm is not None:
                    swaps["cosine"] = map_to_importance(cosine_from_tokens(tok_a, tok_v, perm), tau)
            avm = self._find_avm(strategy) if "avm" in self.maps else None
            if avm is not None:
                maps["avm"] = avm_importance(model, avm, audio, video, self.beta)[1]
                if perm is not None:
                    swaps["avm"] = avm_importance(model, avm, audio[perm], video, self.beta)[1]
            if "intensity" in self.maps:
                maps["intensity"] = intensity_map(video, model.config.patch_size)
        task = int(strategy.experience.current_experience)
        buf = self._buf.setdefault(_stream_name(strategy.experience), {}).setdefault(task, {})
        g = gt.float()
        keep = gt.any(dim=1)
        buf.setdefault("chance", []).append((g.sum(1) / g.shape[1])[keep])
        for kind, imp, suffix in [*((k, m, "") for k, m in maps.items()), *((k, m, "_swap") for k, m in swaps.items())]:
            imp = imp.float().cpu()
            if imp.shape != gt.shape:
                raise ValueError(f"LocalizationMetrics: the {kind} map has {imp.shape[1]} patches, the sounding "
                                 f"masks {gt.shape[1]}; build the masks for this model's input shape")
            share = (imp * g).sum(1) / imp.sum(1).clamp_min(1e-12)
            buf.setdefault(f"{kind}/share{suffix}", []).append(share[keep])
            buf.setdefault(f"{kind}/auc{suffix}", []).append(auc_rows(imp, gt)[keep])
            if suffix:
                continue
            for row, cid in enumerate(ids.tolist()):
                if cid in self.track_clips:
                    self._tracked_now.setdefault(cid, {})[kind] = imp[row].tolist()

    def after_eval(self, strategy: Any) -> List[MetricValue]:
        x = int(getattr(getattr(strategy, "clock", None), "train_iterations", 0) or 0)
        values: List[MetricValue] = []
        row = None if self._in_train_exp else (str(self._n_trained - 1) if self._n_trained else _INIT)
        for stream, per_task in self._buf.items():
            scores = self._finish(per_task)  # map -> stat -> {task: value}
            self._last_stream = stream
            if row is not None:
                entry = self._rows.setdefault(stream, {}).setdefault(row, {})
                for kind, stats in scores.items():
                    for stat, by_task in stats.items():
                        entry.setdefault(kind, {}).setdefault(stat, {}).update({str(t): v for t, v in by_task.items()})
            values += self._values(stream, scores, row, x)
        if row is not None and self._tracked_now:
            self._tracked.setdefault(row, {}).update({str(c): m for c, m in self._tracked_now.items()})
        self._buf, self._tracked_now = {}, {}
        for mv in values:
            self._last[mv.name] = mv.value
        return values

    # ------------------------------------------------------------------ computation
    def _finish(self, per_task: Dict[int, Dict[str, List[Tensor]]]) -> Dict[str, Dict[str, Dict[int, float]]]:
        out: Dict[str, Dict[str, Dict[int, float]]] = {}
        for task, parts in sorted(per_task.items()):
            chance_all = torch.cat(parts["chance"])
            if chance_all.numel() == 0:
                continue  # no clip of this task has ground truth
            chance = float(chance_all.mean())
            out.setdefault("chance", {}).setdefault("chance", {})[task] = chance
            for kind in MAPS:
                if f"{kind}/share" not in parts:
                    continue
                stats = out.setdefault(kind, {})
                for suffix in ("", "_swap"):
                    if f"{kind}/share{suffix}" not in parts:
                        continue
                    share = float(torch.cat(parts[f"{kind}/share{suffix}"]).mean())
                    auc = torch.cat(parts[f"{kind}/auc{suffix}"])
                    auc = auc[~torch.isnan(auc)]
                    stats.setdefault(f"share{suffix}", {})[task] = share
                    stats.setdefault(f"auc{suffix}", {})[task] = float(auc.mean()) if auc.numel() else float("nan")
                stats.setdefault("lift", {})[task] = stats["share"][task] / chance
        return out

    def _values(self, stream: str, scores: Dict[str, Dict[str, Dict[int, float]]], row: Optional[str],
                x: int) -> List[MetricValue]:
        values: List[MetricValue] = []
        base = f"/eval_phase/{stream}_stream"

        def emit(metric: str, value: float, task: Optional[int] = None) -> None:
            if value is None or not math.isfinite(value):
                return
            suffix = "" if task is None else f"/Task{task:03}"
            values.append(MetricValue(self, f"{self.name}_{metric}{base}{suffix}", float(value), x))

        for kind, stats in scores.items():
            for stat, by_task in stats.items():
                metric = "Chance" if kind == "chance" else f"{kind}_{_TAGS[stat]}"
                for t, v in by_task.items():
                    emit(metric, v, t)
                if by_task:
                    emit(metric, float(np.mean(list(by_task.values()))))
        if row is not None and row != _INIT:
            for kind in self.maps:
                for stat, tag in (("share", "Share"), ("auc", "AUC"), ("share_swap", "ShareSwap")):
                    m = self.matrix(kind, stat, stream)
                    if m.size == 0 or np.all(np.isnan(m)):
                        continue
                    emit(f"{kind}_A_{tag}", average_accuracy(m))
                    emit(f"{kind}_F_{tag}", localization_forgetting(m))
        return values

    # ------------------------------------------------------------------ accessors
    @property
    def n_trained(self) -> int:
        return self._n_trained

    def _stream(self, stream: Optional[str]) -> str:
        if stream is None:
            if self._last_stream is None:
                raise ValueError("LocalizationMetrics: nothing has been evaluated yet")
            return self._last_stream
        if stream not in self._rows:
            raise ValueError(f"LocalizationMetrics: stream {stream!r} has no rows; known: {sorted(self._rows)}")
        return stream

    def matrix(self, kind: str = "cosine", stat: str = "share", stream: Optional[str] = None) -> np.ndarray:
        """``(T_trained, T_tasks)``: entry ``[t, i]`` is ``stat`` of map ``kind`` on task ``i``'s clips
        after training experience ``t`` (``NaN`` where unknown). ``stat="chance"`` ignores ``kind``.

        Args:
            kind: one of :data:`MAPS`. stat: one of :data:`STATS`. stream: default the last evaluated.
        """
        if kind not in MAPS:
            raise ValueError(f"kind must be one of {MAPS}, got {kind!r}")
        if stat not in STATS:
            raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
        rows = self._rows.get(self._stream(stream), {})
        kind = "chance" if stat == "chance" else kind
        idx = sorted(int(r) for r in rows if r != _INIT)
        n_rows = idx[-1] + 1 if idx else 0
        cols = [int(t) for r in rows.values() for st in r.values() for t in st.get(stat, {})]
        n_cols = max([self.n_tasks or 0, *(c + 1 for c in cols)])
        m = np.full((n_rows, n_cols), np.nan)
        for r in idx:
            for t, v in rows[str(r)].get(kind, {}).get(stat, {}).items():
                m[r, int(t)] = v
        return m

    def forgetting(self, kind: str = "cosine", stat: str = "share", stream: Optional[str] = None) -> float:
        """Textbook forgetting of :meth:`matrix` (``NaN`` before the second task)."""
        return localization_forgetting(self.matrix(kind, stat, stream))

    def tracked_maps(self, row: Union[int, str] = -1) -> Dict[int, Dict[str, Tensor]]:
        """The maps of the tracked clips at a row: ``{clip id: {map: (Nv,) tensor}}``.

        Args:
            row: a row index (negative counts from the last), or ``"init"``.
        """
        keys = sorted((int(k) for k in self._tracked if k != _INIT))
        if isinstance(row, int):
            if not keys:
                return {}
            rows = list(range(keys[-1] + 1))
            try:
                key = str(rows[row])
            except IndexError:
                raise ValueError(f"row {row} out of range; rows 0..{keys[-1]} exist") from None
        else:
            key = str(row)
        return {int(c): {k: torch.tensor(v) for k, v in m.items()} for c, m in self._tracked.get(key, {}).items()}

    def plot_tracked(
        self, clip_id: int, frames: Tensor, gt_mask: Optional[Tensor] = None, rows: Sequence[Union[int, str]] = (0, -1),
        patch_size: int = 16, title: Optional[str] = None,
    ) -> Optional[Figure]:
        """The kept maps of one tracked clip at chosen rows, one figure row per (map, row), grouped
        by map so that a map's change over the stream reads down (paper Fig. 2, 7 and 14).

        Args:
            clip_id: a clip of ``track_clips``.
            frames: ``(n, 3, H, W)`` its frames (uint8 or [0, 1] float).
            gt_mask: optional ``(Nv,)`` bool sounding patches, outlined in white.
            rows: rows (training experiences; negative from the last) or ``"init"``.
            patch_size: the model's patch size. title: figure title.

        Returns:
            The figure, or ``None`` when nothing was kept for that clip at those rows.
        """
        per_row = {r: self.tracked_maps(r).get(int(clip_id), {}) for r in rows}
        panels: Dict[str, Tensor] = {}
        for kind in MAPS:
            if kind == "intensity":  # the same at every row: shown once
                first = next((m[kind] for m in per_row.values() if kind in m), None)
                if first is not None:
                    panels[_LABELS[kind]] = first
                continue
            for r, maps in per_row.items():
                if kind in maps:
                    after = "before training" if r == _INIT else f"after task {self._row_index(r) + 1}"
                    panels[f"{_LABELS[kind]}\n{after}"] = maps[kind]
        if not panels:
            return None
        return plot_attention_rows(frames, panels, patch_size, title=title, gt_mask=gt_mask)

    def _row_index(self, row: Union[int, str]) -> int:
        keys = sorted(int(k) for k in self._tracked if k != _INIT)
        if isinstance(row, int) and row < 0 and keys:
            return keys[-1] + 1 + row
        return int(row)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: per stream, per map, the matrices of every statistic, A and F."""
        streams: Dict[str, Any] = {}
        for stream in self._rows:
            block: Dict[str, Any] = {"chance": [[_none_if_nan(x) for x in r] for r in self.matrix("cosine", "chance", stream)]}
            for kind in self.maps:
                mats = {stat: self.matrix(kind, stat, stream) for stat in STATS if stat != "chance"}
                if all(np.all(np.isnan(m)) for m in mats.values()):
                    continue
                entry: Dict[str, Any] = {
                    "matrices": {s: [[_none_if_nan(x) for x in r] for r in m] for s, m in mats.items()},
                }
                for stat in ("share", "auc", "share_swap", "auc_swap"):
                    m = mats[stat]
                    ok = m.size and not np.all(np.isnan(m))
                    entry[f"A_{stat}"] = _none_if_nan(average_accuracy(m)) if ok else None
                    entry[f"F_{stat}"] = _none_if_nan(localization_forgetting(m)) if ok else None
                block[kind] = entry
            init = self._rows[stream].get(_INIT)
            block["init"] = init
            streams[stream] = block
        return {"n_trained": self._n_trained, "maps": list(self.maps), "streams": streams,
                "tracked_clips": sorted(self.track_clips)}
