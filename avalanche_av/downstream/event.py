"""Audio-visual event localization on a frozen backbone (AVE, paper Table 8b).

Each clip is cut into ``S`` time segments (AVE: ten one-second segments; the synthetic stream:
one segment per frame). A head shared over segments classifies each segment's ``[audio; video]``
features, each taken at the last modality-specific block and at the joint output (the
``"segments<S>"`` kind of :mod:`~avalanche_av.downstream.features`), into the ``C`` event
classes or background (label ``C``). Metric: segment accuracy on the test
split; the head is selected on the validation split's segment accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .data import DownstreamData
from .features import FeatureExtractor
from .heads import Standardize, fit_head, make_head
from .metrics import confusion_matrix, segment_accuracy

__all__ = ["run_event_localization"]


def run_event_localization(
    data: DownstreamData,
    extractor: FeatureExtractor,
    head: str = "linear",
    out_dir: Optional[Path] = None,
    max_epochs: int = 200,
    patience: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train and evaluate the per-segment classifier.

    Returns:
        ``{"metrics": {...}, "per_class": [...], "fit": {...}}`` with ``segment_accuracy``
        (test), ``val_segment_accuracy``, ``background_share`` (test segments that are
        background: the accuracy of always answering background) and the accuracy on event
        and on background segments separately.
    """
    data.require("segment_labels", "event")
    s = data.n_segments
    assert s is not None and data.segment_labels is not None
    x = extractor.get(data, [f"segments{s}"])[f"segments{s}"].float()  # (N, S, 2D)
    y = data.segment_labels
    tr, va, te = (data.indices(k) for k in ("train", "val", "test"))
    n_out = data.n_classes + 1
    torch.manual_seed(seed)
    net = make_head(head, x.shape[-1], n_out, norm=Standardize.fit(x[tr]))
    xtr, ytr = x[tr], y[tr]

    def loss_fn(h, idx):
        return F.cross_entropy(h(xtr[idx]).reshape(-1, n_out), ytr[idx].reshape(-1))

    def score(h, idx):
        return segment_accuracy(h(x[idx]).argmax(-1), y[idx])

    fit = fit_head(net, len(tr), loss_fn, lambda h: score(h, va), max_epochs=max_epochs, patience=patience, lr=lr,
                   weight_decay=weight_decay, batch_size=batch_size, seed=seed, progress=progress,
                   desc=f"event/{head}")
    with torch.no_grad():
        pred = net(x[te]).argmax(-1)
    yt = y[te]
    bg = yt == data.n_classes
    cm = confusion_matrix(pred, yt, n_out)
    metrics = {
        "head": head, "n_segments": s, "n_train": len(tr), "n_val": len(va), "n_test": len(te),
        "segment_accuracy": segment_accuracy(pred, yt),
        "val_segment_accuracy": fit.best_val,
        "event_segment_accuracy": segment_accuracy(pred[~bg], yt[~bg]) if (~bg).any() else float("nan"),
        "background_segment_accuracy": segment_accuracy(pred[bg], yt[bg]) if bg.any() else float("nan"),
        "background_share": float(bg.float().mean()),
        "confusion_matrix": cm.tolist(),
    }
    names = list(data.class_names) + ["background"]
    rows = cm.sum(1).clamp_min(1)
    per_class = [{"class": n, "accuracy": float(cm[i, i] / rows[i]), "n_test_segments": int(cm[i].sum())}
                 for i, n in enumerate(names)]
    if out_dir is not None:
        from .plots import save_confusion_matrix_png  # noqa: PLC0415

        save_confusion_matrix_png(Path(out_dir) / f"confusion_segments_{head}.png", cm, names,
                                  title=f"{data.name}: per-segment classes (test)")
    return {"metrics": metrics, "per_class": per_class, "fit": fit.to_json()}
