"""Metric functions of the downstream tasks (pure tensor code, no state).

Definitions (``docs/downstream.md`` has the worked examples):

* **top-k accuracy**: a sample is a hit at ``k`` when its true class ranks within the top ``k``
  scores. The rank of the true class is the number of classes with a *strictly* higher score,
  so ties never push it down (the rule :func:`avalanche_av.evaluation.recall_at_k` uses).
* **mAP** (multi-label, AudioSet style): the mean over classes of the average precision
  ``AP_c = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds of class ``c``
  (scores sorted high to low, tied scores form one threshold). Classes without a positive
  sample in the evaluated set are left out of the mean.
* **segment accuracy** (AVE): the fraction of (clip, segment) pairs whose predicted label,
  one of the event classes or background, equals the true one.
* **IoU / mIoU** (AVSBench ``M_J``): per frame ``|P ∩ G| / |P ∪ G|`` of the binarised
  prediction ``P`` and the ground truth ``G``; a frame where both are empty scores 1 (the model
  correctly says nothing sounds). mIoU is the mean over evaluated frames.
* **F-score** (AVSBench ``M_F``): ``F_β = (1 + β²) P R / (β² P + R)`` with ``β² = 0.3``, where
  ``P`` and ``R`` are the precision and recall of the binarised prediction averaged over the
  frames whose ground truth is not empty (recall is undefined on the others). The mask is
  binarised at each threshold of ``thresholds`` and the best ``F_β`` is reported, as AVSBench
  does with its 255-threshold sweep.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

__all__ = [
    "topk_accuracy",
    "average_precision",
    "mean_average_precision",
    "segment_accuracy",
    "confusion_matrix",
    "mask_iou",
    "mean_iou",
    "f_score",
    "precision_recall_curves",
    "f_score_from_curves",
    "AVSBENCH_THRESHOLDS",
]

#: AVSBench's F-score sweep: 255 thresholds evenly spaced in [0, 1).
AVSBENCH_THRESHOLDS: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.0, 1.0 - 1e-10, 255))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def topk_accuracy(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy of class scores.

    Args:
        scores: ``(N, C)`` logits or probabilities.
        target: ``(N,)`` int class indices in ``[0, C)``.
        ks: cut-offs; a ``k >= C`` counts every sample as a hit.

    Returns:
        ``{k: accuracy}``; ``NaN`` for every ``k`` when ``N == 0``.
    """
    _check(scores.dim() == 2, f"scores must be (N, C), got {tuple(scores.shape)}")
    _check(target.dim() == 1 and target.shape[0] == scores.shape[0],
           f"target must be (N,) with N={scores.shape[0]}, got {tuple(target.shape)}")
    _check(all(int(k) >= 1 for k in ks), f"ks must be >= 1, got {list(ks)}")
    if scores.shape[0] == 0:
        return {int(k): float("nan") for k in ks}
    t = target.long().to(scores.device)
    _check(int(t.min()) >= 0 and int(t.max()) < scores.shape[1], f"target values must lie in [0, {scores.shape[1]})")
    true = scores.gather(1, t[:, None])
    rank = (scores > true).sum(dim=1)
    return {int(k): float((rank < int(k)).float().mean()) for k in ks}


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds.

    Args:
        scores: ``(N,)`` scores, higher = more likely positive.
        positive: ``(N,)`` bool (or 0/1) ground truth.

    Returns:
        AP in ``[0, 1]``; ``NaN`` when there is no positive.
    """
    _check(scores.dim() == 1 and positive.shape == scores.shape,
           f"scores and positive must both be (N,), got {tuple(scores.shape)} and {tuple(positive.shape)}")
    pos = positive.bool()
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    s, order = torch.sort(scores.double(), descending=True, stable=True)
    tp = torch.cumsum(pos[order].double(), 0)
    # The last index of each run of tied scores is where that threshold's counts are read.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    idx = torch.nonzero(last).squeeze(1)
    tp_t = tp[idx]
    precision = tp_t / (idx + 1).double()
    recall = tp_t / n_pos
    prev = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - prev) * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
    """Multi-label mAP.

    Args:
        scores: ``(N, C)``.
        targets: ``(N, C)`` multi-hot (bool or 0/1).

    Returns:
        ``(mAP, per_class_ap)``: the mean over classes that have at least one positive, and the
        ``C`` per-class APs (``NaN`` for classes without a positive).
    """
    _check(scores.dim() == 2 and targets.shape == scores.shape,
           f"scores and targets must both be (N, C), got {tuple(scores.shape)} and {tuple(targets.shape)}")
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    valid = [a for a in aps if not np.isnan(a)]
    return (float(np.mean(valid)) if valid else float("nan")), aps


def segment_accuracy(pred: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None) -> float:
    """Fraction of segments labelled correctly.

    Args:
        pred, target: ``(N, S)`` int labels (event classes and background alike).
        valid: optional ``(N, S)`` bool; segments outside it (padding) are not counted.
    """
    _check(pred.shape == target.shape, f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    hit = pred.long() == target.long()
    if valid is not None:
        _check(valid.shape == pred.shape, f"valid must have shape {tuple(pred.shape)}, got {tuple(valid.shape)}")
        hit = hit[valid.bool()]
    return float(hit.float().mean()) if hit.numel() else float("nan")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts; row = true class, column = predicted class."""
    _check(pred.shape == target.shape, f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, t = pred.reshape(-1).long(), target.reshape(-1).long()
    _check(p.numel() == 0 or (int(torch.minimum(p.min(), t.min())) >= 0 and int(torch.maximum(p.max(), t.max())) < n_classes),
           f"labels must lie in [0, {n_classes})")
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).view(n_classes, n_classes)


