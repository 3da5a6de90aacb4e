"""Tests of STELLA's pure scoring/selection functions (avalanche_av.training.selection).

The per-sample audio chunk walk below (:func:`reference_audio_chunks`) is the
structural reference the vectorised version is checked against; it is written
as a plain loop over samples and chunks, in the style of the paper's
Algorithm 1, and is also what ``benchmarks_av/bench_audio_selection.py`` times.
"""
from __future__ import annotations

import math
from typing import List, Optional

import pytest
import torch
import torch.nn.functional as F

from avalanche_av.training.selection import (
    audio_chunks_from_order,
    bernoulli_exclusion,
    candidate_mask,
    chunk_importance,
    correlation_prob,
    importance,
    mats_scores,
    pooled_query,
    sample_order,
    select_audio_frequency,
    select_audio_none,
    select_audio_time_chunks,
    select_random,
    select_video,
    top_candidates,
)


# --------------------------------------------------------------------------- reference


def _ref_walk(
    chunks: List[torch.Tensor], avail: torch.Tensor, order: List[int], quota: int, start_side: bool
) -> List[int]:
    """Walk chunks in ``order`` taking ``avail`` patches until ``quota`` (one sample).

    A neighbour walked earlier counts for the trim side even if it had no available patch.
    """
    taken: List[int] = []
    walked = set()
    for c in order:
        av = chunks[c][avail[chunks[c]]]
        if len(taken) + len(av) <= quota:
            taken += av.tolist()
            walked.add(c)
            continue
        need = quota - len(taken)
        left, right = (c - 1) in walked, (c + 1) in walked
        keep_start = left if left != right else start_side
        seq = av if keep_start else av.flip(0)
        taken += seq[:need].tolist()
        break
    return taken


def reference_audio_chunks(
    excluded: torch.Tensor,
    chunk_order: torch.Tensor,
    n_time: int,
    n_freq: int,
    kappa: int,
    chunk_size: int,
    start_side: torch.Tensor,
) -> torch.Tensor:
    """Per-sample loop version of ``audio_chunks_from_order``."""
    out = []
    all_idx = torch.arange(n_time * n_freq).reshape(n_time, n_freq)
    chunks = [all_idx[t : t + chunk_size].reshape(-1) for t in range(0, n_time, chunk_size)]
    for b in range(excluded.shape[0]):
        ex = excluded[b]
        order = chunk_order[b].tolist()
        n_ok = int((~ex).sum())
        q1 = min(n_ok, kappa)
        sel = _ref_walk(chunks, ~ex, order, q1, bool(start_side[b]))
        sel += _ref_walk(chunks, ex, order, kappa - q1, bool(start_side[b]))
        out.append(torch.tensor(sorted(sel), dtype=torch.long))
    return torch.stack(out)


