"""Pure tensor functions for zero-shot audio-video retrieval and continual-learning metrics.

Nothing here keeps state; the Avalanche plugin in :mod:`avalanche_av.evaluation.metrics`
collects embeddings and calls these functions.

Conventions
-----------
* ``Q`` queries, ``G`` gallery items, ``D`` embedding dimension, ``N`` paired clips.
* Accuracy matrices ``acc`` have shape ``(R, C)``: row ``t`` holds the scores measured after
  training experience ``t`` had been completed (``t = 0 .. R-1``), column ``i`` is the evaluated
  task. ``NaN`` marks a score that was never measured.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "similarity",
    "recall_at_k",
    "class_recall_at_k",
    "average_accuracy",
    "forgetting",
    "forgetting_paper",
    "modality_gap",
]


def _check_2d(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if len(ks) == 0:
        raise ValueError("ks must contain at least one k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must be positive integers, got {ks!r}")
    return tuple(int(k) for k in ks)


def similarity(emb_q: torch.Tensor, emb_g: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every query and every gallery embedding.

    Args:
        emb_q: ``(Q, D)`` query embeddings, normalised or not.
        emb_g: ``(G, D)`` gallery embeddings, normalised or not.

    Returns:
        ``(Q, G)`` float tensor of cosine similarities. Rows are L2-normalised here, so a
        zero vector gets similarity 0 with everything.
    """
    _check_2d(emb_q, "emb_q")
    _check_2d(emb_g, "emb_g")
    if emb_q.shape[1] != emb_g.shape[1]:
        raise ValueError(
            f"emb_q and emb_g must share the embedding dimension, got {emb_q.shape[1]} and {emb_g.shape[1]}"
        )
    if not emb_q.is_floating_point():
        emb_q = emb_q.float()
    if not emb_g.is_floating_point():
        emb_g = emb_g.float()
    # Half precision loses ranking resolution on large galleries; compute in at least fp32.
    dtype = torch.promote_types(torch.promote_types(emb_q.dtype, emb_g.dtype), torch.float32)
    q = F.normalize(emb_q.to(dtype), dim=1)
    g = F.normalize(emb_g.to(dtype), dim=1)
    return q @ g.T