def _flat_masks(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(pred.shape == gt.shape, f"prediction and ground-truth masks differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    _check(pred.dim() >= 2, f"masks must be (..., H, W), got {tuple(pred.shape)}")
    return pred.reshape(-1, pred.shape[-2] * pred.shape[-1]), gt.reshape(-1, gt.shape[-2] * gt.shape[-1]).bool()


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-frame IoU of binary masks.

    Args:
        pred: ``(..., H, W)`` bool (already binarised).
        gt: ``(..., H, W)`` bool.

    Returns:
        ``(M,)`` float, one IoU per frame (``M`` = product of the leading dims); 1 where both
        masks are empty.
    """
    p, g = _flat_masks(pred.bool(), gt)
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).float()


def mean_iou(prob: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5, valid: Optional[torch.Tensor] = None) -> float:
    """mIoU: the mean of :func:`mask_iou` over frames, after binarising ``prob > threshold``.

    Args:
        prob: ``(..., H, W)`` probabilities (or a bool mask).
        gt: ``(..., H, W)`` bool.
        valid: optional bool over the leading dims; frames outside it (no annotation) are skipped.
    """
    pred = prob.bool() if prob.dtype == torch.bool else prob > threshold
    iou = mask_iou(pred, gt)
    if valid is not None:
        iou = iou[valid.reshape(-1).bool()]
    return float(iou.mean()) if iou.numel() else float("nan")


def precision_recall_curves(
    prob: torch.Tensor, gt: torch.Tensor, thresholds: Sequence[float] = AVSBENCH_THRESHOLDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame precision and recall of ``prob > t`` for every threshold.

    Args:
        prob: ``(M, H, W)`` (or ``(..., H, W)``) probabilities.
        gt: same shape, bool.
        thresholds: ``T`` values (sorted here).

    Returns:
        ``(precision, recall)``, each ``(M', T)`` float64 over the ``M'`` frames whose ground
        truth is not empty. Precision of an empty prediction is 0.
    """
    _check(len(thresholds) > 0, "thresholds must not be empty")
    p, g = _flat_masks(prob.float(), gt)
    keep = g.any(1)
    p, g = p[keep], g[keep]
    th = torch.tensor(sorted(float(t) for t in thresholds), dtype=p.dtype, device=p.device)
    n_t, m = th.numel(), p.shape[0]
    if m == 0:
        z = torch.zeros(0, n_t, dtype=torch.float64)
        return z, z.clone()
    # All thresholds at once: bucket every pixel by how many thresholds lie strictly below it,
    # count per frame, and read "pixels above threshold j" as a reverse cumulative sum.
    bucket = torch.bucketize(p, th, right=False)
    flat = (torch.arange(m, device=p.device)[:, None] * (n_t + 1) + bucket)
    above = torch.zeros(m * (n_t + 1), dtype=torch.float64, device=p.device)
    above.index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.float64, device=p.device))
    above_pos = torch.zeros_like(above)
    above_pos.index_add_(0, flat[g], torch.ones(int(g.sum()), dtype=torch.float64, device=p.device))
    cnt = above.view(m, n_t + 1).flip(1).cumsum(1).flip(1)[:, 1:]
    tp = above_pos.view(m, n_t + 1).flip(1).cumsum(1).flip(1)[:, 1:]
    precision = torch.where(cnt > 0, tp / cnt.clamp_min(1), torch.zeros_like(tp))
    recall = tp / g.sum(1).double()[:, None]
    return precision.cpu(), recall.cpu()


def f_score_from_curves(precision: torch.Tensor, recall: torch.Tensor, beta2: float = 0.3) -> float:
    """``max_t F_β(t)`` from per-frame curves ``(M, T)``: precision and recall are averaged over
    frames first, then combined (AVSBench's order). ``NaN`` when ``M == 0``."""
    if precision.shape[0] == 0:
        return float("nan")
    prec, rec = precision.mean(0), recall.mean(0)
    denom = beta2 * prec + rec
    f = torch.where(denom > 0, (1 + beta2) * prec * rec / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return float(f.max())


def f_score(
    prob: torch.Tensor,
    gt: torch.Tensor,
    beta2: float = 0.3,
    thresholds: Sequence[float] = AVSBENCH_THRESHOLDS,
    valid: Optional[torch.Tensor] = None,
) -> float:
    """AVSBench F-score: the best ``F_β`` over ``thresholds`` (see the module docstring).

    Args:
        prob: ``(..., H, W)`` probabilities.
        gt: ``(..., H, W)`` bool.
        beta2: ``β²``.
        thresholds: binarisation thresholds ``prob > t``.
        valid: optional bool over the leading dims (annotated frames).

    Returns:
        ``max_t F_β(t)``; ``NaN`` when no evaluated frame has a non-empty ground truth.
    """
    _check(prob.shape == gt.shape, f"prediction and ground-truth masks differ in shape: {tuple(prob.shape)} vs {tuple(gt.shape)}")
    p = prob.reshape(-1, *prob.shape[-2:])
    g = gt.reshape(-1, *gt.shape[-2:])
    if valid is not None:
        v = valid.reshape(-1).bool()
        p, g = p[v], g[v]
    prec, rec = precision_recall_curves(p, g, thresholds)
    return f_score_from_curves(prec, rec, beta2)
