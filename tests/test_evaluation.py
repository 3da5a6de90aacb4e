"""Tests of avalanche_av.evaluation: retrieval metrics, A / F, modality gap, RetrievalMetrics, plots."""

import json
import math
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from avalanche_av.evaluation import (
    RetrievalMetrics,
    av_evaluator,
    average_accuracy,
    class_recall_at_k,
    forgetting,
    forgetting_paper,
    get_retrieval_metrics,
    modality_gap,
    plot_accuracy_matrix,
    plot_metric_curves,
    recall_at_k,
    save_accuracy_matrix_png,
    similarity,
)

# --------------------------------------------------------------------------- functional

# 3 queries x 4 gallery items. Targets: q0 -> g0, q1 -> g1, q2 -> g2.
SIM = torch.tensor(
    [
        [0.9, 0.1, 0.2, 0.3],  # target score 0.9, nothing higher -> rank 0
        [0.5, 0.5, 0.7, 0.1],  # target 0.5 ties with g0; only 0.7 is strictly higher -> rank 1
        [0.8, 0.6, 0.4, 0.9],  # target 0.4; 0.8, 0.6, 0.9 higher -> rank 3
    ]
)
TARGET = torch.tensor([0, 1, 2])


def test_similarity_is_cosine_of_unnormalised_inputs():
    q = torch.tensor([[3.0, 4.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-6.0, -8.0]])
    s = similarity(q, g)
    assert s.shape == (1, 3)
    torch.testing.assert_close(s, torch.tensor([[0.6, 0.8, -1.0]]))
    # half-precision input is computed in float32
    assert similarity(q.half(), g.half()).dtype == torch.float32


def test_similarity_rejects_bad_shapes():
    with pytest.raises(ValueError, match="embedding dimension"):
        similarity(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        similarity(torch.zeros(3), torch.zeros(2, 3))


def test_recall_at_k_hand_computed_with_tie():
    # ranks (strictly-greater count) = [0, 1, 3]
    r = recall_at_k(SIM, TARGET, ks=(1, 2, 3, 4, 10))
    assert r[1] == pytest.approx(1 / 3)
    # q1's tie with g0 does not push it down: hit at k=2 (pessimistic ties would give 1/3)
    assert r[2] == pytest.approx(2 / 3)
    assert r[3] == pytest.approx(2 / 3)
    assert r[4] == pytest.approx(1.0)
    assert r[10] == pytest.approx(1.0)


def test_recall_at_k_errors_and_empty():
    with pytest.raises(ValueError, match="target_idx"):
        recall_at_k(SIM, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(SIM, TARGET, ks=(0,))
    empty = recall_at_k(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), ks=(1,))
    assert math.isnan(empty[1])


def test_class_recall_at_k_hand_computed():
    gallery_labels = torch.tensor([1, 1, 0, 2])
    query_labels = torch.tensor([0, 1, 2])
    # q0 (class 0): only g2 (0.2); 0.9 and 0.3 are higher -> rank 2
    # q1 (class 1): best of g0/g1 = 0.5; 0.7 higher -> rank 1
    # q2 (class 2): g3 = 0.9 is the top -> rank 0
    r = class_recall_at_k(SIM, query_labels, gallery_labels, ks=(1, 2, 3))
    assert r == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})

    # Excluding g3 from q2's ranking removes its only class-2 item -> q2 always misses.
    r = class_recall_at_k(SIM, query_labels, gallery_labels, ks=(1, 2, 3), exclude_self_idx=torch.tensor([-1, -1, 3]))
    assert r == pytest.approx({1: 0.0, 2: 1 / 3, 3: 2 / 3})

    # An unknown query label (-1) leaves that query out of the average.
    r = class_recall_at_k(SIM, torch.tensor([-1, 1, 2]), gallery_labels, ks=(1, 2))
    assert r == pytest.approx({1: 0.5, 2: 1.0})
    r = class_recall_at_k(SIM, torch.full((3,), -1), gallery_labels, ks=(1,))
    assert math.isnan(r[1])


# Accuracy matrix: row t = after training task t, column i = task i.
ACC = np.array(
    [
        [0.5, 0.8, 0.1],  # acc[0][1] = 0.8: zero-shot on task 1 *before* training it
        [0.3, 0.6, 0.3],
        [0.2, 0.4, 0.7],
    ]
)
# A       = (0.2 + 0.4 + 0.7) / 3                                   = 0.4333...
# F       : i=0: max(acc[0][0], acc[1][0]) - 0.2 = 0.5 - 0.2 = 0.3
#           i=1: max(acc[1][1])            - 0.4 = 0.6 - 0.4 = 0.2   -> F = 0.25
# F_paper : i=0: max(0.5, 0.3) - 0.2 = 0.3
#           i=1: max(acc[0][1]=0.8, acc[1][1]=0.6) - 0.4 = 0.4       -> F_paper = 0.35


