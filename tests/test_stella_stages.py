"""STELLA's step stages, each called alone on planted inputs (no training loop).

The stages are ``StellaPlugin._score``, ``_avm_loss``, ``_importance``, ``_exclusion``,
``_select_current`` and ``_select_memory``; the probes in ``test_memory_architecture.py`` check
the same stages inside full training steps.
"""
import pytest
import torch

from avalanche_av.models.inputs import normalize_video_patches, prepare_video
from avalanche_av.models.avm import avm_loss, make_avm_pairs
from avalanche_av.models.patching import gather_patches
from avalanche_av.training.plugins import StellaPlugin
from avalanche_av.training.plugins.stella import StellaScores, StellaStep

from .conftest import make_strategy


def _ready(**kw):
    stella = StellaPlugin(mem_size=8, **kw)
    strategy = make_strategy([stella], mb=4)
    stella._setup(strategy)
    return stella, strategy


def _clips(strategy, b: int, seed: int = 0):
    c = strategy.model.config
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, c.audio_length, c.num_mel_bins, generator=g)
    video = torch.randint(0, 256, (b, c.n_frames, 3, c.image_size, c.image_size), generator=g, dtype=torch.uint8)
    return audio, video


def test_score_is_the_unmasked_joint_pass_row_by_row():
    stella, strategy = _ready()
    model = strategy.model.eval()
    audio, video = _clips(strategy, 3)
    s = stella._score(strategy, audio, prepare_video(video))
    c = model.config
    assert s.patches_a.shape[:2] == (3, c.num_audio_patches) and s.patches_v.shape[:2] == (3, c.num_video_patches)
    assert s.fused_a.shape == (3, c.num_audio_patches, c.embed_dim) and not s.fused_a.requires_grad
    with torch.no_grad():
        pa, pv = model.patchify(audio, prepare_video(video))
        fa, fv = model.fuse(*model.encode_full(pa, pv))
    torch.testing.assert_close(s.fused_a, fa)
    torch.testing.assert_close(s.fused_v, fv)
    # Per-sample: reversing the batch reverses every output (nothing mixes across rows).
    r = stella._score(strategy, audio.flip(0), prepare_video(video.flip(0)))
    torch.testing.assert_close(r.avm.logit, s.avm.logit.flip(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.avm.attn_logits_av, s.avm.attn_logits_av.flip(0), rtol=1e-5, atol=1e-5)


def test_avm_loss_pairs_deranged_rows_and_trains_only_the_avm():
    stella, strategy = _ready()
    strategy.model.eval()
    audio, video = _clips(strategy, 5)
    s = stella._score(strategy, audio, prepare_video(video))
    # Planted head: a large positive bias makes every logit positive, so the accuracy is the
    # share of matched pairs, 2 of 5 (ceil(5/2) = 3 negatives).
    with torch.no_grad():
        stella.avm.head[-1].bias.fill_(50.0)
    torch.manual_seed(7)
    loss, acc = stella._avm_loss(strategy, s)
    assert float(acc) == pytest.approx(2 / 5)
    # By hand: the same pairs, deranged rows fused again from the modality tokens.
    torch.manual_seed(7)
    perm, is_match = make_avm_pairs(5)
    fa, fv = s.fused_a.clone(), s.fused_v.clone()
    neg = torch.nonzero(is_match == 0).squeeze(1)
    with torch.no_grad():
        fa[neg], fv[neg] = strategy.model.fuse(s.tokens_a[neg], s.tokens_v[perm[neg]])
    want = avm_loss(stella.avm(fa, fv).logit.float(), is_match)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is None for p in strategy.model.parameters())
    assert all(p.grad is not None for p in stella.avm.parameters())


def _step(stella, strategy, imp_v, imp_a, excl_v=None, excl_a=None, first_step=False):
    c = strategy.model.config
    b = imp_v.shape[0]
    pa = torch.arange(b * c.num_audio_patches, dtype=torch.float32).view(b, -1, 1).expand(-1, -1, 4).clone()
    pv = -torch.arange(b * c.num_video_patches, dtype=torch.float32).view(b, -1, 1).expand(-1, -1, 3).clone()
    scores = StellaScores(pa, pv, None, None, None, None, None)
    return StellaStep(
        n_current=b, first_step=first_step, scores=scores, avm_loss=torch.zeros(()), avm_acc=torch.zeros(()),
        imp_a=imp_a, imp_v=imp_v,
        excl_a=torch.zeros_like(imp_a, dtype=torch.bool) if excl_a is None else excl_a,
        excl_v=torch.zeros_like(imp_v, dtype=torch.bool) if excl_v is None else excl_v,
    )


