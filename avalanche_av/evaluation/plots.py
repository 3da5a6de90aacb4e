"""Plots of continual-retrieval results (accuracy-matrix heatmaps and per-task curves).

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through
``pyplot``: nothing is displayed, no global figure state is kept, and it works on headless
machines whatever backend is configured.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

__all__ = ["plot_accuracy_matrix", "save_accuracy_matrix_png", "plot_metric_curves", "modality_gap_curve",
           "plot_modality_gap", "plot_accuracy_matrices", "plot_method_bars", "plot_training_diagnostics",
           "plot_localization_over_tasks"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]]


def _as_2d(matrix: ArrayLike, name: str = "matrix") -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows: checkpoints, cols: tasks), got shape {m.shape}")
    return m


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy_matrix(
    matrix: ArrayLike,
    task_names: Optional[Sequence[str]] = None,
    title: str = "Accuracy matrix",
    ax: Optional[Axes] = None,
    row_names: Optional[Sequence[str]] = None,
    fmt: str = "{:.2f}",
    cmap: str = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    colorbar: bool = True,
) -> Figure:
    """Heatmap of an accuracy matrix with each value written in its cell.

    Args:
        matrix: ``(R, C)`` scores; row ``t`` = after training experience ``t``, column ``i`` = task
            ``i``. ``NaN`` cells stay blank.
        task_names: ``C`` column labels; default ``T0 .. T{C-1}``.
        title: axes title.
        ax: draw into this axes instead of a new figure.
        row_names: ``R`` row labels; default ``after T0 ..``.
        fmt: format string for the cell numbers.
        cmap, vmin, vmax: colour mapping; the range defaults to the finite values' range.
        colorbar: add a colour bar.

    Returns:
        The figure holding the axes.
    """
    m = _as_2d(matrix)
    n_rows, n_cols = m.shape
    if task_names is not None and len(task_names) != n_cols:
        raise ValueError(f"task_names has {len(task_names)} entries but the matrix has {n_cols} columns")
    if row_names is not None and len(row_names) != n_rows:
        raise ValueError(f"row_names has {len(row_names)} entries but the matrix has {n_rows} rows")
    task_names = list(task_names) if task_names is not None else [f"T{i}" for i in range(n_cols)]
    row_names = list(row_names) if row_names is not None else [f"after T{t}" for t in range(n_rows)]

    if ax is None:
        fig = _new_figure((1.2 + 0.8 * max(n_cols, 1), 1.0 + 0.6 * max(n_rows, 1)))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure

    finite = m[np.isfinite(m)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(task_names, rotation=45 if n_cols > 6 else 0, ha="right" if n_cols > 6 else "center")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(row_names)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("checkpoint")
    ax.set_title(title)

    # Dark text on the bright end of the colormap, light text on the dark end.
    mid = (lo + hi) / 2.0
    for r in range(n_rows):
        for c in range(n_cols):
            v = m[r, c]
            if math.isfinite(v):
                ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=8,
                        color="black" if v > mid else "white")
    if colorbar:
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def save_accuracy_matrix_png(path: Union[str, Path], matrix: ArrayLike, dpi: int = 120, **kw) -> Path:
    """Draw :func:`plot_accuracy_matrix` and write it to ``path`` as PNG.

    Args:
        path: output file; parent folders are created.
        matrix: ``(R, C)`` scores.
        dpi: resolution.
        **kw: forwarded to :func:`plot_accuracy_matrix` (not ``ax``).

    Returns:
        The path written.
    """
    if "ax" in kw:
        raise ValueError("save_accuracy_matrix_png draws its own figure; do not pass ax")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_accuracy_matrix(matrix, **kw)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def plot_metric_curves(
    curves: Union[ArrayLike, Mapping[str, Sequence[float]]],
    x: Optional[Sequence[float]] = None,
    task_names: Optional[Sequence[str]] = None,
    title: str = "",
    xlabel: str = "training experience",
    ylabel: str = "R@k",
    ax: Optional[Axes] = None,
) -> Figure:
    """Line plot of metric curves, e.g. each task's score over the checkpoints.

    Args:
        curves: either an ``(R, C)`` accuracy matrix (one line per column ``i`` over the rows), or a
            mapping ``name -> values``. ``NaN`` points are skipped by matplotlib.
        x: x positions (length ``R``); default ``0 .. R-1``.
        task_names: line labels for the matrix form; default ``T0 ..``.
        title, xlabel, ylabel: axes labels.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure holding the axes.
    """
    if isinstance(curves, Mapping):
        series = {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in curves.items()}
    else:
        m = _as_2d(curves, "curves")
        names = list(task_names) if task_names is not None else [f"T{i}" for i in range(m.shape[1])]
        if len(names) != m.shape[1]:
            raise ValueError(f"task_names has {len(names)} entries but curves has {m.shape[1]} columns")
        series = {names[i]: m[:, i] for i in range(m.shape[1])}
    if ax is None:
        fig = _new_figure((6.0, 4.0))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    for name, ys in series.items():
        xs = np.arange(len(ys)) if x is None else np.asarray(x, dtype=np.float64)
        if len(xs) != len(ys):
            raise ValueError(f"curve {name!r} has {len(ys)} points but x has {len(xs)}")
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def modality_gap_curve(gap_matrix: ArrayLike, which: Union[str, int] = "diagonal") -> np.ndarray:
    """One modality-gap value per training experience, read from a gap matrix.

    Args:
        gap_matrix: ``(R, C)``; entry ``[t, i]`` is the gap on task ``i``'s evaluation clips after
            training experience ``t`` (``RetrievalMetrics.modality_gap_matrix()``).
        which: ``"diagonal"``: task ``t``'s own clips right after training it (the paper's
            Fig. 6, "at the end of each task, utilizing evaluation data of each task");
            ``"seen"``: the mean over the tasks trained so far (columns ``0..t``); ``"all"``: the
            mean over every column; an int ``i``: task ``i``'s clips at every checkpoint (how one
            task's gap moves, as in the paper's Fig. 11).

    Returns:
        ``(R,)`` float64; ``NaN`` where the entries are unknown.
    """
    m = _as_2d(gap_matrix, "gap_matrix")
    r, c = m.shape
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
        if not 0 <= which < c:
            raise ValueError(f"which={which}: the gap matrix has task columns 0..{c - 1}")
        return m[:, int(which)].copy()
    if which == "diagonal":
        return np.array([m[t, t] if t < c else np.nan for t in range(r)])
    if which in ("seen", "all"):
        out = np.full(r, np.nan)
        for t in range(r):
            row = m[t, : min(t + 1, c)] if which == "seen" else m[t]
            if np.isfinite(row).any():
                out[t] = np.nanmean(row)
        return out
    raise ValueError(f"which must be 'diagonal', 'seen', 'all' or a task index, got {which!r}")


def plot_modality_gap(
    gaps: Mapping[str, ArrayLike],
    which: Union[str, int] = "diagonal",
    title: str = "Modality gap after each task",
    ax: Optional[Axes] = None,
    task_names: Optional[Sequence[str]] = None,
) -> Figure:
    """The modality gap after each training experience, one line per method (paper Fig. 6, left).

    Args:
        gaps: method -> its gap matrix ``(R, C)``, or a stack ``(S, R, C)`` over ``S`` seeds, drawn
            as the mean with a ±1 std band (methods may have different ``R``).
        which: how a matrix becomes one value per experience (:func:`modality_gap_curve`).
        title: axes title.
        ax: draw into this axes instead of a new figure.
        task_names: x tick labels, one per experience; default ``1 .. R`` (the paper's
            "pre-train task" numbering).

    Returns:
        The figure holding the axes.
    """
    if not gaps:
        raise ValueError("plot_modality_gap needs at least one method")
    if ax is None:
        fig = _new_figure((6.4, 4.2))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    n_max = 0
    for name, value in gaps.items():
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float64)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"gaps[{name!r}] must be (R, C) or (S, R, C), got shape {arr.shape}")
        curves = np.stack([modality_gap_curve(a, which) for a in arr])  # (S, R)
        x = np.arange(1, curves.shape[1] + 1)
        n_max = max(n_max, curves.shape[1])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            mean = np.nanmean(curves, axis=0)
            std = np.nanstd(curves, axis=0) if curves.shape[0] > 1 else None
        label = name if curves.shape[0] == 1 else f"{name} (mean ± std, {curves.shape[0]} seeds)"
        line = ax.plot(x, mean, marker="o", label=label)[0]
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = np.arange(1, n_max + 1)
    ax.set_xticks(ticks)
    if task_names is not None:
        if len(task_names) < n_max:
            raise ValueError(f"task_names has {len(task_names)} entries for {n_max} experiences")
        ax.set_xticklabels(list(task_names)[:n_max])
    ax.set_xlabel("after training task")
    names = {"diagonal": "own task's clips", "seen": "mean over seen tasks", "all": "mean over all tasks"}
    what = names[which] if isinstance(which, str) else f"task {which}'s clips"
    ax.set_ylabel(f"modality gap, {what}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_accuracy_matrices(
    matrices: Mapping[str, ArrayLike],
    title: str = "",
    fmt: str = "{:.2f}",
    shared_range: bool = True,
) -> Figure:
    """Several accuracy matrices side by side (e.g. audio→video and video→audio of one method).

    Args:
        matrices: panel title -> ``(R, C)`` scores (``NaN`` cells stay blank).
        title: figure title.
        fmt: cell number format.
        shared_range: one colour range for every panel (from 0 to the largest finite value), so
            equal colours mean equal scores across panels.

    Returns:
        The figure.
    """
    if not matrices:
        raise ValueError("plot_accuracy_matrices needs at least one matrix")
    mats = {name: _as_2d(m, f"matrices[{name!r}]") for name, m in matrices.items()}
    n_rows = max(m.shape[0] for m in mats.values())
    n_cols = max(m.shape[1] for m in mats.values())
    fig = _new_figure((len(mats) * (1.8 + 0.8 * max(n_cols, 1)), 1.5 + 0.6 * max(n_rows, 1)))
    vmin = vmax = None
    if shared_range:
        finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
        vmin, vmax = 0.0, (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    for i, (name, m) in enumerate(mats.items()):
        ax = fig.add_subplot(1, len(mats), i + 1)
        plot_accuracy_matrix(m, ax=ax, title=name, fmt=fmt, vmin=vmin, vmax=vmax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_method_bars(
    methods: Sequence[str],
    panels: Mapping[str, Mapping[str, tuple]],
    title: str = "",
    xlabel: str = "score",
) -> Figure:
    """Horizontal grouped bars with error bars: one panel per metric, one bar group per method.

    Horizontal bars keep method names readable when there are many methods; the figure grows
    with the method count.

    Args:
        methods: ``M`` method names (top to bottom).
        panels: panel title -> series name -> ``(mean, std)``, each a length-``M`` sequence.
            ``None``/``NaN`` means draw no bar (written "n/a"); a ``None``/``NaN`` std draws no
            error bar.
        title: figure title.
        xlabel: x-axis label of every panel.

    Returns:
        The figure.
    """
    if not methods:
        raise ValueError("plot_method_bars needs at least one method")
    if not panels:
        raise ValueError("plot_method_bars needs at least one panel")
    m = len(methods)

    def arr(values, what: str) -> np.ndarray:
        out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        if out.shape != (m,):
            raise ValueError(f"{what} has {out.size} values for {m} methods")
        return out

    n_series = max(len(s) for s in panels.values())
    height_in = 2.0 + 0.3 * m * max(1.0, 0.6 * n_series)
    fig = _new_figure((1.5 + 5.2 * len(panels), height_in))
    y = np.arange(m)
    height = 0.8 / max(n_series, 1)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for i, (panel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for j, (name, (mean, std)) in enumerate(series.items()):
            mu, sd = arr(mean, f"{panel}/{name} mean"), arr(std, f"{panel}/{name} std")
            pos = y - 0.4 + height * (j + 0.5)
            ok = np.isfinite(mu)
            # No error bar where the std is unknown (a single seed), rather than a zero-width one.
            err = np.where(np.isfinite(sd), sd, 0.0)[ok] if np.isfinite(sd[ok]).any() else None
            ax.barh(pos[ok], mu[ok], height=height * 0.9, color=colors[j % len(colors)], label=name,
                    xerr=err, capsize=2 if err is not None else 0, error_kw={"elinewidth": 1})
            # Missing values (e.g. a forgetting that is not measured) are labelled, not drawn as 0.
            where = blended_transform_factory(ax.transAxes, ax.transData)
            for p in pos[~ok]:
                ax.text(0.01, p, f"{name}: n/a", transform=where, va="center", ha="left", fontsize=8, color="gray")
        ax.set_yticks(y)
        ax.set_yticklabels(list(methods) if i == 0 else [""] * m, fontsize=9)
        ax.set_ylim(m - 0.5, -0.5)  # every method's row, even one without bars; first method on top
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.axvline(0.0, color="black", linewidth=0.6)
    # One legend for all panels, below them, where it cannot cover a bar.
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.35 / height_in, 1.0, 1.0))
    return fig


#: Panels of :func:`plot_training_diagnostics`: value name -> (y label, reference line or None).
_DIAG_PANELS = {
    "AVM_Acc": ("AVM match accuracy (chance 0.5)", 0.5),
    "Excluded_v": ("excluded video patches (share)", None),
    "Loc_Share": ("training-clip localization share", "Loc_Chance"),
    "MemoryFill": ("memory fill", None),
}


def plot_training_diagnostics(
    runs: Mapping[str, Mapping[str, Any]],
    title: str = "Training diagnostics",
) -> Optional[Figure]:
    """Per-step diagnostics against training iterations, one line per run.

    Args:
        runs: label -> ``{metric class name: metric.to_dict()}`` as ``results.json`` stores them
            under ``"diagnostics"`` (each ``to_dict`` holds ``history``: records of
            ``iteration``, ``experience`` and ``values``).
        title: figure title.

    Returns:
        One panel per value that any run has (:data:`_DIAG_PANELS`: AVM accuracy, excluded
        video share, training-clip localization with its chance level dashed, memory fill), or
        ``None`` when no run recorded any of them.
    """
    series: Dict[str, Dict[str, tuple]] = {}
    for label, metrics in runs.items():
        points: Dict[str, list] = {}
        for block in metrics.values():
            for rec in block.get("history", []):
                for name, v in rec.get("values", {}).items():
                    points.setdefault(name, []).append((rec["iteration"], v))
        for name, pts in points.items():
            pts.sort()
            series.setdefault(name, {})[label] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    panels = [n for n in _DIAG_PANELS if n in series]
    if not panels:
        return None
    fig = _new_figure((4.2 * len(panels), 3.6))
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ylabel, ref = _DIAG_PANELS[name]
        for label, (x, y) in series[name].items():
            line = ax.plot(x, y, label=label, linewidth=1.2)[0]
            if isinstance(ref, str) and label in series.get(ref, {}):
                rx, ry = series[ref][label]
                ax.plot(rx, ry, linestyle="--", color=line.get_color(), linewidth=0.9, alpha=0.8)
        if isinstance(ref, float):
            ax.axhline(ref, color="grey", linestyle="--", linewidth=0.9, label="chance")
        ax.set_xlabel("training iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if name == "Loc_Share":
            ax.set_title("dashed: chance (uniform map)", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_localization_over_tasks(
    curves: Mapping[str, ArrayLike],
    chance: Optional[ArrayLike] = None,
    title: str = "Localization after each task",
    ylabel: str = "share of the map on sounding patches",
    groups: Optional[Mapping[str, Sequence[str]]] = None,
) -> Figure:
    """A localization statistic after each training task, one line per method.

    Args:
        curves: method -> ``(R,)`` values or ``(S, R)`` over seeds (mean with a ±1 std band).
        chance: optional ``(R,)`` chance level (a uniform map's share), drawn dashed in every panel.
        title, ylabel: labels.
        groups: optional panel title -> names of ``curves`` drawn in that panel, side by side with
            their own y-axis (maps on very different scales stay readable). Default: one panel.

    A curve named ``"m (variant)"`` takes the colour of ``m``, so one method keeps one colour across
    panels; colours come from a 20-colour palette, enough for every method of Table 1.
    """
    if not curves:
        raise ValueError("plot_localization_over_tasks needs at least one method")
    panels = dict(groups) if groups else {"": list(curves)}
    unknown = [n for names in panels.values() for n in names if n not in curves]
    if unknown:
        raise ValueError(f"groups name curves that are not given: {unknown}")
    # tab20 lists dark/light pairs; the 10 dark ones first keeps neighbours apart.
    palette = colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]
    bases: list = []
    for name in curves:
        base = name.split(" (")[0]
        if base not in bases:
            bases.append(base)
    colour = {name: palette[bases.index(name.split(" (")[0]) % len(palette)] for name in curves}
    fig = _new_figure((5.6 * len(panels) + 1.8, 4.4))
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for ax, (panel, names) in zip(axes, panels.items()):
        n_max = 0
        for name in names:
            arr = np.asarray(curves[name], dtype=np.float64)
            if arr.ndim == 1:
                arr = arr[None]
            if arr.ndim != 2:
                raise ValueError(f"curves[{name!r}] must be (R,) or (S, R), got shape {arr.shape}")
            x = np.arange(1, arr.shape[1] + 1)
            n_max = max(n_max, arr.shape[1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(arr, axis=0)
                std = np.nanstd(arr, axis=0) if arr.shape[0] > 1 else None
            label = name if arr.shape[0] == 1 else f"{name} ({arr.shape[0]} seeds)"
            ax.plot(x, mean, marker="o", color=colour[name], label=label)
            if std is not None:
                ax.fill_between(x, mean - std, mean + std, color=colour[name], alpha=0.15, linewidth=0)
        if chance is not None:
            c = np.asarray(chance, dtype=np.float64).reshape(-1)
            ax.plot(np.arange(1, c.size + 1), c, color="grey", linestyle="--", label="chance (uniform map)")
            n_max = max(n_max, c.size)
        ax.set_xticks(np.arange(1, n_max + 1))
        ax.set_xlabel("after training task")
        ax.set_ylabel(ylabel)
        if panel:
            ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
