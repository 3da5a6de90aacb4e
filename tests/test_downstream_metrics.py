"""Downstream metric functions against hand-computed values, and the shared machinery.

Hand computations are written out next to each assertion.
"""
import math

import numpy as np
import pytest
import torch

from avalanche_av.downstream.features import segment_assignment, segment_pool
from avalanche_av.downstream.heads import dice_loss, fit_head
from avalanche_av.downstream.metrics import (
    average_precision,
    confusion_matrix,
    f_score,
    mask_iou,
    mean_average_precision,
    mean_iou,
    precision_recall_curves,
    segment_accuracy,
    topk_accuracy,
)


def test_topk_accuracy_hand_values_and_ties():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    target = torch.tensor([1, 0, 0])
    # Ranks of the true class (classes strictly above it): 0, 1 (0.4 > 0.3; the tie 0.3 does not count), 0.
    acc = topk_accuracy(scores, target, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(2 / 3) and acc[2] == 1.0 and acc[5] == 1.0
    with pytest.raises(ValueError, match="target values"):
        topk_accuracy(scores, torch.tensor([0, 1, 3]))


def test_average_precision_hand_values():
    # Positives at ranks 1, 3, 5: AP = (1/1 + 2/3 + 3/5) / 3 = 34/45.
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert average_precision(s, torch.tensor([1, 0, 1, 0, 1])) == pytest.approx(34 / 45)
    # Ties form one threshold: 0.9 -> (P 0, R 0); 0.5 (two items, one positive) -> (P 1/3, R 1/2);
    # 0.1 -> (P 1/2, R 1). AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12.
    assert average_precision(torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(5 / 12)
    assert math.isnan(average_precision(s, torch.zeros(5)))


def test_mean_average_precision_skips_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.9, 0.2], [0.7, 0.2, 0.9], [0.6, 0.3, 0.1], [0.5, 0.4, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    m, aps = mean_average_precision(scores, targets)
    # Class 0: 34/45 (above); class 1: its only positive scores highest, AP 1; class 2: no positive.
    assert aps[0] == pytest.approx(34 / 45) and aps[1] == pytest.approx(1.0) and math.isnan(aps[2])
    assert m == pytest.approx((34 / 45 + 1) / 2)


def test_segment_accuracy_and_confusion():
    pred = torch.tensor([[1, 2, 3], [0, 0, 0]])
    target = torch.tensor([[1, 2, 0], [0, 1, 0]])
    assert segment_accuracy(pred, target) == pytest.approx(4 / 6)
    valid = torch.tensor([[True, True, False], [True, True, False]])
    assert segment_accuracy(pred, target, valid) == pytest.approx(3 / 4)
    cm = confusion_matrix(pred, target, 4)
    assert cm.sum() == 6 and cm[0, 3] == 1 and cm[1, 0] == 1 and cm[0, 0] == 2 and cm.trace() == 4


def _frames():
    """Three 4x4 frames: (prob, gt)."""
    prob = torch.full((3, 4, 4), 0.1)
    gt = torch.zeros(3, 4, 4, dtype=torch.bool)
    prob[0, :2, :2] = 0.9  # predicted 2x2 block
    gt[0, 0, :] = True  # true top row: overlap 2 px, union 4 + 4 - 2 = 6 -> IoU 1/3, P 1/2, R 1/2
    # frame 1: nothing predicted above 0.5, nothing true -> IoU 1 (and no F-score: empty truth)
    prob[2, 3, 0] = 0.8  # 1 px predicted, inside a 2 px truth -> IoU 1/2, P 1, R 1/2
    gt[2, 3, :2] = True
    return prob, gt


def test_iou_and_miou_hand_values():
    prob, gt = _frames()
    iou = mask_iou(prob > 0.5, gt)
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.5])
    assert mean_iou(prob, gt) == pytest.approx((1 / 3 + 1 + 0.5) / 3)
    assert mean_iou(prob, gt, valid=torch.tensor([True, False, True])) == pytest.approx((1 / 3 + 0.5) / 2)


