"""STELLA patch scoring and selection as pure, batch-vectorised tensor functions.

Everything here is stateless and works on a whole batch at once (no per-sample
Python loops), so it can run on every training step. Notation follows the
paper's Sec. 4 (equations below are the paper's; Algorithm 1 is in its
Appendix H; our departures are listed in docs/deviations.md):

* ``B`` batch, ``H`` AVM heads, ``d`` head size, ``N`` patches of one modality;
* audio patches are laid out **time-major**: ``index = t * n_freq + f``;
* video patches are laid out **frame-major**: ``index = frame * (h * w) + pos``;
* κ (``kappa``) is the number of patches **kept** (``κ = ρ · N``).

Pipeline per step (the plugin wires it):

1. :func:`importance` on the AVM's cross-attention logits (Eq. 2); defined in
   :mod:`avalanche_av.models.avm` and re-exported here.
2. :func:`top_candidates` and :func:`pooled_query` (Eq. 3).
3. Once memory is non-empty, :func:`correlation_prob` against a memory
   sample's stored pooled query of the *other* modality (Eq. 4), then
   :func:`bernoulli_exclusion`.
4. :func:`select_video` and :func:`select_audio_time_chunks` (Eq. 5-6,
   Algorithm 1).

Random draws take an optional ``torch.Generator``; it must live on the same
device as the tensors (``None`` uses the global RNG of that device).

Sampling without replacement is done with the exponential-race (Gumbel-top-k)
trick: with ``E_i ~ Exp(1)`` i.i.d., sorting ``log w_i - log E_i`` in
descending order yields exactly the distribution of sequential multinomial
sampling without replacement in proportion to ``w``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# The importance readout (Eq. 2) belongs to the AVM and lives with it in ``models``, so that
# evaluation can use it without importing training; re-exported here for the selection pipeline.
from ..models.avm import importance

__all__ = [
    "importance",
    "top_candidates",
    "candidate_mask",
    "pooled_query",
    "correlation_prob",
    "bernoulli_exclusion",
    "sample_order",
    "select_video",
    "chunk_importance",
    "audio_chunks_from_order",
    "select_audio_time_chunks",
    "select_audio_frequency",
    "select_audio_none",
    "select_random",
    "mats_scores",
]


# --------------------------------------------------------------------------- helpers


def _check_2d(name: str, x: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be (B, N), got shape {tuple(x.shape)}")


def _check_kappa(kappa: int, n: int, fn: str) -> None:
    if not 1 <= kappa <= n:
        raise ValueError(f"{fn}: kappa must be in [1, {n}] (the number of patches), got {kappa}")


def _exp_noise(shape: torch.Size, device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """``Exp(1)`` noise, bounded away from 0 so that its log stays finite."""
    e = torch.empty(shape, device=device, dtype=torch.float32).exponential_(generator=generator)
    return e.clamp_min(torch.finfo(torch.float32).tiny)


def _tiered_order(tier: Tensor, key: Tensor) -> Tensor:
    """Argsort rows by ``tier`` descending, then ``key`` descending.

    Args:
        tier: ``(B, N)`` integer tier (higher first).
        key: ``(B, N)`` float key inside a tier (higher first).

    Returns:
        ``(B, N)`` int64 order.
    """
    # Two stable sorts give a lexicographic order without mixing scales.
    by_key = torch.argsort(key, dim=1, descending=True, stable=True)
    by_tier = torch.argsort(tier.gather(1, by_key), dim=1, descending=True, stable=True)
    return by_key.gather(1, by_tier)


# --------------------------------------------------------------------------- scores


def top_candidates(importance: Tensor, kappa: int) -> Tensor:
    """Indices of the κ most important patches.

    Args:
        importance: ``(B, N)`` scores.
        kappa: number of candidates, ``1 <= kappa <= N``.

    Returns:
        ``(B, kappa)`` int64 indices, ordered by decreasing importance.
    """
    _check_2d("top_candidates: importance", importance)
    _check_kappa(kappa, importance.shape[1], "top_candidates")
    return torch.topk(importance, kappa, dim=1).indices


def candidate_mask(cand_idx: Tensor, n: int) -> Tensor:
    """Boolean mask of candidate positions.

    Args:
        cand_idx: ``(B, kappa)`` int64 indices in ``[0, n)``.
        n: number of patches ``N``.

    Returns:
        ``(B, N)`` bool, True at candidate positions.
    """
    _check_2d("candidate_mask: cand_idx", cand_idx)
    mask = torch.zeros(cand_idx.shape[0], n, dtype=torch.bool, device=cand_idx.device)
    return mask.scatter_(1, cand_idx, True)


def pooled_query(q: Tensor, importance: Tensor, cand_idx: Tensor) -> Tensor:
    """Importance-weighted mean of the queries of the top-κ candidates (Eq. 3).

    Args:
        q: ``(B, H, N, d)`` AVM queries of one modality.
        importance: ``(B, N)`` that modality's importance (the weights).
        cand_idx: ``(B, kappa)`` candidate indices (:func:`top_candidates`).

    Returns:
        ``(B, H, d)`` pooled query in ``q``'s dtype. A row whose candidate
        weights sum to 0 falls back to the plain mean over its candidates.
    """
    if q.dim() != 4:
        raise ValueError(f"pooled_query: q must be (B, H, N, d), got {tuple(q.shape)}")
    _check_2d("pooled_query: importance", importance)
    _check_2d("pooled_query: cand_idx", cand_idx)
    b, h, n, d = q.shape
    if importance.shape != (b, n) or cand_idx.shape[0] != b:
        raise ValueError(
            f"pooled_query: shapes disagree: q {tuple(q.shape)}, importance {tuple(importance.shape)}, "
            f"cand_idx {tuple(cand_idx.shape)}"
        )
    k = cand_idx.shape[1]
    q_c = q.gather(2, cand_idx[:, None, :, None].expand(b, h, k, d)).float()  # (B, H, k, d)
    w = importance.gather(1, cand_idx).float().clamp_min(0.0)  # (B, k)
    w_sum = w.sum(dim=1, keepdim=True)
    w = torch.where(w_sum > 0, w / w_sum.clamp_min(1e-30), torch.full_like(w, 1.0 / k))
    return torch.einsum("bhkd,bk->bhd", q_c, w).to(q.dtype)


def correlation_prob(k: Tensor, q_past: Tensor, q_cur: Tensor, cand_mask: Tensor) -> Tensor:
    """Probability of excluding each patch for being more tied to the past (Eq. 4).

    Pairing (paper Sec. 4.2 leaves it open; this is what the authors' code
    does): each current sample is paired with **one** random memory
    sample, and the keys of one modality are compared with pooled queries of
    the **other** modality: video keys ``k = k_v`` go with the memory sample's
    stored pooled *audio* query ``q_past`` and the current sample's pooled
    *audio* query ``q_cur`` (and audio keys with pooled video queries).

    Per head ``h`` and patch ``j``: ``past = q_past·k_j / sqrt(d)``,
    ``cur = q_cur·k_j / sqrt(d)`` (no temperature);
    ``p_j = mean_h softmax([past, cur])[0] = mean_h sigmoid(past - cur)``.
    Non-candidates get ``p = 0``.

    Args:
        k: ``(B, H, N, d)`` current keys of one modality.
        q_past: ``(B, H, d)`` stored pooled query (other modality) of the paired
            memory sample.
        q_cur: ``(B, H, d)`` current pooled query (other modality).
        cand_mask: ``(B, N)`` bool, True for the top-κ candidates.

    Returns:
        ``(B, N)`` float32 probabilities in ``[0, 1]``.
    """
    if k.dim() != 4 or q_past.dim() != 3 or q_cur.dim() != 3:
        raise ValueError(
            f"correlation_prob: expected k (B, H, N, d), q_past/q_cur (B, H, d); got "
            f"{tuple(k.shape)}, {tuple(q_past.shape)}, {tuple(q_cur.shape)}"
        )
    b, h, n, d = k.shape
    if q_past.shape != (b, h, d) or q_cur.shape != (b, h, d) or cand_mask.shape != (b, n):
        raise ValueError(
            f"correlation_prob: shapes disagree: k {tuple(k.shape)}, q_past {tuple(q_past.shape)}, "
            f"q_cur {tuple(q_cur.shape)}, cand_mask {tuple(cand_mask.shape)}"
        )
    # softmax over two logits == sigmoid of their difference; one einsum for both.
    q_diff = (q_past.float() - q_cur.float()) / math.sqrt(d)
    p = torch.sigmoid(torch.einsum("bhnd,bhd->bhn", k.float(), q_diff)).mean(dim=1)
    return torch.where(cand_mask.bool(), p, torch.zeros_like(p))


def bernoulli_exclusion(p: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw the exclusion mask ``F ~ Bernoulli(p)`` (True = drop this step).

    Args:
        p: ``(B, N)`` probabilities; values are clamped to ``[0, 1]``.
        generator: optional generator on ``p``'s device.

    Returns:
        ``(B, N)`` bool. ``p = 1`` is always excluded, ``p = 0`` never.
    """
    u = torch.rand(p.shape, device=p.device, generator=generator)  # in [0, 1)
    return u < p.float().clamp(0.0, 1.0)