def reference_select_audio_time_chunks(
    importance_a: torch.Tensor,
    excluded: torch.Tensor,
    n_time: int,
    n_freq: int,
    kappa: int,
    chunk_size: int = 4,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Full per-sample pipeline (chunk importance, multinomial order, coin, walk)."""
    rows = []
    for b in range(importance_a.shape[0]):
        per_t = importance_a[b].reshape(n_time, n_freq).sum(dim=1)
        ci = F.avg_pool1d(per_t[None, None], chunk_size, ceil_mode=True).reshape(-1)
        order = torch.multinomial(ci, ci.numel(), replacement=False, generator=generator)
        coin = torch.rand(1, generator=generator) < 0.5
        rows.append(
            reference_audio_chunks(
                excluded[b : b + 1], order[None], n_time, n_freq, kappa, chunk_size, coin
            )
        )
    return torch.cat(rows)


def _structure(idx, excluded, n_time, n_freq, chunk_size):
    """Per sample: dict chunk -> (n selected, n non-excluded in chunk)."""
    res = []
    for b in range(idx.shape[0]):
        d = {}
        for i in idx[b].tolist():
            c = (i // n_freq) // chunk_size
            d.setdefault(c, 0)
            d[c] += 1
        full = {}
        for c, n_sel in d.items():
            lo, hi = c * chunk_size * n_freq, min((c + 1) * chunk_size, n_time) * n_freq
            full[c] = (n_sel, int((~excluded[b, lo:hi]).sum()))
        res.append(full)
    return res


# --------------------------------------------------------------------------- importance


def test_importance_hand_computed():
    logits = torch.tensor([0.0, math.log(2.0)]).reshape(1, 1, 1, 2)
    torch.testing.assert_close(importance(logits, beta=1.0), torch.tensor([[1 / 3, 2 / 3]]))
    torch.testing.assert_close(importance(logits, beta=0.5), torch.tensor([[1 / 5, 4 / 5]]))
    # Mean over heads and queries.
    two = torch.stack([torch.tensor([0.0, math.log(2.0)]), torch.tensor([math.log(2.0), 0.0])])
    torch.testing.assert_close(importance(two.reshape(1, 1, 2, 2), 1.0), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(importance(two.reshape(1, 2, 1, 2), 1.0), torch.tensor([[0.5, 0.5]]))


def test_importance_ranks_planted_video_keys_first():
    g = torch.Generator().manual_seed(0)
    b, h, na, nv = 3, 4, 12, 30
    planted = [torch.randperm(nv, generator=g)[:5] for _ in range(b)]
    logits = 0.3 * torch.randn(b, h, na, nv, generator=g)
    for i, s in enumerate(planted):
        logits[i, :, :, s] += 2.0  # every audio query attends to the planted keys
    imp = importance(logits, beta=0.4)
    assert imp.shape == (b, nv)
    torch.testing.assert_close(imp.sum(1), torch.ones(b))
    for i, s in enumerate(planted):
        assert set(top_candidates(imp, 5)[i].tolist()) == set(s.tolist())


def test_importance_beta_changes_sharpness_not_order():
    g = torch.Generator().manual_seed(1)
    row = torch.randn(20, generator=g)
    logits = row.expand(2, 3, 4, 20)  # same logits for every head and query
    ents, orders = [], []
    for beta in (0.2, 0.4, 1.0, 2.0):
        imp = importance(logits, beta)
        orders.append(imp.argsort(dim=1))
        ents.append(float(-(imp * imp.log()).sum(1).mean()))
    for o in orders[1:]:
        assert torch.equal(o, orders[0])
    assert ents == sorted(ents) and ents[0] < ents[-1] - 0.1  # lower β -> lower entropy


def test_importance_rejects_bad_input():
    with pytest.raises(ValueError):
        importance(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        importance(torch.zeros(1, 1, 2, 2), beta=0.0)


# --------------------------------------------------------------------------- candidates / pooled query / correlation


def test_top_candidates_and_mask():
    imp = torch.tensor([[0.1, 0.5, 0.2, 0.9], [0.4, 0.3, 0.2, 0.1]])
    idx = top_candidates(imp, 2)
    assert idx.tolist() == [[3, 1], [0, 1]]
    assert candidate_mask(idx, 4).tolist() == [[False, True, False, True], [True, True, False, False]]
    with pytest.raises(ValueError):
        top_candidates(imp, 5)


def test_pooled_query_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]).reshape(1, 1, 3, 2)
    imp = torch.tensor([[0.6, 0.3, 0.1]])
    out = pooled_query(q, imp, torch.tensor([[0, 1]]))
    torch.testing.assert_close(out, torch.tensor([[[2 / 3, 1 / 3]]]))
    # Zero weights fall back to the plain mean over the candidates.
    out0 = pooled_query(q, torch.zeros(1, 3), torch.tensor([[1, 2]]))
    torch.testing.assert_close(out0, torch.tensor([[[2.5, 3.0]]]))
    # Two heads pool independently with the same weights.
    q2 = torch.stack([q[0, 0], 2 * q[0, 0]]).unsqueeze(0)  # (1, 2, 3, 2)
    out2 = pooled_query(q2, imp, torch.tensor([[0, 1]]))
    torch.testing.assert_close(out2, torch.tensor([[[2 / 3, 1 / 3], [4 / 3, 2 / 3]]]))


def test_correlation_prob_hand_computed():
    sig = torch.sigmoid
    d = 4
    k = torch.zeros(1, 1, 4, d)
    k[0, 0, 0] = torch.tensor([2.0, 0, 0, 0])
    k[0, 0, 1] = torch.tensor([0, 2.0, 0, 0])
    k[0, 0, 2] = torch.tensor([2.0, 2.0, 0, 0])
    k[0, 0, 3] = torch.tensor([7.0, 0, 0, 0])
    q_past = torch.tensor([1.0, 0, 0, 0]).reshape(1, 1, d)
    q_cur = torch.tensor([0, 1.0, 0, 0]).reshape(1, 1, d)
    mask = torch.tensor([[True, True, True, False]])
    p = correlation_prob(k, q_past, q_cur, mask)
    # past = q_past·k/√4, cur = q_cur·k/√4; softmax([past, cur])[0].
    expected = torch.tensor([[sig(torch.tensor(1.0)), sig(torch.tensor(-1.0)), 0.5, 0.0]])
    torch.testing.assert_close(p, expected)
    # Swapping past and current complements the probability on candidates.
    p_sw = correlation_prob(k, q_cur, q_past, mask)
    torch.testing.assert_close(p_sw[:, :3], 1 - p[:, :3])
    # Two heads: mean of the per-head probabilities.
    k2 = torch.cat([k, k], dim=1)
    qp2 = torch.cat([q_past, q_cur], dim=1)
    qc2 = torch.cat([q_cur, q_cur], dim=1)
    p2 = correlation_prob(k2, qp2, qc2, mask)
    torch.testing.assert_close(p2[0, 0], (sig(torch.tensor(1.0)) + 0.5) / 2)


def test_bernoulli_exclusion_extremes_and_rate():
    g = torch.Generator().manual_seed(0)
    assert bernoulli_exclusion(torch.ones(4, 50), g).all()
    assert not bernoulli_exclusion(torch.zeros(4, 50), g).any()
    rate = bernoulli_exclusion(torch.full((200, 100), 0.3), g).float().mean()
    assert abs(float(rate) - 0.3) < 0.01


# --------------------------------------------------------------------------- video selection


def _unique_rows(idx):
    return all(len(set(r.tolist())) == len(r) for r in idx)


def test_select_video_never_picks_prob_one_exclusions():
    g = torch.Generator().manual_seed(0)
    b, n, k = 16, 40, 10
    imp = torch.rand(b, n, generator=g)
    p = torch.zeros(b, n)
    p[:, ::2] = 1.0  # half the patches certainly excluded; 20 remain >= κ
    for _ in range(5):
        ex = bernoulli_exclusion(p, g)
        idx = select_video(imp, ex, k, first_step=False, generator=g)
        assert idx.shape == (b, k) and _unique_rows(idx)
        assert not ex.gather(1, idx).any()
        assert torch.equal(idx, idx.sort(1).values)


def test_select_video_prob_zero_changes_nothing():
    imp = torch.rand(8, 30, generator=torch.Generator().manual_seed(3))
    ex = bernoulli_exclusion(torch.zeros(8, 30), torch.Generator().manual_seed(9))
    a = select_video(imp, ex, 7, generator=torch.Generator().manual_seed(5))
    bb = select_video(imp, torch.zeros(8, 30, dtype=torch.bool), 7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, bb)


def test_select_video_without_replacement_when_few_nonzero():
    g = torch.Generator().manual_seed(0)
    b, n, k = 32, 12, 6
    imp = torch.zeros(b, n)
    imp[:, [1, 4, 7]] = torch.tensor([0.5, 0.3, 0.2])
    ex = torch.zeros(b, n, dtype=torch.bool)
    ex[:, [0, 2, 3, 5, 6, 8]] = True  # non-excluded zero-weight: 9, 10, 11
    idx = select_video(imp, ex, k, generator=g)
    assert _unique_rows(idx)
    for r in idx.tolist():
        assert set(r) == {1, 4, 7, 9, 10, 11}
    # Only 6 non-excluded patches, κ = 8: all of them plus 2 (unavoidable) excluded ones.
    idx8 = select_video(imp, ex, 8, generator=g)
    assert _unique_rows(idx8)
    for r in idx8.tolist():
        assert {1, 4, 7, 9, 10, 11} <= set(r)
    # Excluded patches with importance are readmitted before zero-importance ones.
    imp2 = imp.clone()
    imp2[:, 0] = 0.9
    idx7 = select_video(imp2, ex, 7, generator=g)
    assert all(0 in r for r in idx7.tolist())


def test_select_video_first_step_is_top_kappa():
    g = torch.Generator().manual_seed(0)
    imp = torch.rand(5, 50, generator=g)
    ex = torch.zeros(5, 50, dtype=torch.bool)
    idx = select_video(imp, ex, 12, first_step=True, generator=g)
    assert torch.equal(idx, imp.topk(12, dim=1).indices.sort(1).values)


def test_select_video_matches_sequential_multinomial_without_replacement():
    # P({i, j}) = w_i w_j / (1 - w_i) + w_j w_i / (1 - w_j) for sequential sampling.
    w = torch.tensor([0.6, 0.3, 0.1])
    n_rows = 40000
    idx = select_video(
        w.expand(n_rows, 3), torch.zeros(n_rows, 3, dtype=torch.bool), 2,
        generator=torch.Generator().manual_seed(0),
    )
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        exp = float(w[i] * w[j] / (1 - w[i]) + w[j] * w[i] / (1 - w[j]))
        got = float(((idx[:, 0] == i) & (idx[:, 1] == j)).float().mean())
        assert abs(got - exp) < 0.01, (i, j, got, exp)


def test_sample_order_puts_zero_weights_last():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[0.0, 2.0, 0.0, 1.0, 3.0]]).expand(50, 5)
    order = sample_order(w, g)
    assert all(set(r[:3]) == {1, 3, 4} and set(r[3:]) == {0, 2} for r in order.tolist())
    # First draw ∝ weight.
    big = sample_order(torch.tensor([[1.0, 3.0]]).expand(20000, 2), g)
    assert abs(float((big[:, 0] == 1).float().mean()) - 0.75) < 0.015


def test_select_video_bad_input():
    with pytest.raises(ValueError):
        select_video(torch.rand(2, 5), torch.zeros(2, 4, dtype=torch.bool), 2)
    with pytest.raises(ValueError):
        select_video(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.bool), 6)


# --------------------------------------------------------------------------- audio selection


def test_chunk_importance_hand_computed_with_partial_chunk():
    # n_time = 6, n_freq = 2, L_c = 4: chunks cover times {0..3} and {4, 5}.
    per_t = torch.tensor([1.0, 2, 3, 4, 5, 6])
    imp = torch.stack([per_t / 2, per_t / 2], dim=1).reshape(1, 12)  # sum over freq = per_t
    ci = chunk_importance(imp, 6, 2, 4)
    torch.testing.assert_close(ci, torch.tensor([[2.5, 5.5]]))


def test_audio_trim_side_hand_built():
    # 12 time steps x 2 freq, L_c = 4: three chunks of 8 patches (chunk 1 = indices 8..15).
    ex = torch.zeros(1, 24, dtype=torch.bool)

    def run(order, kappa, side):
        return audio_chunks_from_order(
            ex, torch.tensor([order]), 12, 2, kappa, 4, torch.tensor([side])
        )[0].tolist()

    # Left neighbour (chunk 0) chosen: keep the start of chunk 1 (times 4, 5).
    assert run([0, 1, 2], 12, False) == list(range(0, 8)) + [8, 9, 10, 11]
    # Right neighbour (chunk 2) chosen: keep the end of chunk 1 (times 6, 7).
    assert run([2, 1, 0], 12, True) == [12, 13, 14, 15] + list(range(16, 24))
    # No neighbour, then both neighbours: the coin decides.
    assert run([1, 0, 2], 4, True) == [8, 9, 10, 11]
    assert run([1, 0, 2], 4, False) == [12, 13, 14, 15]
    assert run([0, 2, 1], 20, True) == list(range(0, 8)) + [8, 9, 10, 11] + list(range(16, 24))
    assert run([0, 2, 1], 20, False) == list(range(0, 8)) + [12, 13, 14, 15] + list(range(16, 24))
    # Exact fill: no partial chunk, later chunks dropped.
    assert run([2, 0, 1], 16, True) == list(range(0, 8)) + list(range(16, 24))


def test_audio_trim_side_counts_walked_but_excluded_neighbour():
    # 12 time steps x 2 freq, L_c = 4: chunk 0 = indices 0..7, chunk 1 = 8..15, chunk 2 = 16..23.
    def run(order, kappa, side, all_excluded):
        ex = torch.zeros(1, 24, dtype=torch.bool)
        lo = all_excluded * 8
        ex[0, lo : lo + 8] = True
        return audio_chunks_from_order(
            ex, torch.tensor([order]), 12, 2, kappa, 4, torch.tensor([side])
        )[0].tolist()

    # Order (2, 1, 0), chunk 2 walked first but fully excluded, chunk 1 trimmed to 4: chunk 2
    # counts as the walked right neighbour, so the end of chunk 1 (times 6, 7) is kept whatever
    # the coin says (the authors' rule; "contributed patches" would have tossed the coin).
    for side in (True, False):
        assert run([2, 1, 0], 4, side, all_excluded=2) == [12, 13, 14, 15]
        # Mirror image: chunk 0 walked but excluded on the left keeps the start of chunk 1.
        assert run([0, 1, 2], 4, side, all_excluded=0) == [8, 9, 10, 11]
    # Chunk 0 (excluded) and chunk 2 (8 patches) both walked before chunk 1: a tie, the coin decides.
    assert run([0, 2, 1], 12, True, all_excluded=0) == [8, 9, 10, 11] + list(range(16, 24))
    assert run([0, 2, 1], 12, False, all_excluded=0) == [12, 13, 14, 15] + list(range(16, 24))


def _authors_rule_kept(excluded, order, n_freq, chunk_size, kappa, keep_start_on_tie):
    """Algorithm 1 as the authors' code runs it, written as a prune mask over one sample.

    Walk the chunks in ``order``, counting their non-pruned patches; on the chunk where the count
    first exceeds κ, prune the excess from the side away from a neighbour that appears earlier
    in ``order`` (the coin when both or neither do), prune every later chunk, and keep what is
    left unpruned. Only valid when at least κ patches are non-excluded.
    """
    prune = excluded.clone().reshape(len(order), chunk_size * n_freq)
    walked, count = [], 0
    for pos, c in enumerate(order):
        free = (~prune[c]).nonzero().squeeze(1)
        count += free.numel()
        if count > kappa:
            excess = count - kappa
            left, right = (c - 1) in walked, (c + 1) in walked
            keep_start = left if left != right else keep_start_on_tie
            prune[c, free[-excess:] if keep_start else free[:excess]] = True
            for later in order[pos + 1 :]:
                prune[later] = True
            break
        walked.append(c)
    return (~prune).reshape(-1).nonzero().squeeze(1).tolist()


@pytest.mark.parametrize("p_ex", [0.0, 0.3, 0.6])
def test_audio_walk_matches_the_authors_rule(p_ex):
    # Random orders and exclusions, including chunks with every patch excluded.
    g = torch.Generator().manual_seed(int(p_ex * 10))
    n_time, n_freq, chunk, kappa = 16, 2, 4, 10  # 4 chunks of 8 patches
    checked = 0
    for _ in range(200):
        ex = torch.rand(1, n_time * n_freq, generator=g) < p_ex
        if p_ex:
            ex[0, torch.randint(0, 4, (1,), generator=g) * 8 + torch.arange(8)] = True  # one dead chunk
        if int((~ex).sum()) < kappa:
            continue  # the authors' code has no readmission pass (docs/deviations.md)
        order = torch.randperm(4, generator=g)
        side = bool(torch.rand(1, generator=g) < 0.5)
        got = audio_chunks_from_order(ex, order[None], n_time, n_freq, kappa, chunk, torch.tensor([side]))
        assert got[0].tolist() == _authors_rule_kept(ex[0], order.tolist(), n_freq, chunk, kappa, side)
        checked += 1
    assert checked >= 50


def test_audio_first_step_is_per_patch_top_kappa():
    # With an empty memory the authors' code keeps the per-patch top-κ: no chunks, no walk.
    g = torch.Generator().manual_seed(5)
    n_time, n_freq, kappa = 16, 4, 22
    imp = torch.rand(6, n_time * n_freq, generator=g)
    ex = torch.zeros_like(imp, dtype=torch.bool)
    want = imp.topk(kappa, dim=1).indices.sort(1).values
    got = select_audio_time_chunks(imp, ex, n_time, n_freq, kappa, 4, g, first_step=True)
    assert torch.equal(got, want)
    # Planted: scattered single patches, one per chunk, beat any whole chunk.
    imp2 = torch.full((1, n_time * n_freq), 0.01)
    planted = [1, 19, 38, 60]
    imp2[0, planted] = 1.0
    assert select_audio_time_chunks(imp2, ex[:1], n_time, n_freq, 4, 4, g, first_step=True)[0].tolist() == planted
    walked = select_audio_time_chunks(imp2, ex[:1], n_time, n_freq, 4, 4, g)[0]
    assert len({(i // n_freq) // 4 for i in walked.tolist()}) == 1  # later steps take one chunk
    # The frequency ablation follows the same first-step rule.
    got_f = select_audio_frequency(imp, ex, n_time, n_freq, kappa, generator=g, first_step=True)
    assert torch.equal(got_f, want)


def test_audio_trim_skips_excluded_patches():
    ex = torch.zeros(1, 24, dtype=torch.bool)
    ex[0, [8, 9, 3]] = True
    out = audio_chunks_from_order(ex, torch.tensor([[0, 1, 2]]), 12, 2, 10, 4, torch.tensor([False]))
    # Chunk 0 gives 7 patches; 3 more from chunk 1's start, skipping excluded 8, 9.
    assert out[0].tolist() == [0, 1, 2, 4, 5, 6, 7, 10, 11, 12]


@pytest.mark.parametrize(
    "n_time,n_freq,chunk,kappa,p_ex",
    [(16, 4, 4, 24, 0.0), (16, 4, 4, 24, 0.3), (10, 3, 4, 13, 0.2), (8, 2, 3, 14, 0.6), (64, 8, 4, 256, 0.25)],
)
def test_audio_matches_per_sample_reference(n_time, n_freq, chunk, kappa, p_ex):
    g = torch.Generator().manual_seed(n_time * 100 + kappa)
    b = 24
    n = n_time * n_freq
    imp = torch.rand(b, n, generator=g)
    ex = torch.rand(b, n, generator=g) < p_ex
    n_chunks = -(-n_time // chunk)
    order = torch.stack([torch.randperm(n_chunks, generator=g) for _ in range(b)])
    side = torch.rand(b, generator=g) < 0.5
    vec = audio_chunks_from_order(ex, order, n_time, n_freq, kappa, chunk, side)
    ref = reference_audio_chunks(ex, order, n_time, n_freq, kappa, chunk, side)
    assert torch.equal(vec, ref)
    # And the full sampler has the same structure.
    idx = select_audio_time_chunks(imp, ex, n_time, n_freq, kappa, chunk, g)
    assert idx.shape == (b, kappa) and _unique_rows(idx)
    assert torch.equal(idx, idx.sort(1).values)
    for b_i, st in enumerate(_structure(idx, ex, n_time, n_freq, chunk)):
        enough = int((~ex[b_i]).sum()) >= kappa
        if enough:
            assert not ex[b_i, idx[b_i]].any()
            partial = [c for c, (s, tot) in st.items() if s < tot]
            assert len(partial) <= 1
        else:
            assert (~ex[b_i]).sum() <= (~ex[b_i, idx[b_i]]).sum()  # all kept patches taken


def test_audio_selection_is_whole_chunks_without_exclusion():
    g = torch.Generator().manual_seed(4)
    b, n_time, n_freq, kappa = 20, 64, 8, 256  # exactly 8 chunks of 32 patches
    imp = torch.rand(b, n_time * n_freq, generator=g)
    ex = torch.zeros_like(imp, dtype=torch.bool)
    idx = select_audio_time_chunks(imp, ex, n_time, n_freq, kappa, 4, g)
    chunk_ids = (idx // n_freq) // 4
    counts = torch.zeros(b, 16, dtype=torch.long).scatter_add_(1, chunk_ids, torch.ones_like(chunk_ids))
    assert ((counts == 0) | (counts == 32)).all() and (counts == 32).sum(1).eq(8).all()


def test_audio_partial_chunk_trimmed_next_to_chosen_neighbour():
    g = torch.Generator().manual_seed(7)
    b, n_time, n_freq, chunk, kappa = 64, 16, 2, 4, 12  # chunks of 8: 1 full + 4 of a partial
    imp = torch.rand(b, n_time * n_freq, generator=g)
    ex = torch.zeros_like(imp, dtype=torch.bool)
    idx = select_audio_time_chunks(imp, ex, n_time, n_freq, kappa, chunk, g)
    for r in idx.tolist():
        ch = {}
        for i in r:
            ch.setdefault((i // n_freq) // chunk, []).append(i)
        full = [c for c, v in ch.items() if len(v) == 8]
        part = [c for c, v in ch.items() if len(v) < 8]
        assert len(full) == 1 and len(part) == 1 and len(ch[part[0]]) == 4
        f, p = full[0], part[0]
        lo = p * chunk * n_freq
        if p == f + 1:  # chosen neighbour on the left: keep the start
            assert ch[p] == list(range(lo, lo + 4))
        elif p == f - 1:  # on the right: keep the end
            assert ch[p] == list(range(lo + 4, lo + 8))
        else:
            assert ch[p] in (list(range(lo, lo + 4)), list(range(lo + 4, lo + 8)))


def test_audio_prefers_important_chunk_and_excludes_prob_one():
    g = torch.Generator().manual_seed(0)
    b, n_time, n_freq = 32, 16, 4
    imp = torch.full((b, n_time * n_freq), 1e-6)
    imp[:, 8 * n_freq : 12 * n_freq] = 1.0  # times 8..11 = chunk 2 carries all the importance
    p = torch.zeros_like(imp)
    p[:, 8 * n_freq] = 1.0  # one patch of it is surely excluded
    ex = bernoulli_exclusion(p, g)
    idx = select_audio_time_chunks(imp, ex, n_time, n_freq, 15, 4, g)
    want = set(range(8 * n_freq + 1, 12 * n_freq))
    assert all(set(r) == want for r in idx.tolist())


def test_audio_readmits_excluded_only_when_unavoidable():
    g = torch.Generator().manual_seed(2)
    b, n_time, n_freq, kappa = 8, 8, 2, 10
    imp = torch.rand(b, 16, generator=g)
    ex = torch.ones(b, 16, dtype=torch.bool)
    ex[:, :6] = False  # only 6 non-excluded patches
    idx = select_audio_time_chunks(imp, ex, n_time, n_freq, kappa, 4, g)
    assert _unique_rows(idx)
    for r in idx.tolist():
        assert set(range(6)) <= set(r)


def test_audio_full_sampler_vs_reference_sampler_structure():
    # The per-sample sampler (torch.multinomial order) and the vectorised one agree on structure.
    g = torch.Generator().manual_seed(11)
    imp = torch.rand(6, 40, generator=g)
    ex = torch.rand(6, 40, generator=g) < 0.3
    ref = reference_select_audio_time_chunks(imp, ex, 10, 4, 17, 4, g)
    vec = select_audio_time_chunks(imp, ex, 10, 4, 17, 4, g)
    for out in (ref, vec):
        assert out.shape == (6, 17) and _unique_rows(out)
        for st in _structure(out, ex, 10, 4, 4):
            assert sum(1 for s, tot in st.values() if s < tot) <= 1


def test_audio_bad_input():
    with pytest.raises(ValueError):
        select_audio_time_chunks(torch.rand(2, 30), torch.zeros(2, 30, dtype=torch.bool), 8, 4, 5)
    with pytest.raises(ValueError):
        select_audio_time_chunks(torch.rand(2, 32), torch.zeros(2, 32, dtype=torch.bool), 8, 4, 40)
    with pytest.raises(ValueError):
        select_audio_time_chunks(torch.rand(2, 32), torch.zeros(2, 32, dtype=torch.bool), 8, 4, 5, 0)


# --------------------------------------------------------------------------- ablation selectors


def test_select_audio_frequency_takes_whole_rows():
    g = torch.Generator().manual_seed(0)
    n_time, n_freq = 16, 8
    imp = torch.rand(10, n_time * n_freq, generator=g)
    ex = torch.zeros_like(imp, dtype=torch.bool)
    idx = select_audio_frequency(imp, ex, n_time, n_freq, 3 * n_time, generator=g)
    assert _unique_rows(idx) and torch.equal(idx, idx.sort(1).values)
    for r in idx:
        f = r % n_freq
        counts = torch.bincount(f, minlength=n_freq)
        assert ((counts == 0) | (counts == n_time)).all() and (counts == n_time).sum() == 3
    # A non-multiple κ leaves exactly one partial row.
    idx2 = select_audio_frequency(imp, ex, n_time, n_freq, 2 * n_time + 5, generator=g)
    for r in idx2:
        counts = torch.bincount(r % n_freq, minlength=n_freq)
        assert (counts == n_time).sum() == 2 and (counts == 5).sum() == 1


def test_select_audio_none_is_unconstrained_multinomial():
    imp = torch.rand(4, 32, generator=torch.Generator().manual_seed(0))
    ex = torch.zeros(4, 32, dtype=torch.bool)
    a = select_audio_none(imp, ex, 9, generator=torch.Generator().manual_seed(1))
    b = select_video(imp, ex, 9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_select_random_unique_sorted_and_uniform():
    g = torch.Generator().manual_seed(0)
    idx = select_random(10, 5000, 3, g)
    assert idx.shape == (5000, 3) and _unique_rows(idx) and torch.equal(idx, idx.sort(1).values)
    freq = torch.bincount(idx.reshape(-1), minlength=10).float() / idx.numel()
    assert (freq - 0.1).abs().max() < 0.01


def test_mats_scores_hand_computed():
    # 3 frames x 2 positions, 1-pixel "patches".
    x = torch.tensor([0.0, 1.0, 3.0, 1.0, 4.0, 5.0]).reshape(1, 6, 1)
    s = mats_scores(x, 3)
    # frame 0 vs 1: |3-0|, |1-1|; frame 1 vs 2: |4-3|, |5-1|; last frame reuses frame 1 vs 2.
    torch.testing.assert_close(s, torch.tensor([[3.0, 0.0, 1.0, 4.0, 1.0, 4.0]]))
    assert mats_scores(x, 1).abs().sum() == 0
    with pytest.raises(ValueError):
        mats_scores(x, 4)
    # Planted motion is ranked first.
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(2, 4 * 9, 12).add_(0.01 * torch.randn(2, 36, 12, generator=g))
    v[:, 1 * 9 + 4] += 5.0  # centre patch of frame 1 flashes
    top = select_video(mats_scores(v, 4), torch.zeros(2, 36, dtype=torch.bool), 2, first_step=True)
    assert top.tolist() == [[4, 13], [4, 13]]  # centre of frame 0 (vs 1) and of frame 1 (vs 2)
