"""``avalanche-av compare``: several methods on one stream, the same seeds, one table.

:func:`compare_strategies` runs every (method, seed) pair with :func:`~avalanche_av.experiment.run_experiment`
(each into ``<out>/<method>/seed<k>``), measures each run's wall time and peak memory, and
aggregates the final A and F over the seeds into the layout of the STELLA paper's Table 1:
A↑ and F↓ for R@1, R@5, R@10 and their average, audio→video and video→audio, mean ± std over
seeds, one row per method. It writes, in ``<out>``:

* ``compare.json``: the single source. Per-run metrics and accuracy matrices, the per-method
  summary, the cost of each run. The Markdown, the CSV and the plots are drawn from it
  (:func:`write_reports` redraws them from a loaded ``compare.json``);
* ``compare.md``: the two Table-1 blocks, best value of each column in bold;
* ``compare.csv``: one row per (method, direction), mean and std of every column;
* ``compare_bars.png``: A and F (average over R@K) per method, both directions, error bars = std;
* ``heatmaps/<method>.png``: the accuracy matrix (R@5 by default), mean over seeds, both directions;
* when the runs recorded them (``RunConfig.diagnostics``, the default): a localization /
  modality-gap / diagnostics table in ``compare.md``, ``modality_gap.png``,
  ``localization_over_tasks.png`` and ``training_diagnostics.png``; each run's own folder
  holds its attention maps (``attention/``).

It is resumable: a run whose ``results.json`` holds the same settings is read back, never
recomputed; a run with only a checkpoint continues from it; a folder holding a run made with
other settings is refused before anything runs. See ``docs/compare.md``.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from avalanche.core import SupervisedPlugin

from .experiment import RunConfig, run_experiment, settings_diff
from .training.distributed import is_main_process, torchrun_env

__all__ = [
    "compare_strategies",
    "plan_runs",
    "assemble",
    "best_methods",
    "PeakMemory",
    "run_record",
    "evidence_record",
    "summarize",
    "render_markdown",
    "render_csv",
    "write_reports",
    "run_folder",
    "trains_once",
    "reference_kind",
    "PROGRESS_STYLES",
    "FORGETTING",
]

#: ``progress`` values: ``compact`` = a bar over runs and a bar over tasks × epochs;
#: ``full`` = the bar over runs plus Avalanche's InteractiveLogger inside each run; ``none``.
PROGRESS_STYLES = ("compact", "full", "none")
#: ``forgetting`` values: the textbook F or the paper's variant (docs/metrics.md).
FORGETTING = ("F", "F_paper")
DIRECTIONS = ("a2v", "v2a")
_DIRECTION_NAMES = {"a2v": "Audio → Video", "v2a": "Video → Audio"}
_STATUS = ("ran", "resumed", "reused")
_FORMAT = "avalanche-av compare v1"


# --------------------------------------------------------------------------- methods
def _stream_options(cfg: dict) -> str:
    """``", image_size=128, object_cells=2"`` for a synthetic stream with ``--synthetic`` overrides."""
    opts = cfg.get("synthetic_options") or {}
    return "".join(f", {k}={v}" for k, v in sorted(opts.items()))


def trains_once(method: str) -> bool:
    """Whether ``method`` trains once on all tasks (its plugin's ``trains_once``): its F is not a
    measurement (the accuracy-matrix rows are identical by construction)."""
    from .training.strategies import STRATEGIES  # noqa: PLC0415

    spec = STRATEGIES.get(method)
    return bool(spec is not None and getattr(spec.plugin_cls, "trains_once", False))


def reference_kind(method: str) -> Optional[str]:
    """``"joint"`` or ``"cumulative"`` for the reference points that train on all (past) data,
    which the tables show but do not rank; ``None`` for continual methods."""
    from .training.joint import CumulativePlugin  # noqa: PLC0415
    from .training.strategies import STRATEGIES  # noqa: PLC0415

    if trains_once(method):
        return "joint"
    spec = STRATEGIES.get(method)
    cls = spec.plugin_cls if spec is not None else None
    if isinstance(cls, type) and issubclass(cls, CumulativePlugin):
        return "cumulative"
    return None


def run_folder(out_dir: "str | Path", method: str, seed: int) -> Path:
    """Where run (method, seed) writes: ``<out>/<method>/seed<seed>`` (``+`` spelled ``plus``)."""
    return Path(out_dir) / method.replace("+", "plus") / f"seed{seed}"


# --------------------------------------------------------------------------- planning
@dataclasses.dataclass
class PlannedRun:
    """One (method, seed): its config and what is on disk for it.

    ``state`` is ``"finished"`` (a ``results.json`` with the same settings), ``"partial"`` (a
    checkpoint with the same settings, no results) or ``"new"``.
    """

    method: str
    seed: int
    cfg: RunConfig
    state: str


def _checkpoint_config(path: Path) -> Optional[dict]:
    """The run config stored in a checkpoint, read without loading its tensors (memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old-format or corrupt file: let run_experiment's resume report it
        from .training.checkpoint import read_checkpoint  # noqa: PLC0415

        state = read_checkpoint(path)
    stored = state.get("extra", {}).get("run_config") if isinstance(state, dict) else None
    return json.loads(stored) if isinstance(stored, str) else None


def plan_runs(base: RunConfig, strategies: Sequence[str], seeds: Sequence[int],
              method_options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> List[PlannedRun]:
    """Every (method, seed) config, validated, with what is already on disk; nothing runs.

    Args:
        base: settings shared by every run (its ``strategy``, ``seed``, ``out_dir`` are replaced).
        strategies: registry names, in table order.
        seeds: the seeds every method runs with.
        method_options: method -> its plugin options (default: ``base.strategy_options`` for all).

    Raises:
        ValueError: an empty or repeated name or seed, an unknown method (the message lists the
            valid ones), a bad option, or a run folder holding a run or checkpoint made with
            other settings (one message listing every such folder).
    """
    from .training import list_strategies  # noqa: PLC0415

    if not strategies:
        raise ValueError("--strategies: give at least one method")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    for what, items in (("--strategies", strategies), ("--seeds", seeds)):
        dup = sorted({str(x) for x in items if list(items).count(x) > 1})
        if dup:
            raise ValueError(f"{what} lists {', '.join(dup)} more than once")
    unknown = [s for s in strategies if s not in list_strategies()]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r}; valid strategies: {', '.join(list_strategies())}")
    plans: List[PlannedRun] = []
    conflicts: List[str] = []
    for method in strategies:
        opts = dict(base.strategy_options) if method_options is None else dict(method_options.get(method, {}))
        for seed in seeds:
            cfg = dataclasses.replace(base, strategy=method, seed=int(seed), strategy_options=opts,
                                      out_dir=str(run_folder(base.out_dir, method, seed)), resume=True)
            if seed == seeds[0]:
                cfg.validate()  # names, types, ranges; the seed changes nothing validate checks
            out = Path(cfg.out_dir)
            state = "new"
            results, ckpt = out / "results.json", out / "checkpoint.pt"
            if results.is_file():
                try:
                    saved = json.loads(results.read_text()).get("config")
                except (OSError, ValueError):
                    saved = None
                diff = settings_diff(saved, cfg) if isinstance(saved, dict) else ["no readable settings"]
                if diff:
                    conflicts.append(f"{out} ({'; '.join(diff)})")
                state = "finished"
            elif ckpt.is_file():
                saved = _checkpoint_config(ckpt)
                diff = settings_diff(saved, cfg) if isinstance(saved, dict) else ["no recorded settings"]
                if diff:
                    conflicts.append(f"{out} ({'; '.join(diff)})")
                state = "partial"
            plans.append(PlannedRun(method, int(seed), cfg, state))
    if conflicts:
        raise ValueError(
            f"compare: {len(conflicts)} run folder(s) hold results made with other settings: "
            f"{', '.join(conflicts)}; choose another --out or remove those folders"
        )
    return plans


# --------------------------------------------------------------------------- measuring
def _proc_status_kb(field: str) -> Optional[int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


class PeakMemory:
    """Peak resident memory (and peak CUDA allocation) of the process during a ``with`` block.

    Runs share one process, so the process-lifetime peak (``ru_maxrss``) would carry one run's
    peak into the next. On Linux the kernel's high-water mark is reset at entry (writing ``5``
    to ``/proc/self/clear_refs``) and read back as ``VmHWM`` at exit: the peak of this block
    alone (``method="vmhwm"``). Elsewhere, or when the reset is refused, it falls back to
    ``ru_maxrss`` (``method="ru_maxrss"``: the process peak so far, an upper bound). On CUDA the
    allocator's peak is reset at entry and ``torch.cuda.max_memory_allocated`` read at exit.

    Attributes (after exit): ``peak_rss_mb``, ``start_rss_mb`` (``None`` where unknown),
    ``peak_cuda_mb`` (``None`` without CUDA), ``method``.
    """

    def __init__(self, device: Optional[str] = None) -> None:
        self.device = device
        self.peak_rss_mb: Optional[float] = None
        self.start_rss_mb: Optional[float] = None
        self.peak_cuda_mb: Optional[float] = None
        self.method = "ru_maxrss"
        self._cuda: Optional[torch.device] = None

    def _cuda_device(self) -> Optional[torch.device]:
        if not torch.cuda.is_available():
            return None
        dev = torch.device(self.device) if self.device else torch.device("cuda")
        if dev.type != "cuda":
            return None
        return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "vmhwm" if _proc_status_kb("VmHWM") is not None else "ru_maxrss"
        except OSError:
            self.method = "ru_maxrss"
        rss = _proc_status_kb("VmRSS")
        self.start_rss_mb = rss / 1024 if rss is not None else None
        self._cuda = self._cuda_device()
        if self._cuda is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda)
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "vmhwm":
            self.peak_rss_mb = _proc_status_kb("VmHWM") / 1024
        else:
            # ru_maxrss is in KiB on Linux and in bytes on macOS.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_rss_mb = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
        if self._cuda is not None:
            self.peak_cuda_mb = torch.cuda.max_memory_allocated(self._cuda) / 2**20


# --------------------------------------------------------------------------- progress
class _EpochBar(SupervisedPlugin):
    """A one-line progress bar over one run's tasks × epochs (the compact display).

    Its total is read from the strategy at the first experience (the stream's length times
    ``train_epochs``), so it is right for real benchmarks whose task count the config does not
    state. It holds no state, so it never enters a checkpoint.
    """

    def __init__(self, bar, label: str) -> None:
        super().__init__()
        self.bar, self.label = bar, label

    def _goto(self, n: int) -> None:
        self.bar.n = n
        self.bar.refresh()

    def before_training_exp(self, strategy, **kwargs):
        exp = strategy.experience
        t = int(exp.current_experience)
        stream = getattr(exp, "origin_stream", None)
        n_tasks = len(stream) if stream is not None else t + 1
        epochs = int(strategy.train_epochs)
        self.bar.total = n_tasks * epochs
        self.bar.set_description(f"{self.label} task {t + 1}/{n_tasks}", refresh=False)
        self._goto(t * epochs)  # a resumed run starts past the tasks trained before

    def after_training_epoch(self, strategy, **kwargs):
        loss = getattr(strategy, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        self.bar.update(1)

    def after_training_exp(self, strategy, **kwargs):
        # A method that skips training (multitask after its joint pass) jumps to the boundary.
        self._goto((int(strategy.experience.current_experience) + 1) * int(strategy.train_epochs))


def _tqdm(**kw):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(**kw)


# --------------------------------------------------------------------------- records
def run_record(results: Mapping[str, Any], ks: Sequence[int], measured: Optional[Mapping[str, Any]] = None,
               status: str = "ran") -> Dict[str, Any]:
    """The compare record of one run, from its ``results.json`` content, in percent.

    Args:
        results: a run's ``results.json`` (``run_experiment``'s summary).
        ks: the R@K values to read.
        measured: ``wall_seconds``, ``peak_rss_mb``, ``start_rss_mb``, ``peak_cuda_mb``,
            ``rss_method`` of the run (``None`` entries where unknown).
        status: ``ran``, ``resumed`` (continued from a checkpoint; its cost covers the last
            process only) or ``reused`` (read back; cost from the earlier compare).

    Returns:
        ``{"metrics": {dir: {"R@k": {"A", "F", "F_paper"}}}, "matrices": {dir: {"R@k": (R, C)
        nested list}}, "wall_seconds", ..., "status"}``; scores in percent, ``None`` for NaN.
    """
    if status not in _STATUS:
        raise ValueError(f"status must be one of {_STATUS}, got {status!r}")
    block = results["retrieval"]["streams"]["test"]

    def pct(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * float(v)

    metrics = {d: {f"R@{k}": {w: pct(block[w]["clip"][d][str(k)]) for w in ("A", "F", "F_paper")} for k in ks}
               for d in DIRECTIONS}
    matrices = {d: {f"R@{k}": [[pct(v) for v in row] for row in block["matrices"]["clip"][d][str(k)]] for k in ks}
                for d in DIRECTIONS}
    measured = dict(measured or {})
    return {
        "status": status,
        "metrics": metrics,
        "matrices": matrices,
        "evidence": evidence_record(results),
        "wall_seconds": measured.get("wall_seconds", results.get("wall_seconds")),
        "train_seconds": float(sum(results.get("train_seconds_per_experience", []) or [])),
        "peak_rss_mb": measured.get("peak_rss_mb"),
        "start_rss_mb": measured.get("start_rss_mb"),
        "peak_cuda_mb": measured.get("peak_cuda_mb"),
        "rss_method": measured.get("rss_method"),
        "skipped_steps": int((results.get("data") or {}).get("skipped_steps", 0) or 0),
    }


def _seen_means(m: Optional[Sequence[Sequence[Optional[float]]]]) -> Optional[List[Optional[float]]]:
    """Each row's mean over the tasks trained so far (columns ``0..t`` of row ``t``)."""
    if not m:
        return None
    out: List[Optional[float]] = []
    for t, row in enumerate(m):
        vals = [v for v in row[: t + 1] if v is not None and math.isfinite(v)]
        out.append(float(np.mean(vals)) if vals else None)
    return out


def evidence_record(results: Mapping[str, Any]) -> Dict[str, Any]:
    """What a run shows beyond retrieval, from its ``results.json``: the modality-gap matrix,
    localization (per map: A and F of the share, the audio-swap control, the per-row mean over
    seen tasks, chance) and the training diagnostics' per-experience means and history.
    Missing parts (a run without ``diagnostics``, a benchmark without ground truth) are absent."""
    ev: Dict[str, Any] = {}
    block = results["retrieval"]["streams"].get("test", {})
    gap = (block.get("matrices") or {}).get("modality_gap")
    if gap:
        ev["modality_gap"] = gap
        last = [v for v in gap[-1] if v is not None]
        ev["modality_gap_final"] = float(np.mean(last)) if last else None
    loc = (results.get("localization") or {}).get("streams", {}).get("test")
    if loc:
        chance = _seen_means(loc.get("chance"))
        maps: Dict[str, Any] = {}
        for kind in ("cosine", "avm", "intensity"):
            entry = loc.get(kind)
            if not isinstance(entry, dict):
                continue
            mats = entry.get("matrices", {})
            maps[kind] = {
                "A_share": entry.get("A_share"), "F_share": entry.get("F_share"),
                "A_share_swap": entry.get("A_share_swap"), "A_auc": entry.get("A_auc"),
                "seen_share": _seen_means(mats.get("share")),
                "first_share": (mats.get("share") or [[None]])[0][0],
            }
        ev["localization"] = {"maps": maps, "seen_chance": chance,
                              "A_chance": float(np.mean([c for c in chance if c is not None])) if chance else None}
    diags = results.get("diagnostics")
    if diags:
        per_exp: Dict[str, Dict[int, List[float]]] = {}
        for metric in diags.values():
            for rec in metric.get("history", []):
                for name, v in rec.get("values", {}).items():
                    per_exp.setdefault(name, {}).setdefault(int(rec["experience"]), []).append(float(v))
        ev["diagnostics"] = {
            "per_experience": {name: [float(np.mean(d[e])) for e in sorted(d)] for name, d in per_exp.items()},
            "history": diags,
        }
    return ev


def _stats(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    """Mean and sample std (ddof = 1; ``None`` for a single value) of the non-missing values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def summarize(runs: Mapping[str, Mapping[str, Mapping[str, Any]]], strategies: Sequence[str],
              ks: Sequence[int]) -> Dict[str, Any]:
    """Aggregate run records over seeds: the Table-1 numbers of every method.

    Args:
        runs: method -> seed (as a string) -> :func:`run_record`.
        strategies: table order.
        ks: the R@K values; ``"Avg"`` is each seed's mean over them, then aggregated.

    Returns:
        method -> ``{"seeds", "reference", "trains_once", dir: {"R@k" | "Avg": {"A" | "F" |
        "F_paper": {"mean", "std", "n"}}}, "matrix_mean": {dir: {"R@k": (R, C)}}, "cost": {...}}``.
        A method that trains once (multitask) gets ``None`` for F and F_paper: not measured.
    """
    out: Dict[str, Any] = {}
    cols = [f"R@{k}" for k in ks]
    for method in strategies:
        recs = [runs[method][s] for s in sorted(runs.get(method, {}), key=int)]
        once = trains_once(method)
        entry: Dict[str, Any] = {"seeds": sorted((int(s) for s in runs.get(method, {}))),
                                 "reference": reference_kind(method), "trains_once": once}
        for d in DIRECTIONS:
            block: Dict[str, Any] = {}
            for which in ("A", "F", "F_paper"):
                per_col = {c: [r["metrics"][d][c][which] for r in recs] for c in cols}
                per_seed_avg = []
                for i in range(len(recs)):
                    vals = [per_col[c][i] for c in cols]
                    per_seed_avg.append(None if any(v is None for v in vals) else float(np.mean(vals)))
                for c, vals in [*per_col.items(), ("Avg", per_seed_avg)]:
                    stats = _stats(vals)
                    if once and which != "A":
                        stats = {"mean": None, "std": None, "n": 0, "note": "not measured: trains once on all tasks"}
                    block.setdefault(c, {})[which] = stats
            entry[d] = block
        entry["matrix_mean"] = {}
        for d in DIRECTIONS:
            entry["matrix_mean"][d] = {}
            for c in cols:
                mats = [np.array(r["matrices"][d][c], dtype=np.float64) for r in recs if r["matrices"][d][c]]
                shapes = {m.shape for m in mats}
                if mats and len(shapes) == 1:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # a cell missing in every seed stays NaN
                        mean = np.nanmean(np.stack(mats), axis=0)
                    entry["matrix_mean"][d][c] = [[None if not math.isfinite(x) else float(x) for x in row]
                                                  for row in mean]
                else:
                    entry["matrix_mean"][d][c] = None
        walls = [r.get("wall_seconds") for r in recs]
        peaks = [r.get("peak_rss_mb") for r in recs]
        increases = [r["peak_rss_mb"] - r["start_rss_mb"] if r.get("peak_rss_mb") is not None
                     and r.get("start_rss_mb") is not None and r.get("rss_method") == "vmhwm" else None
                     for r in recs]
        cudas = [r.get("peak_cuda_mb") for r in recs]

        def _max(xs):
            xs = [x for x in xs if x is not None]
            return float(max(xs)) if xs else None

        entry["evidence"] = _summarize_evidence(recs)
        entry["cost"] = {
            "wall_seconds": _stats(walls),
            "wall_seconds_total": float(sum(x for x in walls if x is not None)),
            "peak_rss_mb_max": _max(peaks),
            "rss_increase_mb_max": _max(increases),
            "peak_cuda_mb_max": _max(cudas),
            "statuses": [r["status"] for r in recs],
        }
        out[method] = entry
    return out


def _summarize_evidence(recs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Mean ± std over seeds of the evidence scalars (localization A/F per map, the swap control,
    the final modality gap, the last experience's AVM accuracy and excluded share)."""
    evs = [r.get("evidence") or {} for r in recs]
    out: Dict[str, Any] = {"modality_gap_final": _stats([e.get("modality_gap_final") for e in evs])}
    kinds = sorted({k for e in evs for k in (e.get("localization") or {}).get("maps", {})})
    if kinds:
        out["localization"] = {"A_chance": _stats([(e.get("localization") or {}).get("A_chance") for e in evs])}
        for kind in kinds:
            got = [(e.get("localization") or {}).get("maps", {}).get(kind) or {} for e in evs]
            out["localization"][kind] = {key: _stats([g.get(key) for g in got])
                                         for key in ("A_share", "F_share", "A_share_swap", "A_auc", "first_share")}
    for name in ("AVM_Acc", "Excluded_v", "Excluded_a", "Loc_Share", "Loc_Chance"):
        last = [((e.get("diagnostics") or {}).get("per_experience", {}).get(name) or [None])[-1] for e in evs]
        first = [((e.get("diagnostics") or {}).get("per_experience", {}).get(name) or [None])[0] for e in evs]
        if any(v is not None for v in last):
            out.setdefault("diagnostics", {})[name] = {"first_task": _stats(first), "last_task": _stats(last)}
    return out


# --------------------------------------------------------------------------- reports
def _cols(data: Mapping[str, Any]) -> List[str]:
    return [f"R@{k}" for k in data["ks"]] + ["Avg"]


def best_methods(data: Mapping[str, Any], direction: str, col: str, which: str, decimals: int = 2) -> List[str]:
    """The ranked methods (reference rows excluded) with the best mean in one column: the highest
    A, the lowest F, compared at the printed precision (ties are all best)."""
    vals = {}
    for m in data["strategies"]:
        s = data["summary"][m]
        if s["reference"] is not None:
            continue
        v = s[direction][col][which]["mean"]
        if v is not None:
            vals[m] = round(v, decimals)
    if not vals:
        return []
    target = max(vals.values()) if which == "A" else min(vals.values())
    return [m for m, v in vals.items() if v == target]


def _num(v: float, decimals: int) -> str:
    # "+ 0.0" turns a rounded -0.0 (a tiny negative forgetting) into 0.0: no "-0.00" cells.
    return f"{round(v, decimals) + 0.0:.{decimals}f}"


def _fmt(stats: Mapping[str, Any], decimals: int = 2) -> str:
    if stats.get("mean") is None:
        return "—"
    text = _num(stats["mean"], decimals)
    if stats.get("std") is not None:
        text += f" ± {_num(stats['std'], decimals)}"
    return text


def _fmt_num(v: Optional[float], decimals: int) -> str:
    return "—" if v is None else _num(v, decimals)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The Table-1 layout as Markdown, from ``compare.json`` content: one block per direction,
    one row per method, A↑ / F↓ per R@K and their average (mean ± std over seeds, in %), best of
    each column in bold, then the time and peak memory of the runs."""
    which_f = data["forgetting"]
    f_name = "F (paper's variant)" if which_f == "F_paper" else "F (textbook)"
    cols = _cols(data)
    cuda = any(data["summary"][m]["cost"]["peak_cuda_mb_max"] is not None for m in data["strategies"])
    cfg = data["base_config"]
    lines = [
        f"# Comparison on {cfg['benchmark']} ({cfg['model']}), seeds {', '.join(map(str, data['seeds']))}",
        "",
        f"Zero-shot retrieval with the final model, in %: A↑ = mean over tasks after the last task, "
        f"F↓ = {f_name}; mean ± std (sample std) over {len(data['seeds'])} seed(s). Avg = mean over "
        f"{', '.join(cols[:-1])}. **Bold**: the best of each column (highest A, lowest F). "
        f"Reference rows (marked ‡: multitask, cumulative) train on all data seen or to come and are "
        f"not ranked; multitask trains once, so its F is not measured (—). "
        f"Time: mean wall-clock seconds per run. Peak RSS: the process's resident memory at its peak "
        f"during the run; +run: that peak minus the resident memory when the run started (the run's own "
        f"footprint); both the largest over seeds.",
        "",
    ]
    header = ["Method"] + [f"{c} {w}" for c in cols for w in ("A↑", "F↓")] + ["time/run (s)", "peak RSS (MB)",
                                                                              "+run (MB)"]
    if cuda:
        header.append("peak CUDA (MB)")
    for d in DIRECTIONS:
        best = {(c, w): set(best_methods(data, d, c, w)) for c in cols for w in ("A", which_f)}
        lines += [f"## {_DIRECTION_NAMES[d]}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for m in data["strategies"]:
            s = data["summary"][m]
            name = m + (" ‡" if s["reference"] is not None else "")
            cells = [name]
            for c in cols:
                for w in ("A", which_f):
                    text = _fmt(s[d][c][w])
                    cells.append(f"**{text}**" if m in best[(c, w)] and text != "—" else text)
            cost = s["cost"]
            cells += [_fmt_num(cost["wall_seconds"]["mean"], 1), _fmt_num(cost["peak_rss_mb_max"], 0),
                      _fmt_num(cost["rss_increase_mb_max"], 0)]
            if cuda:
                cells.append(_fmt_num(cost["peak_cuda_mb_max"], 0))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += _evidence_markdown(data)
    notes = []
    for m in data["strategies"]:
        st = data["summary"][m]["cost"]["statuses"]
        if "resumed" in st:
            notes.append(f"{m}: {st.count('resumed')} run(s) continued from a checkpoint; their time and memory "
                         f"cover the last process only")
        if "reused" in st:
            notes.append(f"{m}: {st.count('reused')} run(s) read back from an earlier compare")
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def _evidence_markdown(data: Mapping[str, Any]) -> List[str]:
    """The localization / modality-gap / diagnostics table, when the runs recorded them."""
    summ = data["summary"]
    has_loc = any("localization" in summ[m].get("evidence", {}) for m in data["strategies"])
    has_gap = any((summ[m].get("evidence", {}).get("modality_gap_final") or {}).get("mean") is not None
                  for m in data["strategies"])
    if not (has_loc or has_gap):
        return []

    def f3(st: Optional[Mapping[str, Any]]) -> str:
        return _fmt(st, 3) if st else "—"

    lines = [
        "## Localization, modality gap and training diagnostics", "",
        "Share of each video map on the true sounding patches of the retrieval clips (ground truth of the "
        "synthetic stream), A = mean over tasks after the last task, F = its forgetting (mean ± std over seeds). "
        "Cosine: the audio→video embedding cosine map (every method); swapped: the same map with another clip's "
        "audio (a map that follows the sound drops); AVM: STELLA's AVM importance. Chance: a uniform map's "
        "share. Modality gap: distance between the mean audio and mean video embedding, final model, mean over "
        "tasks. AVM acc. and excluded share: training diagnostics averaged over the last task's steps.",
        "",
        "| Method | cosine A | cosine F | cosine A, swapped audio | AVM A | AVM F | AVM A, swapped audio | chance "
        "| modality gap | AVM acc. (last task) | excluded video share (last task) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in data["strategies"]:
        ev = summ[m].get("evidence", {})
        loc = ev.get("localization", {})
        cos, avm = loc.get("cosine", {}), loc.get("avm", {})
        diag = ev.get("diagnostics", {})
        cells = [m, f3(cos.get("A_share")), f3(cos.get("F_share")), f3(cos.get("A_share_swap")),
                 f3(avm.get("A_share")), f3(avm.get("F_share")), f3(avm.get("A_share_swap")),
                 f3(loc.get("A_chance")), f3(ev.get("modality_gap_final")),
                 f3((diag.get("AVM_Acc") or {}).get("last_task")), f3((diag.get("Excluded_v") or {}).get("last_task"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def render_csv(data: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (method, direction): mean and std (in %) of A, F and F_paper per R@K and Avg,
    the number of seeds, and the cost columns; from ``compare.json`` content."""
    rows = []
    for m in data["strategies"]:
        s = data["summary"][m]
        for d in DIRECTIONS:
            row: Dict[str, Any] = {"method": m, "direction": d, "reference": s["reference"] or "",
                                   "n_seeds": len(s["seeds"])}
            for c in _cols(data):
                for w in ("A", "F", "F_paper"):
                    row[f"{c} {w} mean"] = s[d][c][w]["mean"]
                    row[f"{c} {w} std"] = s[d][c][w]["std"]
            row["wall_seconds_mean"] = s["cost"]["wall_seconds"]["mean"]
            row["wall_seconds_total"] = s["cost"]["wall_seconds_total"]
            row["peak_rss_mb_max"] = s["cost"]["peak_rss_mb_max"]
            row["rss_increase_mb_max"] = s["cost"]["rss_increase_mb_max"]
            row["peak_cuda_mb_max"] = s["cost"]["peak_cuda_mb_max"]
            rows.append(row)
    return pd.DataFrame(rows)


def _save(fig, path: Path, dpi: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def write_reports(data: Mapping[str, Any], out_dir: "str | Path", heatmap_k: int = 5) -> Dict[str, Any]:
    """Write ``compare.md``, ``compare.csv``, ``compare_bars.png`` and ``heatmaps/*.png`` from
    ``compare.json`` content (``data``); returns the paths written."""
    from .evaluation.plots import plot_accuracy_matrices, plot_method_bars  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Any] = {}
    paths["markdown"] = out / "compare.md"
    paths["markdown"].write_text(render_markdown(data))
    paths["csv"] = out / "compare.csv"
    render_csv(data).to_csv(paths["csv"], index=False)

    methods = list(data["strategies"])
    which_f = data["forgetting"]
    f_label = "F↓ (paper's variant)" if which_f == "F_paper" else "F↓"
    panels: Dict[str, Dict[str, Any]] = {}
    for which, label in (("A", "A↑"), (which_f, f_label)):
        panels[f"{label}, mean over {', '.join(_cols(data)[:-1])} (%)"] = {
            _DIRECTION_NAMES[d].replace(" → ", "→"): (
                [data["summary"][m][d]["Avg"][which]["mean"] for m in methods],
                [data["summary"][m][d]["Avg"][which]["std"] for m in methods],
            )
            for d in DIRECTIONS
        }
    cfg = data["base_config"]
    fig = plot_method_bars(
        methods, panels,
        title=f"{cfg['benchmark']}{_stream_options(cfg)} ({cfg['model']}): A and F per method, mean ± std over "
              f"{len(data['seeds'])} seed(s)",
        xlabel="retrieval score (%)",
    )
    paths["bars"] = _save(fig, out / "compare_bars.png")

    k = f"R@{heatmap_k}" if heatmap_k in data["ks"] else f"R@{data['ks'][0]}"
    paths["heatmaps"] = []
    for m in methods:
        s = data["summary"][m]
        mats = [s["matrix_mean"][d][k] for d in DIRECTIONS]
        if any(x is None or not x for x in mats):
            continue
        fig = plot_accuracy_matrices(
            {f"{_DIRECTION_NAMES[d]}, {k} (%)": np.array([[np.nan if v is None else v for v in row] for row in mat],
                                                          dtype=np.float64)
             for d, mat in zip(DIRECTIONS, mats)},
            title=f"{m}: accuracy matrix, mean over {len(s['seeds'])} seed(s)", fmt="{:.1f}",
        )
        paths["heatmaps"].append(_save(fig, out / "heatmaps" / f"{m.replace('+', 'plus')}.png"))
    paths.update(_evidence_plots(data, out))
    return paths


def _evidence_plots(data: Mapping[str, Any], out: Path) -> Dict[str, Path]:
    """``modality_gap.png`` (paper Fig. 6), ``localization_over_tasks.png`` (cosine map of every
    method, AVM map of the STELLA family, chance dashed) and ``training_diagnostics.png`` (the
    first seed of each method with an AVM), when the runs recorded them."""
    from .evaluation.plots import (  # noqa: PLC0415
        plot_localization_over_tasks,
        plot_modality_gap,
        plot_training_diagnostics,
    )

    paths: Dict[str, Path] = {}
    gaps, loc_curves, chance, diags = {}, {}, None, {}
    for m in data["strategies"]:
        runs = [data["runs"][m][s] for s in sorted(data["runs"].get(m, {}), key=int)]
        evs = [r.get("evidence") or {} for r in runs]
        mats = [np.array([[np.nan if v is None else v for v in row] for row in e["modality_gap"]], dtype=np.float64)
                for e in evs if e.get("modality_gap")]
        if mats and len({x.shape for x in mats}) == 1 and not trains_once(m):
            gaps[m] = np.stack(mats)
        for kind, suffix in (("cosine", ""), ("avm", " (AVM)")):
            curves = [(e.get("localization") or {}).get("maps", {}).get(kind, {}).get("seen_share") for e in evs]
            curves = [[np.nan if v is None else v for v in c] for c in curves if c]
            if curves and len({len(c) for c in curves}) == 1 and not trains_once(m):
                loc_curves[f"{m}{suffix}"] = np.array(curves, dtype=np.float64)
        for e in evs:
            if chance is None and (e.get("localization") or {}).get("seen_chance"):
                chance = [np.nan if v is None else v for v in e["localization"]["seen_chance"]]
        hist = next(((e.get("diagnostics") or {}).get("history") for e in evs), None)
        if hist and any("AVM_Acc" in rec.get("values", {}) for b in hist.values() for rec in b.get("history", [])):
            diags[m] = hist
    n_seeds = len(data["seeds"])
    if gaps:
        fig = plot_modality_gap(gaps, which="seen", title=f"Modality gap after each task (mean over seen tasks, "
                                                          f"{n_seeds} seed(s))")
        paths["modality_gap"] = _save(fig, out / "modality_gap.png")
    if loc_curves:
        groups = {"audio→video embedding cosine map": [n for n in loc_curves if not n.endswith(" (AVM)")],
                  "STELLA's AVM importance map": [n for n in loc_curves if n.endswith(" (AVM)")]}
        fig = plot_localization_over_tasks(loc_curves, chance=chance, groups={k: v for k, v in groups.items() if v},
                                           title=f"Localization on the tasks seen so far ({n_seeds} seed(s); "
                                                 f"±1 std band)")
        paths["localization"] = _save(fig, out / "localization_over_tasks.png")
    if diags:
        fig = plot_training_diagnostics(diags, title="Training diagnostics (first seed)")
        if fig is not None:
            paths["diagnostics"] = _save(fig, out / "training_diagnostics.png")
    return paths


def assemble(base: RunConfig, strategies: Sequence[str], seeds: Sequence[int],
             runs: Mapping[str, Mapping[str, Any]], *, forgetting: str = "F",
             method_options: Optional[Mapping[str, Mapping[str, Any]]] = None, executed: int = 0) -> Dict[str, Any]:
    """The ``compare.json`` content from run records (method -> seed string -> :func:`run_record`)."""
    if forgetting not in FORGETTING:
        raise ValueError(f"forgetting must be one of {FORGETTING}, got {forgetting!r}")
    return {
        "format": _FORMAT,
        "unit": "%",
        "base_config": dataclasses.replace(base, strategy="(per method)", strategy_options={}).to_json(),
        "strategies": list(strategies),
        "seeds": [int(s) for s in seeds],
        "ks": list(base.ks),
        "forgetting": forgetting,
        "method_options": {m: dict((method_options or {}).get(m, {})) for m in strategies},
        "runs": {m: dict(runs.get(m, {})) for m in strategies},
        "summary": summarize(runs, strategies, base.ks),
        "executed": int(executed),
    }


def _execute(plan: PlannedRun, label: str, progress: str, main: bool = True) -> tuple:
    """Train one planned run in this process; returns ``(measured, results)`` and, on the main
    process, writes the run's ``compare_run.json``."""
    cfg = dataclasses.replace(plan.cfg, progress=progress == "full")
    extra: list = []
    inner = None
    if progress == "compact" and main:
        inner = _tqdm(total=cfg.n_tasks * cfg.epochs, desc=label, unit="epoch", position=1,
                      leave=False, dynamic_ncols=True)
        extra.append(_EpochBar(inner, f"{plan.method} s{plan.seed}"))
    gc.collect()  # let the previous run's objects go before this run's memory is measured
    try:
        t0 = time.perf_counter()
        with PeakMemory(cfg.device) as mem, warnings.catch_warnings():
            if progress != "full":  # without the InteractiveLogger and CSV logs there is no logger
                warnings.filterwarnings("ignore", message="No loggers specified")
            summary = run_experiment(cfg, extra_plugins=extra)
        wall = time.perf_counter() - t0
    finally:
        if inner is not None:
            inner.close()
    measured = {"wall_seconds": wall, "peak_rss_mb": mem.peak_rss_mb, "start_rss_mb": mem.start_rss_mb,
                "peak_cuda_mb": mem.peak_cuda_mb, "rss_method": mem.method, "isolated": False}
    folder = Path(cfg.out_dir)
    if main:
        (folder / "compare_run.json").write_text(json.dumps(
            {"method": plan.method, "seed": plan.seed, "measured": measured,
             "resumed_after_experiences": summary.get("resumed_after_experiences", 0)}, indent=2))
    # other ranks read the summary they hold (rank 0 may still be writing the file)
    results = json.loads((folder / "results.json").read_text()) if main else \
        json.loads(json.dumps({k: v for k, v in summary.items() if k != "table"}, default=str))
    return measured, results


def _execute_isolated(plan: PlannedRun, label: str, progress: str) -> Dict[str, Any]:
    """Train one planned run in a fresh Python process (``isolate=True``); returns its measurements.

    The child runs :func:`_execute` and writes ``compare_run.json`` (its peak RSS and the RSS at
    the start of the run, in a process that has run nothing else). The parent adds the child's
    whole-process peak (``os.wait4``'s ``ru_maxrss``: imports included) and its wall time.

    Raises:
        RuntimeError: the child failed (its output, traceback included, is on the terminal).
    """
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    folder = Path(plan.cfg.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "compare_worker.json"
    spec.write_text(json.dumps({"method": plan.method, "seed": plan.seed, "state": plan.state, "label": label,
                                "progress": progress, "config": plan.cfg.to_json()}))
    side = folder / "compare_run.json"
    side.unlink(missing_ok=True)
    t0 = time.perf_counter()
    # Avalanche's import-time notice about QP solvers (used by none of our methods), as `main` filters it.
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), "ignore:no QP solver found"]))
    child = subprocess.Popen([sys.executable, "-m", "avalanche_av.compare", "--worker", str(spec)], env=env)
    try:
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            process_peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
        else:  # pragma: no cover - no per-child rusage on this platform
            child.wait()
            process_peak = None
    except BaseException:  # Ctrl-C: the child got it too; do not leave it behind
        child.kill()
        child.wait()
        raise
    wall = time.perf_counter() - t0
    if child.returncode != 0 or not side.is_file():
        raise RuntimeError(f"compare: run {plan.method} seed {plan.seed} failed in its own process "
                           f"(exit code {child.returncode}); its output is above")
    record = json.loads(side.read_text())
    measured = dict(record["measured"], isolated=True, process_seconds=wall, process_peak_rss_mb=process_peak)
    record["measured"] = measured
    side.write_text(json.dumps(record, indent=2))
    spec.unlink(missing_ok=True)
    return measured


def _worker_main(spec_path: str) -> int:
    """Entry point of an isolated run: ``python -m avalanche_av.compare --worker SPEC``."""
    spec = json.loads(Path(spec_path).read_text())
    cfg_json = dict(spec["config"])
    cfg_json["ks"] = tuple(cfg_json["ks"])
    plan = PlannedRun(spec["method"], int(spec["seed"]), RunConfig(**cfg_json), spec["state"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
        _execute(plan, spec["label"], spec["progress"])
    return 0


# --------------------------------------------------------------------------- main entry
def compare_strategies(
    base: RunConfig,
    strategies: Sequence[str],
    seeds: Sequence[int],
    *,
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    progress: str = "compact",
    forgetting: str = "F",
    heatmap_k: int = 5,
    isolate: bool = False,
) -> Dict[str, Any]:
    """Run every method with every seed on ``base``'s stream and write the comparison.

    Args:
        base: the shared settings (its ``strategy``, ``seed``, ``out_dir`` and ``resume`` are set
            per run; the runs go to :func:`run_folder` under ``base.out_dir``).
        strategies: registry names, in table order.
        seeds: every method runs with each of these seeds (same data, same settings).
        method_options: method -> plugin options; default ``base.strategy_options`` for every
            method (then every method must accept them).
        progress: one of :data:`PROGRESS_STYLES`.
        forgetting: ``"F"`` (textbook) or ``"F_paper"`` for the table's F column; both are in
            the JSON and the CSV.
        heatmap_k: the R@K the heatmaps show.
        isolate: train each (method, seed) in a fresh Python process. Slower (each process
            imports torch again) but its memory figures are exact: no allocator memory kept from
            an earlier run, and the whole process's peak is recorded too. Not under torchrun.

    Returns:
        The ``compare.json`` content: ``format``, ``unit`` (``"%"``), ``base_config``,
        ``strategies``, ``seeds``, ``ks``, ``forgetting``, ``method_options``, ``runs`` (method ->
        seed -> :func:`run_record`), ``summary`` (:func:`summarize`), ``executed`` (how many runs
        were trained in this call, resumed ones included) and ``paths``.

    Raises:
        ValueError: as :func:`plan_runs`, or a bad ``progress`` / ``forgetting``.
    """
    if progress not in PROGRESS_STYLES:
        raise ValueError(f"progress must be one of {PROGRESS_STYLES}, got {progress!r}")
    if forgetting not in FORGETTING:
        raise ValueError(f"forgetting must be one of {FORGETTING}, got {forgetting!r}")
    seeds = [int(s) for s in seeds]
    if isolate and torchrun_env() is not None:
        raise ValueError("--isolate starts one process per run and cannot be combined with torchrun; drop one")
    main = is_main_process()  # under torchrun every rank trains each run; rank 0 draws bars and writes
    plans = plan_runs(base, strategies, seeds, method_options)
    out = Path(base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ks = tuple(base.ks)
    runs: Dict[str, Dict[str, Any]] = {m: {} for m in strategies}
    executed = 0
    outer = _tqdm(total=len(plans), desc="compare", unit="run", position=0, dynamic_ncols=True,
                  disable=progress == "none" or not main)
    try:
        for i_m, method in enumerate(strategies):
            for plan in (p for p in plans if p.method == method):
                seed_no = seeds.index(plan.seed) + 1
                label = f"{method} ({i_m + 1}/{len(strategies)}) seed {plan.seed} ({seed_no}/{len(seeds)})"
                outer.set_description(f"compare: {label}")
                folder = Path(plan.cfg.out_dir)
                if plan.state == "finished":
                    results = json.loads((folder / "results.json").read_text())
                    side = folder / "compare_run.json"
                    measured = json.loads(side.read_text()).get("measured") if side.is_file() else None
                    runs[method][str(plan.seed)] = run_record(results, ks, measured, status="reused")
                    outer.update(1)
                    continue
                if isolate:
                    measured = _execute_isolated(plan, label, progress)
                    results = json.loads((folder / "results.json").read_text())
                else:
                    measured, results = _execute(plan, label, progress, main)
                executed += 1
                status = "resumed" if plan.state == "partial" else "ran"
                runs[method][str(plan.seed)] = run_record(results, ks, measured, status=status)
                outer.update(1)
    finally:
        outer.close()
    used_options = {m: dict(next(p.cfg.strategy_options for p in plans if p.method == m)) for m in strategies}
    data = assemble(base, strategies, seeds, runs, forgetting=forgetting, method_options=used_options,
                    executed=executed)
    if not main:
        data["paths"] = {}
        return data
    (out / "compare.json").write_text(json.dumps(data, indent=2))
    paths = write_reports(data, out, heatmap_k=heatmap_k)
    data["paths"] = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in paths.items()}
    return data


if __name__ == "__main__":  # an isolated run (compare_strategies(isolate=True)); not a user command
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m avalanche_av.compare --worker SPEC.json (started by `avalanche-av compare --isolate`)")
    sys.exit(_worker_main(sys.argv[2]))