def test_average_accuracy_and_forgetting_hand_computed():
    assert average_accuracy(ACC) == pytest.approx(1.3 / 3)
    assert forgetting(ACC) == pytest.approx(0.25)
    assert forgetting_paper(ACC) == pytest.approx(0.35)
    assert forgetting(torch.tensor(ACC)) == pytest.approx(0.25)


def test_forgetting_nan_rectangular_and_single_row():
    acc = ACC.copy()
    acc[0, 1] = np.nan  # not evaluated: F_paper falls back to acc[1][1]
    assert forgetting_paper(acc) == pytest.approx(0.25)
    assert forgetting(acc) == pytest.approx(0.25)
    # After two tasks: only the 2 trained tasks count by default.
    # A = (0.3 + 0.6) / 2; F: i=0: 0.5 - 0.3 = 0.2; F_paper identical.
    assert average_accuracy(ACC[:2]) == pytest.approx(0.45)
    assert forgetting(ACC[:2]) == pytest.approx(0.2)
    assert forgetting_paper(ACC[:2]) == pytest.approx(0.2)
    assert average_accuracy(ACC[:2], n_tasks=3) == pytest.approx(0.4)
    # One checkpoint: nothing to forget relative to -> NaN; A is the row mean of seen tasks.
    assert math.isnan(forgetting(ACC[:1]))
    assert math.isnan(forgetting_paper(ACC[:1]))
    assert average_accuracy(ACC[:1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2-D"):
        forgetting(np.zeros(3))


def test_modality_gap_hand_computed():
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised mean (0.5, 0.5)
    v = torch.tensor([[-1.0, 0.0], [0.0, -5.0]])  # normalised mean (-0.5, -0.5)
    assert modality_gap(a, v) == pytest.approx(math.sqrt(2.0))
    assert modality_gap(a, 7 * a) == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------------ RetrievalMetrics

D = 12
EYE = torch.eye(D)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
CLIP_IDS = torch.arange(D) + 100
VIDEO = EYE.clone()  # video of clip i = e_i; clips 0-5 are task 0, clips 6-11 task 1


def _audio_pointing_to_task0() -> torch.Tensor:
    """Task 0 aligned; task-1 audio i = 0.9 e_{i-6} + 0.1 e_i, i.e. it matches a task-0 video
    best and its own video second (only visible with the union gallery)."""
    a = EYE.clone()
    for i in range(6, 12):
        a[i] = 0.9 * EYE[i - 6] + 0.1 * EYE[i]
    return a


def _audio_task0_broken() -> torch.Tensor:
    """Task-0 audio i matches video (i+1)%6 best (R@1 = 0, R@2 = 1); task 1 aligned."""
    a = EYE.clone()
    for i in range(6):
        a[i] = 0.9 * EYE[(i + 1) % 6] + 0.1 * EYE[i]
    return a


def _strategy() -> SimpleNamespace:
    return SimpleNamespace(
        mb_output=None, mb_y=None, mb_clip_id=None, experience=None, clock=SimpleNamespace(train_iterations=0)
    )


def _run_eval(rm: RetrievalMetrics, s: SimpleNamespace, audio: torch.Tensor, batch: int = 4) -> dict:
    rm.before_eval(s)
    for task, idx in ((0, torch.arange(0, 6)), (1, torch.arange(6, 12))):
        s.experience = SimpleNamespace(current_experience=task, origin_stream=SimpleNamespace(name="test"))
        for b in idx.split(batch):
            s.mb_output = SimpleNamespace(emb_a_unmasked=audio[b], emb_v_unmasked=VIDEO[b])
            s.mb_y = LABELS[b]
            s.mb_clip_id = CLIP_IDS[b]
            rm.after_eval_iteration(s)
    return {mv.name: mv.value for mv in rm.after_eval(s)}


def _train_exp(rm: RetrievalMetrics, s: SimpleNamespace, iters: int) -> dict:
    rm.before_training_exp(s)
    for _ in range(iters):
        rm.after_training_iteration(s)
        s.clock.train_iterations += 1
    return {mv.name: mv.value for mv in rm.after_training_exp(s)}


def test_retrieval_metrics_union_gallery_and_per_task_values():
    rm = RetrievalMetrics(ks=(1, 2, 5))
    s = _strategy()
    out = _run_eval(rm, s, _audio_pointing_to_task0())
    p = "/eval_phase/test_stream"
    assert out[f"Retrieval_R@1_a2v{p}/Task000"] == pytest.approx(1.0)
    # With a per-task gallery task 1 would score 1.0; the union gallery holds the task-0 videos
    # that its audio matches better, so its own clip is always second.
    assert out[f"Retrieval_R@1_a2v{p}/Task001"] == pytest.approx(0.0)
    assert out[f"Retrieval_R@2_a2v{p}/Task001"] == pytest.approx(1.0)
    assert out[f"Retrieval_R@1_a2v{p}"] == pytest.approx(0.5)  # mean over tasks
    # v2a: every video's own audio is the best match (1.0 > 0.9/sqrt(0.82)).
    assert out[f"Retrieval_R@1_v2a{p}/Task000"] == pytest.approx(1.0)
    assert out[f"Retrieval_R@1_v2a{p}/Task001"] == pytest.approx(1.0)
    # Class level: the wrongly retrieved task-0 video has the same class.
    assert out[f"Retrieval_ClassR@1_a2v{p}/Task001"] == pytest.approx(1.0)
    # Modality gap: zero where audio == video, the functional value elsewhere.
    assert out[f"ModalityGap{p}/Task000"] == pytest.approx(0.0, abs=1e-6)
    gap1 = modality_gap(_audio_pointing_to_task0()[6:], VIDEO[6:])
    assert gap1 > 0.1
    assert out[f"ModalityGap{p}/Task001"] == pytest.approx(gap1)
    # Evaluated before any training: stored as the init row, not in the matrix, no A/F.
    assert rm.matrix("a2v", 1).shape == (0, 2)
    np.testing.assert_allclose(rm.init_scores("a2v", 1), [1.0, 0.0])
    assert not any("_A_" in name for name in out)
    assert rm.result()[f"Retrieval_R@1_a2v{p}/Task001"] == pytest.approx(0.0)


def test_retrieval_metrics_matrix_rows_and_periodic_evals():
    rm = RetrievalMetrics(ks=(1, 2, 5))
    s = _strategy()
    p = "/eval_phase/test_stream"
    _run_eval(rm, s, _audio_pointing_to_task0())  # init

    assert _train_exp(rm, s, iters=3) == {}
    out = _run_eval(rm, s, _audio_pointing_to_task0())  # after experience 0 -> row 0
    np.testing.assert_allclose(rm.matrix("a2v", 1), [[1.0, 0.0]])
    assert out[f"Retrieval_A_R@1_a2v{p}"] == pytest.approx(1.0)  # only task 0 seen
    assert f"Retrieval_F_R@1_a2v{p}" not in out  # undefined (NaN) after one experience

    # Periodic eval in the middle of experience 1 must not touch row 0 nor create row 1.
    rm.before_training_exp(s)
    rm.after_training_iteration(s)
    mid = _run_eval(rm, s, EYE)  # perfect alignment
    assert mid[f"Retrieval_R@1_a2v{p}/Task001"] == pytest.approx(1.0)
    np.testing.assert_allclose(rm.matrix("a2v", 1), [[1.0, 0.0]])
    rm.after_training_iteration(s)  # trained further: that eval is stale at the end
    assert rm.after_training_exp(s) == []
    assert rm.matrix("a2v", 1).shape == (1, 2)

    out = _run_eval(rm, s, _audio_task0_broken())  # after experience 1 -> row 1
    np.testing.assert_allclose(rm.matrix("a2v", 1), [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(rm.matrix("a2v", 2), [[1.0, 1.0], [1.0, 1.0]])
    assert out[f"Retrieval_A_R@1_a2v{p}"] == pytest.approx(0.5)
    assert out[f"Retrieval_F_R@1_a2v{p}"] == pytest.approx(1.0)
    assert out[f"Retrieval_Fpaper_R@1_a2v{p}"] == pytest.approx(1.0)
    assert out[f"Retrieval_A_ClassR@1_a2v{p}"] == pytest.approx(
        average_accuracy(rm.matrix("a2v", 1, level="class"))
    )

    # An eval after the last iteration of an experience is the end-of-experience model: promoted.
    rm.before_training_exp(s)
    rm.after_training_iteration(s)
    _run_eval(rm, s, EYE)
    promoted = {mv.name: mv.value for mv in rm.after_training_exp(s)}
    np.testing.assert_allclose(rm.matrix("a2v", 1), [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert rm.history[-1]["row"] == 2
    # F: i=0: max(1, 0) - 1 = 0; i=1: acc[1][1] - 1 = 0. F_paper: i=1 also sees acc[0][1] = 0.
    assert promoted[f"Retrieval_A_R@1_a2v{p}"] == pytest.approx(1.0)
    assert promoted[f"Retrieval_F_R@1_a2v{p}"] == pytest.approx(0.0)
    assert promoted[f"Retrieval_Fpaper_R@1_a2v{p}"] == pytest.approx(0.0)
    assert rm.summary_metric("F", "a2v", 1) == pytest.approx(0.0)
    assert rm.modality_gap_matrix().shape == (3, 2)

    d = rm.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON: NaN became None
    block = d["streams"]["test"]
    assert block["matrices"]["clip"]["a2v"]["1"] == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert block["init"]["clip"]["a2v"]["1"] == {"0": 1.0, "1": 0.0}
    assert block["A"]["clip"]["a2v"]["1"] == pytest.approx(1.0)
    assert [h["row"] for h in block["history"]] == ["init", 0, None, 1, 2]
    assert rm.results() == d


def test_retrieval_metrics_dedups_clip_ids_and_validates():
    rm = RetrievalMetrics(ks=(1, 2))
    s = _strategy()
    rm.before_eval(s)
    s.experience = SimpleNamespace(current_experience=0, origin_stream=SimpleNamespace(name="test"))
    # Audio 0 prefers video 1 (cos 0.89) over its own video 0 (cos 0.45): rank 1 in a gallery of
    # {v0, v1}. The same two clips are fed twice; without dedup by clip id the copy of v1 would
    # push the rank to 2 and R@2 would drop to 0.5.
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for _ in range(2):
        s.mb_output = SimpleNamespace(emb_a_unmasked=a, emb_v_unmasked=v)
        s.mb_y, s.mb_clip_id = torch.tensor([0, 1]), torch.tensor([7, 8])
        rm.after_eval_iteration(s)
    out = {mv.name: mv.value for mv in rm.after_eval(s)}
    assert out["Retrieval_R@1_a2v/eval_phase/test_stream/Task000"] == pytest.approx(0.5)
    assert out["Retrieval_R@2_a2v/eval_phase/test_stream/Task000"] == pytest.approx(1.0)
    assert rm.history[-1]["tasks"] == [0]

    s.mb_output = SimpleNamespace(emb_a_unmasked=a)
    with pytest.raises(ValueError, match="emb_v_unmasked"):
        rm.after_eval_iteration(s)
    with pytest.raises(ValueError, match="direction"):
        rm.matrix("x2y", 1)
    with pytest.raises(ValueError, match="ks"):
        RetrievalMetrics(ks=(0,))


def test_av_evaluator_builds_plugin():
    from avalanche.logging import InteractiveLogger
    from avalanche.training.plugins import EvaluationPlugin

    ev = av_evaluator(ks=(1, 5), class_level=False)
    assert isinstance(ev, EvaluationPlugin)
    assert any(isinstance(lg, InteractiveLogger) for lg in ev.loggers)
    rm = get_retrieval_metrics(ev)
    assert rm is ev.retrieval_metrics
    assert rm.ks == (1, 5) and not rm.class_level
    assert len(ev.metrics) > 1  # loss metrics too


# ------------------------------------------------------------------------------ plots


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_save_accuracy_matrix_png(tmp_path):
    m = np.array([[0.5, np.nan, 0.1], [0.3, 0.6, np.nan], [0.2, 0.4, 0.7]])
    path = save_accuracy_matrix_png(tmp_path / "sub" / "acc.png", m, task_names=["a", "b", "c"], title="R@5 a2v")
    assert path.exists() and path.stat().st_size > 2000
    w, h = _png_size(path)
    assert w > 100 and h > 100


def test_plot_functions_return_figures(tmp_path):
    from matplotlib.figure import Figure

    fig = plot_accuracy_matrix(torch.rand(2, 3))
    assert isinstance(fig, Figure)
    # Cell annotations: one text per finite value.
    assert len(fig.axes[0].texts) == 6
    curves = plot_metric_curves(np.array([[0.1, 0.2], [0.3, np.nan]]), title="curves")
    assert isinstance(curves, Figure) and len(curves.axes[0].lines) == 2
    same = plot_metric_curves({"A": [0.1, 0.2, 0.3]}, ax=curves.axes[0])
    assert same is curves and len(curves.axes[0].lines) == 3
    with pytest.raises(ValueError, match="task_names"):
        plot_accuracy_matrix(np.zeros((2, 2)), task_names=["x"])
