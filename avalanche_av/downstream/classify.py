"""Audio-visual classification on a frozen backbone (paper Table 4b).

A linear probe or an MLP on clip features (``docs/downstream.md`` "Classification"):

* ``joint``: ``[mean audio; mean video]`` of the joint output (the default);
* ``audio`` / ``video``: the unimodal embeddings;
* ``joint-audio`` / ``joint-video``: one half of the joint features.

Single-label data: cross-entropy, top-1 / top-5 accuracy, a confusion matrix. Multi-label data
(AudioSet): per-class binary cross-entropy, mAP. The head is selected on the validation split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .data import DownstreamData
from .features import FeatureExtractor
from .heads import Standardize, fit_head, make_head
from .metrics import confusion_matrix, mean_average_precision, topk_accuracy

__all__ = ["CLASSIFY_FEATURES", "classify_features", "run_classification"]

CLASSIFY_FEATURES = ("joint", "audio", "video", "joint-audio", "joint-video")


def classify_features(extractor: FeatureExtractor, data: DownstreamData, features: str) -> torch.Tensor:
    """``(N, D')`` clip features of one variant (see the module docstring)."""
    if features not in CLASSIFY_FEATURES:
        raise ValueError(f"features must be one of {list(CLASSIFY_FEATURES)}, got {features!r}")
    if features in ("audio", "video"):
        return extractor.get(data, [features])[features].float()
    x = extractor.get(data, ["joint"])["joint"].float()
    d = x.shape[1] // 2
    return {"joint": x, "joint-audio": x[:, :d], "joint-video": x[:, d:]}[features]


def run_classification(
    data: DownstreamData,
    extractor: FeatureExtractor,
    features: str = "joint",
    head: str = "linear",
    out_dir: Optional[Path] = None,
    max_epochs: int = 200,
    patience: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    ks: tuple = (1, 5),
) -> dict:
    """Train and evaluate a classification head; returns the metrics (and writes plots to ``out_dir``).

    Returns:
        ``{"metrics": {...}, "per_class": [...], "fit": {...}}``. Single-label metrics:
        ``top1``, ``top5`` (test), ``val_top1``; multi-label: ``mAP`` (test), ``val_mAP``.
    """
    data.require("labels", "classify")
    x = classify_features(extractor, data, features)
    y = data.labels
    assert y is not None
    tr, va, te = (data.indices(s) for s in ("train", "val", "test"))
    torch.manual_seed(seed)
    c = data.n_classes
    net = make_head(head, x.shape[1], c, norm=Standardize.fit(x[tr]))
    xtr, ytr = x[tr], y[tr]

    if data.multi_label:
        def loss_fn(h, idx):
            return F.binary_cross_entropy_with_logits(h(xtr[idx]), ytr[idx].float())

        def score(h, idx):
            return mean_average_precision(h(x[idx]), y[idx])[0]
    else:
        def loss_fn(h, idx):
            return F.cross_entropy(h(xtr[idx]), ytr[idx])

        def score(h, idx):
            return topk_accuracy(h(x[idx]), y[idx], ks=(1,))[1]

    fit = fit_head(net, len(tr), loss_fn, lambda h: score(h, va), max_epochs=max_epochs, patience=patience, lr=lr,
                   weight_decay=weight_decay, batch_size=batch_size, seed=seed, progress=progress,
                   desc=f"classify/{features}/{head}")
    with torch.no_grad():
        logits = net(x[te])
    metrics: dict = {"features": features, "head": head, "n_train": len(tr), "n_val": len(va), "n_test": len(te)}
    per_class = []
    if data.multi_label:
        m, aps = mean_average_precision(logits, y[te])
        metrics.update({"mAP": m, "val_mAP": fit.best_val})
        per_class = [{"class": n, "AP": a, "n_test_positive": int(y[te][:, i].sum())}
                     for i, (n, a) in enumerate(zip(data.class_names, aps))]
    else:
        acc = topk_accuracy(logits, y[te], ks=ks)
        metrics.update({f"top{k}": v for k, v in acc.items()})
        metrics["val_top1"] = fit.best_val
        metrics["chance_top1"] = 1.0 / c
        pred = logits.argmax(1)
        cm = confusion_matrix(pred, y[te], c)
        metrics["confusion_matrix"] = cm.tolist()
        rows = cm.sum(1).clamp_min(1)
        per_class = [{"class": n, "accuracy": float(cm[i, i] / rows[i]), "n_test": int(cm[i].sum())}
                     for i, n in enumerate(data.class_names)]
        if out_dir is not None:
            from .plots import save_confusion_matrix_png  # noqa: PLC0415

            save_confusion_matrix_png(Path(out_dir) / f"confusion_{features}_{head}.png", cm, data.class_names,
                                      title=f"{data.name}: {features} features, {head} head (test)")
    return {"metrics": metrics, "per_class": per_class, "fit": fit.to_json()}