def _target_ranks(sim: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` 0-based rank of each query's target: the count of strictly higher scores."""
    _check_2d(sim, "sim")
    if not isinstance(target_idx, torch.Tensor) or target_idx.dim() != 1:
        raise ValueError("target_idx must be a 1-D tensor of gallery indices, shape (Q,)")
    if target_idx.shape[0] != sim.shape[0]:
        raise ValueError(
            f"target_idx has {target_idx.shape[0]} entries but sim has {sim.shape[0]} query rows"
        )
    if target_idx.dtype.is_floating_point or target_idx.dtype == torch.bool:
        raise ValueError(f"target_idx must be an integer tensor, got {target_idx.dtype}")
    target_idx = target_idx.to(device=sim.device, dtype=torch.long)
    if target_idx.numel() and (int(target_idx.min()) < 0 or int(target_idx.max()) >= sim.shape[1]):
        raise ValueError(f"target_idx values must lie in [0, {sim.shape[1] - 1}] (the gallery size)")
    target_score = sim.gather(1, target_idx[:, None])
    return (sim > target_score).sum(dim=1)


def recall_at_k(
    sim: torch.Tensor, target_idx: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Instance-level Recall@k.

    A query is a hit at ``k`` when its correct gallery item ranks within the top ``k``.
    Ties: the rank of the target is the number of gallery items with a **strictly greater**
    score, so tied items never push the target down (optimistic tie handling). This keeps
    the metric deterministic, unlike ``torch.topk`` whose order among ties is unspecified.

    Args:
        sim: ``(Q, G)`` similarity matrix, higher is more similar.
        target_idx: ``(Q,)`` integer tensor, index of each query's correct gallery item.
        ks: cut-offs; ``k`` larger than ``G`` simply counts every query as a hit.

    Returns:
        ``{k: fraction of hits}`` as Python floats; ``NaN`` for every ``k`` if ``Q == 0``.
    """
    ks = _check_ks(ks)
    ranks = _target_ranks(sim, target_idx)
    if ranks.numel() == 0:
        return {k: float("nan") for k in ks}
    return {k: float((ranks < k).float().mean()) for k in ks}


def class_recall_at_k(
    sim: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    exclude_self_idx: Optional[torch.Tensor] = None,
) -> dict[int, float]:
    """Class-level Recall@k: a hit when any of the top ``k`` gallery items has the query's class.

    Ties use the same rule as :func:`recall_at_k`: a gallery item is within the top ``k`` when
    fewer than ``k`` items score strictly higher. Hence a query is a hit iff its best-scoring
    same-class gallery item has fewer than ``k`` strictly better competitors.

    Labels equal to ``-1`` mean "unknown": such queries are left out of the average and such
    gallery items never count as a match. A labelled query whose class is absent from the
    gallery counts as a miss.

    Args:
        sim: ``(Q, G)`` similarity matrix.
        query_labels: ``(Q,)`` integer class of each query.
        gallery_labels: ``(G,)`` integer class of each gallery item.
        ks: cut-offs.
        exclude_self_idx: optional ``(Q,)`` integer tensor; entry ``q`` is a gallery index removed
            from query ``q``'s ranking (e.g. its own paired clip), or ``-1`` to remove nothing.

    Returns:
        ``{k: fraction of hits}`` over queries with a known label; ``NaN`` when there are none.
    """
    ks = _check_ks(ks)
    _check_2d(sim, "sim")
    n_q, n_g = sim.shape
    for name, lab, n in (("query_labels", query_labels, n_q), ("gallery_labels", gallery_labels, n_g)):
        if not isinstance(lab, torch.Tensor) or lab.dim() != 1 or lab.shape[0] != n:
            raise ValueError(f"{name} must be a 1-D tensor with {n} entries (matching sim)")
        if lab.dtype.is_floating_point:
            raise ValueError(f"{name} must be an integer tensor, got {lab.dtype}")
    q_lab = query_labels.to(device=sim.device, dtype=torch.long)
    g_lab = gallery_labels.to(device=sim.device, dtype=torch.long)
    if exclude_self_idx is not None:
        if not isinstance(exclude_self_idx, torch.Tensor) or exclude_self_idx.shape != (n_q,):
            raise ValueError(f"exclude_self_idx must be a tensor of shape ({n_q},)")
        ex = exclude_self_idx.to(device=sim.device, dtype=torch.long)
        if ex.numel() and (int(ex.min()) < -1 or int(ex.max()) >= n_g):
            raise ValueError(f"exclude_self_idx values must be -1 or lie in [0, {n_g - 1}]")
        rows = torch.nonzero(ex >= 0).squeeze(1)
        sim = sim.clone()  # never modify the caller's matrix
        # -inf makes the excluded item both unrankable and never the best same-class match.
        sim[rows, ex[rows]] = float("-inf")

    valid_q = q_lab >= 0
    n_valid = int(valid_q.sum())
    if n_valid == 0:
        return {k: float("nan") for k in ks}
    if n_g == 0:
        return {k: 0.0 for k in ks}
    same = (q_lab[:, None] == g_lab[None, :]) & (g_lab[None, :] >= 0)
    neg_inf = torch.full((), float("-inf"), dtype=sim.dtype, device=sim.device)
    # (Q, 1) best score among gallery items of the query's class; -inf when there is none.
    best_same = torch.where(same, sim, neg_inf).amax(dim=1, keepdim=True)
    counted = valid_q & torch.isfinite(best_same.squeeze(1))
    rank = (sim > best_same).sum(dim=1)
    return {k: float(((rank < k) & counted).sum()) / n_valid for k in ks}


def _as_matrix(acc: "np.ndarray | torch.Tensor | Sequence[Sequence[float]]") -> np.ndarray:
    if isinstance(acc, torch.Tensor):
        acc = acc.detach().cpu().numpy()
    m = np.asarray(acc, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"acc must be a 2-D accuracy matrix (rows: checkpoints, cols: tasks), got shape {m.shape}")
    return m


def _n_cols(m: np.ndarray, n_tasks: Optional[int]) -> int:
    if n_tasks is None:
        # Only tasks trained so far count; row t was measured after training task t.
        return min(m.shape[0], m.shape[1])
    if n_tasks < 1 or n_tasks > m.shape[1]:
        raise ValueError(f"n_tasks must lie in [1, {m.shape[1]}] (the number of columns of acc), got {n_tasks}")
    return int(n_tasks)


def average_accuracy(acc: "np.ndarray | torch.Tensor", n_tasks: Optional[int] = None) -> float:
    """Average accuracy A = mean over tasks ``i`` of ``acc[R-1][i]`` (the last checkpoint).

    Args:
        acc: ``(R, C)`` accuracy matrix (see module docstring); NaN entries are ignored.
        n_tasks: number of leading task columns to average. Default ``min(R, C)``, i.e. the tasks
            trained so far, which is all ``T`` tasks for a square ``(T, T)`` matrix. Pass ``C`` to
            average over every task (e.g. for joint multitask training, a single row).

    Returns:
        A as a float; ``NaN`` when the matrix is empty or every entry used is NaN.
    """
    m = _as_matrix(acc)
    if m.size == 0:
        return float("nan")
    last = m[-1, : _n_cols(m, n_tasks)]
    if np.all(np.isnan(last)):
        return float("nan")
    return float(np.nanmean(last))


def _forgetting(m: np.ndarray, n_tasks: Optional[int], from_task: bool) -> float:
    n_rows = m.shape[0]
    if m.size == 0 or n_rows < 2:
        return float("nan")
    n = _n_cols(m, n_tasks)
    final = m[-1]
    per_task = []
    # The task trained last (index R-1) has no earlier checkpoint after its own training.
    for i in range(min(n, n_rows - 1)):
        start = i if from_task else 0
        earlier = m[start : n_rows - 1, i]
        if np.isnan(final[i]) or np.all(np.isnan(earlier)):
            continue
        per_task.append(np.nanmax(earlier) - final[i])
    if not per_task:
        return float("nan")
    return float(np.mean(per_task))


def forgetting(acc: "np.ndarray | torch.Tensor", n_tasks: Optional[int] = None) -> float:
    """Textbook average forgetting.

    ``F = mean over i < R-1 of max over t in [i, R-2] of (acc[t][i] - acc[R-1][i])``: only
    checkpoints taken after task ``i`` was trained count as its reference.

    Args:
        acc: ``(R, C)`` accuracy matrix; NaN entries are ignored (a task whose final score or
            all of whose reference scores are NaN is skipped).
        n_tasks: tasks (leading columns) considered; default ``min(R, C)``.

    Returns:
        F as a float. ``NaN`` when ``R < 2`` (a single checkpoint has nothing to forget
        relative to) or when no task has the scores needed. Negative values mean backward
        transfer.
    """
    return _forgetting(_as_matrix(acc), n_tasks, from_task=True)


def forgetting_paper(acc: "np.ndarray | torch.Tensor", n_tasks: Optional[int] = None) -> float:
    """Forgetting as written in the STELLA paper (Sec. 5.1).

    ``F_paper = mean over i < R-1 of max over t in [0, R-2] of (acc[t][i] - acc[R-1][i])``: the
    max runs over **all** earlier checkpoints, including those taken before task ``i`` was
    trained (zero-shot retrieval can be scored on a task the model has not seen yet). It is
    therefore always ``>=`` :func:`forgetting` on the same matrix. Same NaN and ``R < 2``
    handling as :func:`forgetting`.
    """
    return _forgetting(_as_matrix(acc), n_tasks, from_task=False)


def modality_gap(emb_a: torch.Tensor, emb_v: torch.Tensor) -> float:
    """Modality gap ``|| mean(normalise(a)) - mean(normalise(v)) ||_2``.

    Args:
        emb_a: ``(N, D)`` audio embeddings (normalised here).
        emb_v: ``(M, D)`` video embeddings (normalised here); usually ``M == N`` (paired clips).

    Returns:
        The gap as a float in ``[0, 2]``; ``NaN`` if either set is empty.
    """
    _check_2d(emb_a, "emb_a")
    _check_2d(emb_v, "emb_v")
    if emb_a.shape[1] != emb_v.shape[1]:
        raise ValueError(
            f"emb_a and emb_v must share the embedding dimension, got {emb_a.shape[1]} and {emb_v.shape[1]}"
        )
    if emb_a.shape[0] == 0 or emb_v.shape[0] == 0:
        return float("nan")
    a = F.normalize(emb_a.float(), dim=1).mean(dim=0)
    v = F.normalize(emb_v.float(), dim=1).mean(dim=0)
    return float(torch.linalg.vector_norm(a - v))