def sample_order(weights: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """A full random order of each row, as sequential multinomial sampling
    without replacement in proportion to ``weights``.

    Entries with non-positive (or NaN) weight cannot be drawn by a multinomial;
    they come after all positive ones, in uniformly random order.

    Args:
        weights: ``(B, N)`` non-negative weights.
        generator: optional generator on ``weights``' device.

    Returns:
        ``(B, N)`` int64 permutation per row (first = drawn first).
    """
    _check_2d("sample_order: weights", weights)
    w = weights.float()
    pos = w > 0
    log_e = _exp_noise(w.shape, w.device, generator).log()
    key = torch.where(pos, w.clamp_min(torch.finfo(torch.float32).tiny).log(), torch.zeros_like(w)) - log_e
    return _tiered_order(pos.long(), key)


# --------------------------------------------------------------------------- video


def select_video(
    importance: Tensor,
    excluded: Tensor,
    kappa: int,
    first_step: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Choose κ_v video patches (Eq. 5-6).

    The importance of excluded patches is set to 0 and κ patches are drawn by
    multinomial sampling without replacement over **all** patches, in
    proportion to the remaining importance. With ``first_step=True`` (empty
    memory) the plain top-κ of the remaining importance is taken instead.

    Fallback, when fewer than κ patches are non-excluded with positive
    importance: all of those are taken, then non-excluded zero-importance
    patches in uniformly random order, then — only if still short — excluded
    patches, drawn in proportion to their original importance (zero-importance
    ones last, randomly). So no patch is ever repeated, and an excluded patch
    is only picked when it is unavoidable. Non-positive or NaN importances count
    as zero.

    Args:
        importance: ``(B, N)`` non-negative importance.
        excluded: ``(B, N)`` bool exclusion mask (:func:`bernoulli_exclusion`).
        kappa: number of patches to keep, ``1 <= kappa <= N``.
        first_step: deterministic top-κ instead of sampling.
        generator: optional generator on ``importance``' device.

    Returns:
        ``(B, kappa)`` int64 unique indices per row, sorted ascending.
    """
    _check_2d("select_video: importance", importance)
    if excluded.shape != importance.shape:
        raise ValueError(
            f"select_video: excluded {tuple(excluded.shape)} must match importance {tuple(importance.shape)}"
        )
    _check_kappa(kappa, importance.shape[1], "select_video")
    w = importance.float()
    pos = w > 0
    excl = excluded.bool()
    # Tiers, best first: kept & positive (sampled by importance), kept & zero
    # (random fill), excluded & positive (by original importance), excluded & zero.
    tier = 2 * (~excl).long() + pos.long()
    log_w = torch.where(pos, w.clamp_min(torch.finfo(torch.float32).tiny).log(), torch.zeros_like(w))
    if first_step:
        # Positive-weight tiers are ordered by importance (top-κ); zero-weight
        # tiers keep a random order (their key is noise either way).
        key = torch.where(pos, w, -_exp_noise(w.shape, w.device, generator).log())
    else:
        key = log_w - _exp_noise(w.shape, w.device, generator).log()
    order = _tiered_order(tier, key)
    return order[:, :kappa].sort(dim=1).values


# --------------------------------------------------------------------------- audio


def chunk_importance(importance: Tensor, n_time: int, n_freq: int, chunk_size: int = 4) -> Tensor:
    """Importance of audio time chunks (Algorithm 1, lines 1-2).

    Per-time importance is the sum over the frequency patches; a chunk's
    importance is the **mean** of its per-time importances over its ``L_c``
    time steps. When ``n_time`` is not a multiple of ``chunk_size`` the last
    chunk is partial and is averaged over its actual length (so its time steps
    stay selectable).

    Args:
        importance: ``(B, n_time * n_freq)``, time-major.
        n_time, n_freq: patch grid.
        chunk_size: ``L_c >= 1``.

    Returns:
        ``(B, ceil(n_time / chunk_size))`` float32.
    """
    _check_2d("chunk_importance: importance", importance)
    if importance.shape[1] != n_time * n_freq:
        raise ValueError(
            f"chunk_importance: importance has {importance.shape[1]} patches, expected n_time*n_freq = "
            f"{n_time}*{n_freq}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_importance: chunk_size must be >= 1, got {chunk_size}")
    b = importance.shape[0]
    n_chunks = -(-n_time // chunk_size)
    per_time = importance.float().reshape(b, n_time, n_freq).sum(dim=2)
    pad = n_chunks * chunk_size - n_time
    sums = F.pad(per_time, (0, pad)).reshape(b, n_chunks, chunk_size).sum(dim=2)
    lengths = torch.full((n_chunks,), float(chunk_size), device=importance.device)
    lengths[-1] = chunk_size - pad
    return sums / lengths


def _walk_chunks(avail: Tensor, chunk_order: Tensor, quota: Tensor, start_side: Tensor, n_groups: int) -> Tensor:
    """Algorithm 1's walk, vectorised over the batch.

    Walks the chunks in ``chunk_order``, taking every available patch of each
    chunk while the running total stays ``<= quota``; the chunk that crosses
    the quota is trimmed to exactly fill it, keeping the part that adjoins a
    neighbour chunk walked before it (``start_side`` decides when neither or
    both were); later chunks are dropped.

    "Walked" includes a neighbour that had no available patch (all excluded):
    as in the authors' code, which checks whether the neighbour's index appears
    earlier in the chunk order, not whether it gave patches.

    The chunks may form ``n_groups`` consecutive groups of ``C`` chunks each
    (one group per pass of :func:`audio_chunks_from_order`); neighbours are
    only looked up inside a chunk's own group.

    Args:
        avail: ``(B, G*C, L)`` bool, available patches of each chunk, each chunk
            flattened time-major (padding positions False).
        chunk_order: ``(B, G*C)`` int64 walk order (a permutation).
        quota: ``(B,)`` int64, ``0 <= quota <= avail.sum(dim=(1, 2))``.
        start_side: ``(B,)`` bool; True keeps the earliest patches of an
            ambiguous partial chunk, False the latest.
        n_groups: ``G``.

    Returns:
        ``(B, G*C, L)`` bool, exactly ``quota`` True per row, a subset of ``avail``.
    """
    b, gc, _ = avail.shape
    c = gc // n_groups
    rows = torch.arange(b, device=avail.device)
    cnt = avail.sum(dim=2)  # (B, G*C)
    cnt_ord = cnt.gather(1, chunk_order)
    cum = cnt_ord.cumsum(dim=1)  # running total in walk order
    prev = cum - cnt_ord
    q = quota[:, None]
    partial_ord = (prev < q) & (cum > q)  # at most one position per row
    # Back from walk order to chunk order (inverse permutation by scatter).
    full = torch.empty_like(partial_ord).scatter_(1, chunk_order, cum <= q)
    # Every chunk walked before the crossing one has cum <= q; a walked chunk counts for the
    # trim side even when all its patches were excluded (the authors' rule).
    walked = full

    has_partial = partial_ord.any(dim=1)
    j_star = partial_ord.to(torch.uint8).argmax(dim=1, keepdim=True)  # walk position
    c_star = chunk_order.gather(1, j_star).squeeze(1)  # its chunk index
    need = (q - prev).gather(1, j_star).squeeze(1)
    # Pad each group by one chunk on both sides; neighbours of chunk v sit at
    # padded positions v' and v' + 2 of its group.
    padded = F.pad(walked.reshape(b, n_groups, c), (1, 1)).reshape(b, n_groups * (c + 2))
    pos = (c_star // c) * (c + 2) + c_star % c
    left = padded[rows, pos]
    right = padded[rows, pos + 2]
    from_start = torch.where(left != right, left, start_side.bool())

    part_avail = avail[rows, c_star]  # (B, L)
    rank = torch.where(
        from_start[:, None],
        part_avail.cumsum(dim=1),
        part_avail.flip(1).cumsum(dim=1).flip(1),
    )
    keep = part_avail & (rank <= need[:, None]) & has_partial[:, None]

    take = avail & full[:, :, None]
    take[rows, c_star] |= keep
    return take


def _true_positions(mask: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` True entries of each row of ``mask`` ``(B, N)``, ascending.

    Every row must hold exactly ``k`` True values. Uses a cumsum/scatter instead
    of ``nonzero`` (no host sync) or a sort (slower).
    """
    b, n = mask.shape
    slot = torch.where(mask, mask.cumsum(dim=1) - 1, k)  # non-selected go to a spill column
    src = torch.arange(n, device=mask.device).expand(b, n)
    out = torch.zeros(b, k + 1, dtype=torch.long, device=mask.device)
    return out.scatter_(1, slot, src)[:, :k]


def audio_chunks_from_order(
    excluded: Tensor,
    chunk_order: Tensor,
    n_time: int,
    n_freq: int,
    kappa: int,
    chunk_size: int,
    start_side: Tensor,
) -> Tensor:
    """Deterministic core of Algorithm 1 given a chunk order.

    Pass 1 walks the chunks in ``chunk_order`` accumulating each chunk's
    **non-excluded** patches until κ; the chunk that overflows is trimmed on
    the side away from a neighbour chunk walked before it (kept patches
    adjoin it; ``start_side`` breaks the tie when neither or both neighbours
    were walked), and all later chunks are dropped. A walked neighbour counts
    even if all its patches were excluded, as in the authors' code. Inside a trimmed chunk the
    patches are ordered time-major, so trimming removes whole time steps from
    one end first.

    Pass 2 (only when fewer than κ patches are non-excluded in total): all
    non-excluded patches are taken and excluded patches are readmitted by the
    same walk, chunk by chunk in the same order, trimming the last readmitted
    chunk with the same rule (neighbours counted within pass 2). The authors'
    code has no pass 2 (docs/deviations.md).

    Both passes run as one walk over ``2C`` virtual chunks (the non-excluded
    parts in order, then the excluded parts in order), which is exactly the
    two passes in sequence.

    Args:
        excluded: ``(B, n_time * n_freq)`` bool, time-major.
        chunk_order: ``(B, C)`` permutation of the ``C = ceil(n_time / chunk_size)``
            chunks (chunk ``c`` covers times ``[c*L_c, (c+1)*L_c)``).
        n_time, n_freq, kappa, chunk_size: grid, target count, ``L_c``.
        start_side: ``(B,)`` bool tie-break (True: keep the earliest patches).

    Returns:
        ``(B, kappa)`` int64 unique patch indices, sorted ascending.
    """
    _check_2d("audio_chunks_from_order: excluded", excluded)
    b, n = excluded.shape
    if n != n_time * n_freq:
        raise ValueError(
            f"audio_chunks_from_order: excluded has {n} patches, expected n_time*n_freq = {n_time}*{n_freq}"
        )
    _check_kappa(kappa, n, "audio_chunks_from_order")
    if chunk_size < 1:
        raise ValueError(f"audio_chunks_from_order: chunk_size must be >= 1, got {chunk_size}")
    n_chunks = -(-n_time // chunk_size)
    if chunk_order.shape != (b, n_chunks):
        raise ValueError(
            f"audio_chunks_from_order: chunk_order must be (B, {n_chunks}), got {tuple(chunk_order.shape)}"
        )
    pad_t = n_chunks * chunk_size - n_time
    excl = excluded.bool().reshape(b, n_time, n_freq)
    valid = F.pad(torch.ones_like(excl), (0, 0, 0, pad_t)).reshape(b, n_chunks, chunk_size * n_freq)
    excl = F.pad(excl, (0, 0, 0, pad_t)).reshape(b, n_chunks, chunk_size * n_freq)
    avail = torch.cat([valid & ~excl, excl], dim=1)  # (B, 2C, L): pass 1 then pass 2
    order = torch.cat([chunk_order, chunk_order + n_chunks], dim=1)
    quota = torch.full((b,), kappa, dtype=torch.long, device=excluded.device)
    take = _walk_chunks(avail, order, quota, start_side, n_groups=2)
    take = (take[:, :n_chunks] | take[:, n_chunks:]).reshape(b, -1)[:, :n]
    return _true_positions(take, kappa)


def select_audio_time_chunks(
    importance: Tensor,
    excluded: Tensor,
    n_time: int,
    n_freq: int,
    kappa: int,
    chunk_size: int = 4,
    generator: Optional[torch.Generator] = None,
    first_step: bool = False,
) -> Tensor:
    """Choose κ_a audio patches made of whole time chunks (Algorithm 1).

    With ``first_step=True`` (empty memory) there is no chunk walk: the plain
    per-patch top-κ of importance is taken (excluded patches last), as the
    authors' code does before its memory holds anything, and as
    :func:`select_video` does for video. Otherwise:

    1. chunk importance (:func:`chunk_importance`; a final partial chunk when
       ``n_time % chunk_size != 0``);
    2. chunk order by multinomial sampling without replacement on chunk
       importance (zero-importance chunks last, random);
    3. the walk / trim / readmission of :func:`audio_chunks_from_order`, with a
       fair coin for ambiguous trim sides.

    The result has exactly κ unique patches; all selected patches lie in
    chunks that were walked, every walked chunk except at most one (per pass)
    contributes all its non-excluded patches, and excluded patches appear only
    when fewer than κ patches are non-excluded.

    Args:
        importance: ``(B, n_time * n_freq)`` audio importance, time-major.
        excluded: ``(B, n_time * n_freq)`` bool exclusion mask.
        n_time, n_freq: patch grid (64 x 8 in the base config).
        kappa: number of patches to keep.
        chunk_size: ``L_c`` time steps per chunk (4).
        generator: optional generator on ``importance``' device.
        first_step: per-patch top-κ instead of the chunk walk.

    Returns:
        ``(B, kappa)`` int64 unique indices, sorted ascending.
    """
    _check_2d("select_audio_time_chunks: importance", importance)
    if excluded.shape != importance.shape:
        raise ValueError(
            f"select_audio_time_chunks: excluded {tuple(excluded.shape)} must match importance "
            f"{tuple(importance.shape)}"
        )
    if importance.shape[1] != n_time * n_freq:
        raise ValueError(
            f"select_audio_time_chunks: importance has {importance.shape[1]} patches, expected "
            f"n_time*n_freq = {n_time}*{n_freq}"
        )
    if chunk_size < 1:
        raise ValueError(f"select_audio_time_chunks: chunk_size must be >= 1, got {chunk_size}")
    if first_step:
        return select_video(importance, excluded, kappa, first_step=True, generator=generator)
    order = sample_order(chunk_importance(importance, n_time, n_freq, chunk_size), generator)
    coin = torch.rand(importance.shape[0], device=importance.device, generator=generator) < 0.5
    return audio_chunks_from_order(excluded, order, n_time, n_freq, kappa, chunk_size, coin)


def select_audio_frequency(
    importance: Tensor,
    excluded: Tensor,
    n_time: int,
    n_freq: int,
    kappa: int,
    band_size: int = 1,
    generator: Optional[torch.Generator] = None,
    first_step: bool = False,
) -> Tensor:
    """Ablation: choose κ_a audio patches made of whole frequency bands.

    The frequency analogue of :func:`select_audio_time_chunks`: the grid is
    transposed so frequency plays the role of time, bands of ``band_size``
    frequency rows replace time chunks, and the same walk/trim/readmission
    applies. Inside a trimmed band, patches are ordered frequency-major then by
    time, so trimming a single-row band drops its latest (or earliest) times.

    ``first_step=True`` takes the per-patch top-κ, as in
    :func:`select_audio_time_chunks`. The authors' code has no frequency mode;
    we give it the time mode's first-step rule so that the ablation changes
    only the constraint of the memory steps.

    Args:
        importance: ``(B, n_time * n_freq)`` audio importance, time-major.
        excluded: ``(B, n_time * n_freq)`` bool.
        n_time, n_freq, kappa: as for time chunks.
        band_size: frequency rows per band (default 1: whole rows).
        generator: optional generator on ``importance``' device.
        first_step: per-patch top-κ instead of the band walk.

    Returns:
        ``(B, kappa)`` int64 unique time-major indices, sorted ascending.
    """
    _check_2d("select_audio_frequency: importance", importance)
    b = importance.shape[0]
    if importance.shape[1] != n_time * n_freq or excluded.shape != importance.shape:
        raise ValueError(
            f"select_audio_frequency: importance/excluded must both be (B, {n_time}*{n_freq}); got "
            f"{tuple(importance.shape)} and {tuple(excluded.shape)}"
        )
    if first_step:
        return select_video(importance, excluded, kappa, first_step=True, generator=generator)
    imp_ft = importance.reshape(b, n_time, n_freq).transpose(1, 2).reshape(b, -1)
    exc_ft = excluded.reshape(b, n_time, n_freq).transpose(1, 2).reshape(b, -1)
    idx_ft = select_audio_time_chunks(imp_ft, exc_ft, n_freq, n_time, kappa, band_size, generator)
    f, t = idx_ft // n_time, idx_ft % n_time
    return (t * n_freq + f).sort(dim=1).values


def select_audio_none(
    importance: Tensor,
    excluded: Tensor,
    kappa: int,
    first_step: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Ablation: audio selection without a time/frequency constraint.

    Plain importance multinomial exactly like :func:`select_video`.

    Returns:
        ``(B, kappa)`` int64 unique indices, sorted ascending.
    """
    return select_video(importance, excluded, kappa, first_step, generator)


# --------------------------------------------------------------------------- ablations


def select_random(
    n_patches: int,
    batch_size: int,
    kappa: int,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Ablation ``Random``: κ patches uniformly without replacement.

    Returns:
        ``(batch_size, kappa)`` int64 unique indices, sorted ascending.
    """
    if batch_size < 1:
        raise ValueError(f"select_random: batch_size must be >= 1, got {batch_size}")
    _check_kappa(kappa, n_patches, "select_random")
    u = torch.rand(batch_size, n_patches, device=device, generator=generator)
    return u.topk(kappa, dim=1).indices.sort(dim=1).values


def mats_scores(video_patches: Tensor, n_frames: int) -> Tensor:
    """Ablation ``MATS``: motion score of every video patch.

    Score = L2 distance between a patch and the patch at the same spatial
    position in the **next** frame; the last frame has no next frame and uses
    the **previous** one instead. With a single frame all scores are 0.
    Rank by these (e.g. ``select_video(scores, excluded, k, first_step=True)``
    for a deterministic top-κ).

    Args:
        video_patches: ``(B, n_frames * h * w, P)`` patch pixels, frame-major.
        n_frames: number of frames ``T``.

    Returns:
        ``(B, n_frames * h * w)`` float32 scores.
    """
    if video_patches.dim() != 3:
        raise ValueError(f"mats_scores: video_patches must be (B, N, P), got {tuple(video_patches.shape)}")
    b, n, p = video_patches.shape
    if n_frames < 1 or n % n_frames != 0:
        raise ValueError(f"mats_scores: {n} patches cannot be split into n_frames={n_frames} frames")
    if n_frames == 1:
        return torch.zeros(b, n, device=video_patches.device)
    x = video_patches.float().reshape(b, n_frames, n // n_frames, p)
    fwd = (x[:, 1:] - x[:, :-1]).norm(dim=-1)  # (B, T-1, hw): frame t vs t+1
    scores = torch.cat([fwd, fwd[:, -1:]], dim=1)  # last frame: vs previous
    return scores.reshape(b, n)
