"""Pictures of downstream results: confusion matrices, per-class IoU bars, mask overlays.

Figures are drawn on an Agg canvas (:class:`matplotlib.figure.Figure`), never through
``pyplot``: nothing is displayed and it works on headless machines.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["save_confusion_matrix_png", "save_iou_bars_png", "save_overlays_png"]

PathLike = Union[str, Path]


def _save(fig: Figure, path: PathLike, dpi: int = 110) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    return p


def save_confusion_matrix_png(path: PathLike, cm: Union[torch.Tensor, np.ndarray], class_names: Sequence[str],
                              title: str = "Confusion matrix", normalize: bool = True) -> Path:
    """Heatmap of a ``(C, C)`` confusion matrix (rows = true class), row-normalised by default."""
    m = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ValueError(f"cm must be (C, C) with C = {len(class_names)} class names, got {m.shape}")
    if normalize:
        m = m / np.clip(m.sum(1, keepdims=True), 1, None)
    c = m.shape[0]
    side = min(14.0, 2.5 + 0.45 * c)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    labels = [n if len(n) <= 18 else n[:17] + "…" for n in class_names]
    ax.set_xticks(range(c), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(c), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if m[i, j] > 0:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] > 0.5 else "black")
    return _save(fig, path)


def save_iou_bars_png(path: PathLike, class_names: Sequence[str], ious: Sequence[float],
                      title: str = "IoU per class") -> Path:
    """Bar plot of per-class IoU (``NaN`` bars, classes absent from the test split, are left empty)."""
    if len(class_names) != len(ious):
        raise ValueError(f"{len(class_names)} class names for {len(ious)} IoU values")
    vals = np.asarray(ious, dtype=np.float64)
    fig = Figure(figsize=(max(5.0, 0.35 * len(vals) + 2), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(vals)), np.nan_to_num(vals), color="tab:blue")
    mean = np.nanmean(vals) if np.isfinite(vals).any() else float("nan")
    if math.isfinite(mean):
        ax.axhline(mean, color="tab:red", lw=1, ls="--", label=f"mean {mean:.3f}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(vals)), [n if len(n) <= 16 else n[:15] + "…" for n in class_names], rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_overlays_png(path: PathLike, frames: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
                      titles: Optional[Sequence[str]] = None, cols: int = 4) -> Path:
    """Frames with the ground truth (green) and the prediction (red) painted over them.

    Args:
        frames: ``(K, 3, H, W)`` uint8.
        gt, pred: ``(K, h, w)`` bool masks (resized to ``H x W`` by nearest neighbour).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (K, 3, H, W), got {tuple(frames.shape)}")
    k, _, h, w = frames.shape
    if gt.shape[0] != k or pred.shape[0] != k:
        raise ValueError(f"{k} frames but {gt.shape[0]} ground-truth and {pred.shape[0]} predicted masks")

    def fit(m: torch.Tensor) -> np.ndarray:
        return (F.interpolate(m[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5).numpy()

    g, p = fit(gt), fit(pred)
    img = frames.permute(0, 2, 3, 1).float().numpy() / 255.0
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(2.4 * min(cols, k), 2.6 * rows))
    FigureCanvasAgg(fig)
    for i in range(k):
        ax = fig.add_subplot(rows, min(cols, k), i + 1)
        over = img[i].copy()
        over[g[i]] = 0.5 * over[g[i]] + 0.5 * np.array([0.1, 0.9, 0.1])
        over[p[i]] = 0.5 * over[p[i]] + 0.5 * np.array([0.9, 0.1, 0.1])
        ax.imshow(over)
        if g[i].any() and not g[i].all():
            ax.contour(g[i].astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.suptitle("green: ground truth, red: prediction", fontsize=8)
    return _save(fig, path)
