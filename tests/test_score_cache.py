"""STELLA's opt-in score cache: the cache itself, and what the plugin reuses and recomputes."""
import pytest
import torch
from avalanche.training.plugins import SupervisedPlugin

from avalanche_av.training.plugins import StellaPlugin
from avalanche_av.training.score_cache import CACHED_FIELDS, ScoreCache

from .conftest import make_strategy


def _values(ids, scale=1.0):
    # multiples of 1/8 below 64 are exact in fp16: the round trip must give them back bit for bit
    base = ids.float().view(-1, 1) * scale / 8
    return {"imp_a": base.expand(-1, 4) + 0.125, "imp_v": base.expand(-1, 6), "query_a": base.view(-1, 1, 1).expand(-1, 2, 3),
            "query_v": -base.view(-1, 1, 1).expand(-1, 2, 3), "p_excl_a": base.expand(-1, 4) / 64,
            "p_excl_v": base.expand(-1, 6) / 64}


def test_cache_returns_identical_scores_within_k_epochs_and_expires_after():
    cache = ScoreCache(max_age=2)
    ids = torch.tensor([40, 3, 17])
    cache.put(ids, _values(ids), epoch=0)
    for epoch in (0, 1, 2):
        hit, rows, miss = cache.lookup(torch.tensor([17, 99, 3, 40]), epoch)
        assert hit.tolist() == [0, 2, 3] and miss.tolist() == [1]
        got = cache.get(rows)
        want = _values(torch.tensor([17, 3, 40]))
        for k in CACHED_FIELDS:
            assert torch.equal(got[k], want[k]), (epoch, k)
    hit, _, miss = cache.lookup(torch.tensor([17, 3]), 3)  # k + 1 epochs later: recomputed
    assert hit.numel() == 0 and miss.tolist() == [0, 1]
    cache.put(torch.tensor([3]), _values(torch.tensor([3]), scale=2.0), epoch=3)  # refreshed in place
    hit, rows, _ = cache.lookup(torch.tensor([3, 17]), 3)
    assert hit.tolist() == [0] and torch.equal(cache.get(rows)["imp_v"], _values(torch.tensor([3]), 2.0)["imp_v"])
    assert len(cache) == 3


def test_cache_grows_and_keeps_a_sorted_index_and_round_trips():
    cache = ScoreCache(max_age=1)
    g = torch.Generator().manual_seed(0)
    seen = []
    for step in range(8):  # 8 x 5 ids: past the first allocation (16 rows)
        ids = torch.randperm(400, generator=g)[:5]
        ids = ids[~torch.isin(ids, torch.tensor(seen, dtype=torch.long))]
        seen += ids.tolist()
        cache.put(ids, _values(ids % 64), epoch=0)
    assert torch.equal(cache.ids, torch.tensor(sorted(seen)))
    all_ids = torch.tensor(seen)
    hit, rows, miss = cache.lookup(all_ids, 1)
    assert miss.numel() == 0 and torch.equal(cache.get(rows)["imp_a"], _values(all_ids % 64)["imp_a"])
    # a clip repeated inside one batch keeps one row
    cache.put(torch.tensor([1000, 1000]), _values(torch.tensor([7, 9])), epoch=1)
    hit, rows, _ = cache.lookup(torch.tensor([1000]), 1)
    assert torch.equal(cache.get(rows)["imp_v"], _values(torch.tensor([7]))["imp_v"])
    other = ScoreCache(max_age=5)
    other.load_state_dict(cache.state_dict())
    h2, r2, _ = other.lookup(all_ids, 1)
    assert other.max_age == 1 and torch.equal(h2, torch.arange(len(seen)))
    assert torch.equal(other.get(r2)["query_v"], cache.get(cache.lookup(all_ids, 1)[1])["query_v"])


def test_cache_rejects_a_bad_age():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_age"):
            ScoreCache(bad)
    with pytest.raises(ValueError, match="score_cache_epochs"):
        StellaPlugin(mem_size=8, score_cache_epochs=-1)


class _Probe(SupervisedPlugin):
    """Records, per step, the epoch, clip ids, scored rows, importance and the AVM's weights."""

    def __init__(self, stella):
        super().__init__()
        self.stella, self.steps = stella, []

    def before_backward(self, strategy, **kw):
        st = self.stella.step
        self.steps.append({
            "epoch": strategy.clock.train_exp_epochs, "ids": strategy.mb_clip_id[: st.n_current].clone(),
            "scored": st.scored_rows.clone(), "imp_v": st.imp_v.clone(), "p_excl_a": st.p_excl_a.clone(),
            "avm": [p.detach().clone() for p in self.stella.avm.parameters()],
        })


def test_plugin_reuses_cached_scores_for_k_epochs_then_rescores(tiny_stream):
    exp = tiny_stream.train_stream[0]  # 16 clips, batches of 8: 2 steps per epoch
    stella = StellaPlugin(mem_size=16, score_cache_epochs=1)
    probe = _Probe(stella)
    strategy = make_strategy([stella, probe], mb=8, epochs=3)
    strategy.train(exp)
    by_epoch = {e: [s for s in probe.steps if s["epoch"] == e] for e in range(3)}
    assert [len(by_epoch[e]) for e in range(3)] == [2, 2, 2]
    assert all(s["scored"].numel() == 8 for e in (0, 2) for s in by_epoch[e])  # scored
    assert all(s["scored"].numel() == 0 for s in by_epoch[1])  # every clip cached

    def per_clip(steps, key):
        return {int(i): row for s in steps for i, row in zip(s["ids"], s[key])}

    first, cached, again = (per_clip(by_epoch[e], "imp_v") for e in range(3))
    assert set(first) == set(cached) == set(again)
    for i in first:  # epoch 1 reads exactly what epoch 0 stored (fp16, the memory's precision)
        assert torch.equal(cached[i], first[i].half().float())
    assert any(not torch.allclose(again[i], first[i], atol=1e-3) for i in first)  # recomputed after k epochs
    p0, p1 = per_clip(by_epoch[0], "p_excl_a"), per_clip(by_epoch[1], "p_excl_a")
    assert all(torch.equal(p1[i], p0[i].half().float()) for i in p0)
    # the AVM trains only on scored rows: no update across the fully cached epoch
    after_epoch_0, after_epoch_1 = by_epoch[1][0]["avm"], by_epoch[2][0]["avm"]
    assert all(torch.equal(a, b) for a, b in zip(after_epoch_0, after_epoch_1))
    assert not all(torch.equal(a, b) for a, b in zip(by_epoch[0][0]["avm"], by_epoch[0][1]["avm"]))
    assert stella.score_cache.hits == 16 and stella.score_cache.misses == 32
    # training diagnostics on cached steps repeat the last scored AVM values (no NaN)
    assert torch.isfinite(stella.last_stats.avm_acc)


def test_cache_off_by_default_and_the_state_carries_it(tiny_stream):
    assert StellaPlugin(mem_size=8).score_cache is None
    stella = StellaPlugin(mem_size=16, score_cache_epochs=2)
    strategy = make_strategy([stella], mb=8, epochs=1)
    strategy.train(tiny_stream.train_stream[0])
    state = stella.state_dict()
    assert state["epochs_seen"] == 1 and len(state["score_cache"]["ids"]) == 16
    fresh = StellaPlugin(mem_size=16, score_cache_epochs=2)
    fresh.prepare_for_load(make_strategy([fresh], mb=8))
    fresh.load_state_dict(state)
    hit, _, miss = fresh.score_cache.lookup(state["score_cache"]["ids"], 2)
    assert fresh.epochs_seen == 1 and hit.numel() == 16 and miss.numel() == 0