def test_f_score_hand_values():
    prob, gt = _frames()
    # Threshold 0.5 over the frames with a non-empty truth: mean P = (1/2 + 1)/2 = 3/4, mean R = 1/2.
    # F = 1.3 * 3/4 * 1/2 / (0.3 * 3/4 + 1/2) = 0.4875 / 0.725.
    assert f_score(prob, gt, thresholds=(0.5,)) == pytest.approx(0.4875 / 0.725)
    # Threshold 0.05 predicts every pixel: P = (4/16 + 2/16)/2 = 3/16, R = 1 -> F = 1.3*3/16 / (0.3*3/16 + 1);
    # the best over both thresholds is still the 0.5 one.
    low = 1.3 * 3 / 16 / (0.3 * 3 / 16 + 1)
    assert f_score(prob, gt, thresholds=(0.05,)) == pytest.approx(low)
    assert f_score(prob, gt, thresholds=(0.05, 0.5)) == pytest.approx(0.4875 / 0.725)
    assert math.isnan(f_score(prob[1:2], gt[1:2]))


def test_precision_recall_curves_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    prob = torch.rand(5, 6, 7, generator=g)
    gt = torch.rand(5, 6, 7, generator=g) > 0.6
    gt[2] = False  # an empty truth is dropped
    th = (0.1, 0.35, 0.5, 0.9)
    p, r = precision_recall_curves(prob, gt, th)
    assert p.shape == (4, 4)
    keep = [i for i in range(5) if gt[i].any()]
    for j, t in enumerate(th):
        for row, i in enumerate(keep):
            b = prob[i] > t
            tp = float((b & gt[i]).sum())
            assert p[row, j] == pytest.approx(tp / float(b.sum()) if b.any() else 0.0)
            assert r[row, j] == pytest.approx(tp / float(gt[i].sum()))


def test_dice_loss_extremes():
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[0, 2:5, 2:5] = True
    perfect = torch.where(gt, torch.tensor(20.0), torch.tensor(-20.0))
    assert float(dice_loss(perfect, gt)) < 1e-3  # the empty frame costs ~0 thanks to the smoothing
    assert float(dice_loss(-perfect, gt)) > 0.45


def test_segment_pool_planted_time_values():
    b, d, n_freq, g = 1, 2, 3, 2
    n_time, n_frames = 8, 4
    ta = torch.arange(n_time).float().repeat_interleave(n_freq)[None, :, None].expand(b, -1, d)
    tv = torch.arange(n_frames).float().repeat_interleave(g * g)[None, :, None].expand(b, -1, d)
    out = segment_pool(ta, tv, n_time, n_frames, 4)
    # Segment s holds time steps 2s and 2s+1 (mean 2s + 0.5) and frame s.
    assert out[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert out[0, :, d].tolist() == [0, 1, 2, 3]
    out10 = segment_pool(ta, tv, n_time, n_frames, 10)
    # Ten segments over four frames: each reads the frame under its centre.
    assert out10[0, :, d].tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    # ... and over eight time steps: segments 2 and 7 hold no step centre and read steps 2 and 6.
    assert out10[0, :, 0].tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7]
    w = segment_assignment(8, 4)
    assert torch.allclose(w.sum(1), torch.ones(4))


def test_fit_head_keeps_the_best_validation_epoch():
    # The validation score is scripted: best at epoch 3, then worse -> early stop after patience 2,
    # and the head's weights are those after epoch 3.
    head = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(head.weight)
    script = iter([0.1, 0.2, 0.9, 0.5, 0.4, 0.3])
    snapshots = []

    def loss(h, idx):
        return -(h.weight.sum())  # gradient pushes the weight up every step

    def val(h):
        snapshots.append(float(h.weight.detach()))
        return next(script)

    res = fit_head(head, n_train=4, train_step_loss=loss, val_score=val, max_epochs=6, patience=2, lr=0.1,
                   weight_decay=0.0, batch_size=4, progress=False)
    assert res.best_epoch == 3 and res.epochs_run == 5 and res.best_val == pytest.approx(0.9)
    assert float(head.weight.detach()) == pytest.approx(snapshots[2])
    assert snapshots[4] > snapshots[2]
