"""Sound-source segmentation on a frozen backbone (AVSBench S4, paper Table 4c).

The decoder (:class:`~avalanche_av.downstream.heads.SegmentationDecoder`) reads the video tokens
of one frame at several depths (``"multiscale"`` features: a few modality-specific blocks and
the shared blocks) plus that frame's audio vector (the frame's segment of the audio tokens, at the
modality-encoder output and the joint output), and predicts a mask at the dataset's mask resolution. It trains with BCE + Dice on
the annotated frames of the training split (AVSBench train clips: frame 1 only; the
synthetic stream: every frame, silent frames having an empty mask) and is selected on the
validation mIoU.

Metrics on the test split's annotated frames: mIoU (empty prediction on an empty mask = 1), the
AVSBench F-score (``β² = 0.3``, best over 255 thresholds, frames with a non-empty mask), and
the IoU per class (mean over the frames of the clips of each class).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .data import DownstreamData
from .features import FeatureExtractor
from .heads import SegmentationDecoder, bce_dice_loss, fit_head
from .metrics import AVSBENCH_THRESHOLDS, f_score_from_curves, mask_iou, precision_recall_curves

__all__ = ["run_segmentation"]


def _frame_items(valid: torch.Tensor, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip index, frame index) of every annotated frame of ``clips``."""
    v = valid[clips]
    ci, fi = torch.nonzero(v, as_tuple=True)
    return clips[ci], fi


def run_segmentation(
    data: DownstreamData,
    extractor: FeatureExtractor,
    out_dir: Optional[Path] = None,
    width: int = 64,
    use_audio: bool = True,
    max_epochs: int = 60,
    patience: int = 8,
    min_epochs: int = 15,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    eval_batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    n_overlays: int = 8,
) -> dict:
    """Train and evaluate the segmentation decoder.

    Returns:
        ``{"metrics": {...}, "per_class": [...], "fit": {...}}`` with ``mIoU``, ``F_score``,
        ``val_mIoU`` and, for reference, ``mIoU_empty`` (the score of predicting nothing).
    """
    data.require("masks", "segment")
    assert data.masks is not None and data.mask_size is not None
    c = extractor.model.config
    f = c.n_frames
    feats = extractor.get(data, ["multiscale", f"segments{f}"])
    ms = feats["multiscale"]  # (N, L, F, g, g, D) float16
    audio = feats[f"segments{f}"][..., : 2 * c.embed_dim]  # (N, F, 2D): each frame's audio part (two depths)
    valid = data.masks.valid_frames()
    size = data.mask_size
    tr_c, tr_f = _frame_items(valid, data.indices("train"))
    va_c, va_f = _frame_items(valid, data.indices("val"))
    te_c, te_f = _frame_items(valid, data.indices("test"))
    if len(tr_c) == 0 or len(va_c) == 0 or len(te_c) == 0:
        raise ValueError(f"dataset {data.name!r} needs annotated frames in train, val and test for segmentation")
    torch.manual_seed(seed)
    net = SegmentationDecoder(ms.shape[1], c.embed_dim, audio_dim=audio.shape[-1] if use_audio else 0, width=width)

    def forward(h, ci, fi):
        return h(ms[ci, :, fi].float(), audio[ci, fi].float() if use_audio else None, size)

    def masks_of(ci, fi):
        m, _ = data.masks.get_batch(ci)
        return m[torch.arange(len(ci)), fi]

    def loss_fn(h, idx):
        ci, fi = tr_c[idx], tr_f[idx]
        return bce_dice_loss(forward(h, ci, fi), masks_of(ci, fi))

    def evaluate(h, cs, fs, curves: bool = False):
        ious, precs, recs = [], [], []
        for lo in range(0, len(cs), eval_batch_size):
            ci, fi = cs[lo:lo + eval_batch_size], fs[lo:lo + eval_batch_size]
            prob = torch.sigmoid(forward(h, ci, fi))
            gt = masks_of(ci, fi)
            ious.append(mask_iou(prob > 0.5, gt))
            if curves:
                p, r = precision_recall_curves(prob, gt, AVSBENCH_THRESHOLDS)
                precs.append(p)
                recs.append(r)
        iou = torch.cat(ious)
        if not curves:
            return iou
        return iou, torch.cat(precs), torch.cat(recs)

    fit = fit_head(net, len(tr_c), loss_fn, lambda h: float(evaluate(h, va_c, va_f).mean()), max_epochs=max_epochs,
                   patience=patience, min_epochs=min_epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                   progress=progress, desc="segment")
    with torch.no_grad():
        iou, prec, rec = evaluate(net, te_c, te_f, curves=True)
        gt_all = torch.cat([masks_of(te_c[lo:lo + eval_batch_size], te_f[lo:lo + eval_batch_size]).flatten(1).any(1)
                            for lo in range(0, len(te_c), eval_batch_size)])
    metrics = {
        "use_audio": use_audio, "levels": extractor.levels, "n_train_frames": len(tr_c), "n_val_frames": len(va_c),
        "n_test_frames": len(te_c), "mIoU": float(iou.mean()), "F_score": f_score_from_curves(prec, rec),
        "val_mIoU": fit.best_val,
        "mIoU_nonempty": float(iou[gt_all].mean()) if gt_all.any() else float("nan"),
        # Predicting nothing scores 1 on every empty frame and 0 elsewhere.
        "mIoU_empty": float((~gt_all).float().mean()),
    }
    per_class = []
    if data.labels is not None and not data.multi_label:
        cls = data.labels[te_c]
        for k, name in enumerate(data.class_names):
            sel = cls == k
            per_class.append({"class": name, "IoU": float(iou[sel].mean()) if sel.any() else float("nan"),
                              "n_test_frames": int(sel.sum())})
    if out_dir is not None:
        from .plots import save_iou_bars_png, save_overlays_png  # noqa: PLC0415

        out_dir = Path(out_dir)
        if per_class:
            save_iou_bars_png(out_dir / "per_class_iou.png", [r["class"] for r in per_class], [r["IoU"] for r in per_class],
                              title=f"{data.name}: test IoU per class (mIoU {metrics['mIoU']:.3f})")
        # A few test frames with a sounding object first, then silent ones if any.
        order = torch.cat([torch.nonzero(gt_all).flatten(), torch.nonzero(~gt_all).flatten()])[:n_overlays]
        if len(order):
            ci, fi = te_c[order], te_f[order]
            with torch.no_grad():
                prob = torch.sigmoid(forward(net, ci, fi))
            frames = torch.stack([data.clips[int(i)][1][int(j)] for i, j in zip(ci, fi)])  # (K, 3, H, W) uint8
            save_overlays_png(out_dir / "overlays.png", frames, masks_of(ci, fi), prob > 0.5,
                              titles=[f"clip {int(i)} f{int(j)} IoU {float(iou[o]):.2f}" for i, j, o in zip(ci, fi, order)])
    return {"metrics": metrics, "per_class": per_class, "fit": fit.to_json()}