def test_select_current_takes_top_kappa_on_the_first_step_and_never_an_excluded_patch():
    stella, strategy = _ready()
    c = strategy.model.config
    nv, na, kv, ka = c.num_video_patches, c.num_audio_patches, stella.kappa_v, stella.kappa_a
    g = torch.Generator().manual_seed(3)
    # Planted importance: a known top-κ set per row, far above the rest.
    top_v = torch.stack([torch.randperm(nv, generator=g)[:kv] for _ in range(2)])
    imp_v = torch.rand(2, nv, generator=g) * 0.01
    imp_v.scatter_(1, top_v, 1.0 + torch.rand(2, kv, generator=g))
    imp_a = torch.rand(2, na, generator=g)
    step = _step(stella, strategy, imp_v, imp_a, first_step=True)
    pb = stella._select_current(step, c)
    assert torch.equal(pb.video_idx, top_v.sort(1).values)
    assert torch.equal(pb.audio_idx, imp_a.topk(ka, 1).indices.sort(1).values)
    # The gathered patches are the selected rows of the scored patches.
    torch.testing.assert_close(pb.video_patches, gather_patches(step.scores.patches_v, pb.video_idx))
    torch.testing.assert_close(pb.audio_patches, gather_patches(step.scores.patches_a, pb.audio_idx))
    # Later steps sample; a planted exclusion mask over the top patches is never crossed
    # while enough other patches remain.
    excl_v = torch.zeros(2, nv, dtype=torch.bool).scatter(1, top_v, True)
    excl_a = torch.zeros(2, na, dtype=torch.bool)
    excl_a[:, : na // 4] = True
    for _ in range(5):
        pb = stella._select_current(_step(stella, strategy, imp_v, imp_a, excl_v, excl_a), c)
        assert not excl_v.gather(1, pb.video_idx).any()
        assert not excl_a.gather(1, pb.audio_idx).any()
        assert pb.video_idx.shape == (2, kv) and pb.audio_idx.shape == (2, ka)


def test_select_memory_draws_from_the_stored_scores_or_replays_stored_patches():
    stella, strategy = _ready()
    model = strategy.model
    c = model.config
    nv, na = c.num_video_patches, c.num_audio_patches
    audio, video = _clips(strategy, 3, seed=1)
    # Stored exclusion probability 1 on the first quarter of the patches: the fresh Bernoulli
    # draw always excludes them; stored importance 0 on the last quarter: never chosen while
    # the middle half suffices.
    p_v = torch.zeros(3, nv, dtype=torch.float16)
    p_v[:, : nv // 4] = 1.0
    p_a = torch.zeros(3, na, dtype=torch.float16)
    p_a[:, : na // 4] = 1.0
    imp_v = torch.ones(3, nv, dtype=torch.float16)
    imp_v[:, 3 * nv // 4:] = 0.0
    memory = {"audio": audio.half(), "video": video, "imp_a": torch.ones(3, na, dtype=torch.float16),
              "imp_v": imp_v, "p_excl_a": p_a, "p_excl_v": p_v}
    pb = stella._select_memory(model, memory)
    assert pb.video_idx.shape == (3, stella.kappa_v) and pb.audio_idx.shape == (3, stella.kappa_a)
    assert int(pb.video_idx.min()) >= nv // 4 and int(pb.video_idx.max()) < 3 * nv // 4
    assert not (p_a.gather(1, pb.audio_idx) > 0).any()
    pa, pv = model.patchify(audio.half().float(), prepare_video(video))
    torch.testing.assert_close(pb.video_patches, gather_patches(pv, pb.video_idx))
    torch.testing.assert_close(pb.audio_patches, gather_patches(pa, pb.audio_idx))

    # STELLA+: the stored patches and indices come back unchanged (video normalised).
    plus, strategy_p = _ready(store_patches=True)
    kv, ka = plus.kappa_v, plus.kappa_a
    idx_v = torch.arange(kv).repeat(2, 1)
    idx_a = torch.arange(ka).repeat(2, 1) + 1
    stored_v = torch.randint(0, 256, (2, kv, 3 * c.patch_size ** 2), dtype=torch.uint8)
    stored_a = torch.randn(2, ka, c.patch_size ** 2).half()
    pb = plus._select_memory(strategy_p.model, {"patches_a": stored_a, "idx_a": idx_a.int(),
                                               "patches_v": stored_v, "idx_v": idx_v.int()})
    assert torch.equal(pb.video_idx, idx_v) and torch.equal(pb.audio_idx, idx_a)
    torch.testing.assert_close(pb.audio_patches, stored_a.float())
    torch.testing.assert_close(pb.video_patches, normalize_video_patches(stored_v))


def _planted_scores(stella, strategy, b: int, seed: int = 0):
    """Real scores of ``b`` clips whose AVM attention logits are then replaced by zeros (uniform
    attention), so a test can plant the columns it needs."""
    audio, video = _clips(strategy, b, seed)
    strategy.model.eval()
    s = stella._score(strategy, audio, prepare_video(video))
    out = s.avm._replace(attn_logits_av=torch.zeros_like(s.avm.attn_logits_av),
                         attn_logits_va=torch.zeros_like(s.avm.attn_logits_va))
    return StellaScores(s.patches_a, s.patches_v, s.tokens_a, s.tokens_v, s.fused_a, s.fused_v, out)


def test_importance_reads_the_planted_attention_and_pools_the_candidates_queries():
    stella, strategy = _ready()
    c = strategy.model.config
    nv, na = c.num_video_patches, c.num_audio_patches
    s = _planted_scores(stella, strategy, 2)
    logit, jv, ja = 2.0, 5, 3
    s.avm.attn_logits_av[0, :, :, jv] = logit  # every audio query of row 0 attends to video patch 5
    s.avm.attn_logits_va[1, :, :, ja] = logit  # every video query of row 1 attends to audio patch 3
    imp_a, imp_v, cand_a, cand_v, query_a, query_v = stella._importance(s, c.n_frames)
    # By hand (Eq. 2): softmax over keys at temperature beta, the same for every query and head.
    e = torch.exp(torch.tensor(logit / stella.beta))
    peak_v, rest_v = float(e / (e + nv - 1)), float(1 / (e + nv - 1))
    assert float(imp_v[0, jv]) == pytest.approx(peak_v, rel=1e-5)
    assert float(imp_v[0, 0]) == pytest.approx(rest_v, rel=1e-5)
    torch.testing.assert_close(imp_v[1], torch.full((nv,), 1.0 / nv))  # uniform attention, uniform importance
    peak_a = float(e / (e + na - 1))
    assert float(imp_a[1, ja]) == pytest.approx(peak_a, rel=1e-5)
    assert int(cand_v[0, 0]) == jv and int(cand_a[1, 0]) == ja
    assert cand_v.shape == (2, stella.kappa_v) and cand_a.shape == (2, stella.kappa_a)
    # Eq. 3 by hand for row 0, video: importance-weighted mean of its candidates' queries.
    w = imp_v[0, cand_v[0]] / imp_v[0, cand_v[0]].sum()
    want = (s.avm.q_v[0][:, cand_v[0]].float() * w[None, :, None]).sum(1)
    torch.testing.assert_close(query_v[0], want, rtol=1e-5, atol=1e-6)
    # RCA (use_importance=False) keeps the same candidates machinery on a uniform importance.
    stella.use_importance = False
    imp_a2, imp_v2, *_ = stella._importance(s, c.n_frames)
    assert torch.equal(imp_v2, torch.ones(2, nv)) and torch.equal(imp_a2, torch.ones(2, na))


def test_exclusion_is_the_sigmoid_of_past_minus_current_on_candidates_only():
    stella, strategy = _ready()
    c = strategy.model.config
    nv, na = c.num_video_patches, c.num_audio_patches
    s = _planted_scores(stella, strategy, 2, seed=2)
    imp_a, imp_v, cand_a, cand_v, query_a, query_v = stella._importance(s, c.n_frames)
    h, d = query_a.shape[1:]
    g = torch.Generator().manual_seed(5)
    memory = {"query_a": torch.randn(1, h, d, generator=g), "query_v": torch.randn(1, h, d, generator=g)}
    step = StellaStep(n_current=2, first_step=False, scores=s, avm_loss=torch.zeros(()), avm_acc=torch.zeros(()),
                      imp_a=imp_a, imp_v=imp_v, cand_a=cand_a, cand_v=cand_v, query_a=query_a, query_v=query_v)
    p_a, p_v = stella._exclusion(step, memory)  # one memory sample: every row is paired with it
    # Eq. 4 by hand for video patches: mean over heads of sigmoid((q_past - q_cur) . k_j / sqrt(d)),
    # the past query being the memory's stored *audio* query.
    k_v = s.avm.k_v.float()
    diff = (memory["query_a"][0][None] - query_a)[:, :, None, :]  # (B, H, 1, d)
    want_v = torch.sigmoid((diff * k_v).sum(-1) / d ** 0.5).mean(1)  # (B, Nv)
    on_v = torch.zeros(2, nv, dtype=torch.bool).scatter(1, cand_v, True)
    torch.testing.assert_close(p_v[on_v], want_v[on_v], rtol=1e-4, atol=1e-5)
    assert torch.all(p_v[~on_v] == 0) and torch.all(p_v[on_v] > 0)
    diff_a = (memory["query_v"][0][None] - query_v)[:, :, None, :]
    want_a = torch.sigmoid((diff_a * s.avm.k_a.float()).sum(-1) / d ** 0.5).mean(1)
    on_a = torch.zeros(2, na, dtype=torch.bool).scatter(1, cand_a, True)
    torch.testing.assert_close(p_a[on_a], want_a[on_a], rtol=1e-4, atol=1e-5)
    assert torch.all(p_a[~on_a] == 0)
    # Nothing to compare with on the first step, and nothing excluded under LPIS only.
    p_a0, p_v0 = stella._exclusion(step, None)
    assert torch.all(p_a0 == 0) and torch.all(p_v0 == 0)
    stella.use_correlation = False
    p_a1, p_v1 = stella._exclusion(step, memory)
    assert torch.all(p_a1 == 0) and torch.all(p_v1 == 0)
