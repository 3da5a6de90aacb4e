"""Tests of the AVM module and its pair/loss helpers (avalanche_av.models.avm)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avalanche_av import models
from avalanche_av.models.avm import AVMatching, avm_loss, derangement, importance, make_avm_pairs
from avalanche_av.training import selection


def test_forward_shapes_and_logits():
    torch.manual_seed(0)
    b, na, nv, d, h = 3, 5, 7, 24, 4
    m = AVMatching(d, h)
    fa, fv = torch.randn(b, na, d), torch.randn(b, nv, d)
    out = m(fa, fv)
    hd = d // h
    assert out.logit.shape == (b,)
    assert out.attn_logits_av.shape == (b, h, na, nv)
    assert out.attn_logits_va.shape == (b, h, nv, na)
    assert out.q_a.shape == out.k_a.shape == (b, h, na, hd)
    assert out.q_v.shape == out.k_v.shape == (b, h, nv, hd)
    # Logits are q·k/√d without temperature.
    torch.testing.assert_close(out.attn_logits_av, out.q_a @ out.k_v.transpose(-1, -2) / math.sqrt(hd))
    torch.testing.assert_close(out.attn_logits_va, out.q_v @ out.k_a.transpose(-1, -2) / math.sqrt(hd))
    # Selection-side tensors are detached; the logit trains the AVM.
    assert not any(t.requires_grad for t in out[1:])
    out.logit.sum().backward()
    assert m.qkv_a.weight.grad is not None and m.qkv_v.weight.grad is not None
    assert importance(out.attn_logits_av).shape == (b, nv)
    assert m(fa, fv, return_attn=False).attn_logits_av is None


def test_forward_matches_manual_computation():
    torch.manual_seed(1)
    b, na, nv, d, h = 2, 3, 4, 8, 2
    m = AVMatching(d, h).eval()
    fa, fv = torch.randn(b, na, d), torch.randn(b, nv, d)
    hd = d // h

    def split(x):
        return x.reshape(b, -1, h, hd).transpose(1, 2)

    qa, ka, va = [split(t) for t in m.qkv_a(m.norm_a(fa)).chunk(3, dim=-1)]
    qv, kv, vv = [split(t) for t in m.qkv_v(m.norm_v(fv)).chunk(3, dim=-1)]
    att_a = torch.softmax(qa @ kv.transpose(-1, -2) / math.sqrt(hd), -1) @ vv  # (B, H, Na, d)
    att_v = torch.softmax(qv @ ka.transpose(-1, -2) / math.sqrt(hd), -1) @ va
    pooled = torch.cat([att_a.mean(2).reshape(b, d), att_v.mean(2).reshape(b, d)], -1)
    expected = m.head(pooled).squeeze(-1)
    torch.testing.assert_close(m(fa, fv).logit, expected, rtol=1e-5, atol=1e-5)


def test_forward_bad_input():
    m = AVMatching(8, 2)
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 6), torch.randn(2, 4, 6))
    with pytest.raises(ValueError):
        AVMatching(10, 3)


def test_derangement_has_no_fixed_points():
    g = torch.Generator().manual_seed(0)
    for n in range(2, 40):
        for _ in range(5):
            p = derangement(n, g)
            assert sorted(p.tolist()) == list(range(n))
            assert not (p == torch.arange(n)).any()
    with pytest.raises(ValueError):
        derangement(1)


# ceil(B/2) negatives as in the authors' code (B // 2 positives); two at B = 2 (a derangement needs two).
@pytest.mark.parametrize("b,n_neg", [(48, 24), (9, 5), (7, 4), (5, 3), (4, 2), (3, 2), (2, 2)])
def test_make_avm_pairs(b, n_neg):
    g = torch.Generator().manual_seed(b)
    for _ in range(10):
        perm, is_match = make_avm_pairs(b, g)
        assert sorted(perm.tolist()) == list(range(b))
        ar = torch.arange(b)
        assert int((is_match == 0).sum()) == n_neg
        assert (perm[is_match == 1] == ar[is_match == 1]).all()
        assert (perm[is_match == 0] != ar[is_match == 0]).all()
        # Negatives are deranged among themselves only.
        assert set(perm[is_match == 0].tolist()) == set(ar[is_match == 0].tolist())


def test_make_avm_pairs_tiny_batches():
    perm, is_match = make_avm_pairs(1)
    assert perm.tolist() == [0] and is_match.tolist() == [1.0]
    with pytest.raises(ValueError):
        make_avm_pairs(0)


def test_avm_loss_is_bce():
    logit = torch.tensor([2.0, -1.0, 0.5])
    y = torch.tensor([1.0, 0.0, 0.0])
    expected = -(F.logsigmoid(logit[0]) + F.logsigmoid(-logit[1]) + F.logsigmoid(-logit[2])) / 3
    torch.testing.assert_close(avm_loss(logit, y), expected)
    with pytest.raises(ValueError):
        avm_loss(logit, y[:2])


def _planted_pairs(b, na, nv, d, g, n_code=4):
    """Tokens sharing a random code between audio and video; code tokens carry a marker."""
    fa = 0.5 * torch.randn(b, na, d, generator=g)
    fv = 0.5 * torch.randn(b, nv, d, generator=g)
    code = 2.0 * torch.randn(b, d, generator=g)
    code[:, :2] = 0.0  # dims 0/1 hold the video/audio markers
    ia = torch.randint(0, na, (b, n_code), generator=g)
    iv = torch.randint(0, nv, (b, n_code), generator=g)
    rows = torch.arange(b)[:, None]
    fa[rows, ia] += code[:, None]
    fv[rows, iv] += code[:, None]
    fa[rows, ia, 1] += 3.0
    fv[rows, iv, 0] += 3.0
    return fa, fv


def test_avm_learns_to_separate_matched_and_deranged_pairs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    b, na, nv, d, h = 64, 6, 8, 16, 2
    m = AVMatching(d, h)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def accuracy():
        with torch.no_grad():
            fa, fv = _planted_pairs(512, na, nv, d, torch.Generator().manual_seed(123))
            perm, y = make_avm_pairs(512, torch.Generator().manual_seed(321))
            return float(((m(fa, fv[perm], return_attn=False).logit > 0).float() == y).float().mean())

    acc0 = accuracy()
    for _ in range(1000):
        fa, fv = _planted_pairs(b, na, nv, d, g)
        perm, y = make_avm_pairs(b, g)
        loss = avm_loss(m(fa, fv[perm], return_attn=False).logit, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = accuracy()
    assert acc0 < 0.65 and acc > 0.8, (acc0, acc)


def test_importance_lives_with_the_avm_and_is_reexported():
    # One function: models owns the readout, training.selection and the package re-export it.
    assert selection.importance is importance is models.importance
    assert "importance" in selection.__all__ and "importance" in models.__all__


@pytest.mark.parametrize("return_attn", [False, True])
def test_fused_and_explicit_attention_agree(return_attn):
    torch.manual_seed(3)
    b, na, nv, d, h = 3, 6, 10, 32, 4
    m = AVMatching(d, h)
    assert m.fused_attn  # timm's default
    fa, fv = torch.randn(b, na, d), torch.randn(b, nv, d)
    outs, grads = [], []
    for fused in (True, False):
        m.fused_attn = fused
        m.zero_grad()
        out = m(fa, fv, return_attn=return_attn)
        out.logit.sum().backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in m.parameters()])
    fused_out, explicit_out = outs
    torch.testing.assert_close(fused_out.logit, explicit_out.logit, rtol=1e-5, atol=1e-6)
    for a, e in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)
    for a, e in zip(fused_out[1:], explicit_out[1:]):
        if a is None:
            assert e is None
        else:
            torch.testing.assert_close(a, e)


def test_explicit_attention_materialises_the_probabilities():
    # The explicit kernel is the one that saves the (B, H, Nq, Nk) probabilities for backward;
    # that is what the switch exists to measure.
    torch.manual_seed(0)
    b, na, nv, d, h = 2, 5, 7, 16, 2
    m = AVMatching(d, h)
    fa, fv = torch.randn(b, na, d), torch.randn(b, nv, d)
    m.fused_attn = False
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        m(fa, fv, return_attn=False)
    # (Whether SDPA saves them depends on the backend torch picks, so the fused side is not asserted.)
    assert (b, h, na, nv) in saved and (b, h, nv, na) in saved
