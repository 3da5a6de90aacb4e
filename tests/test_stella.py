"""StellaPlugin, the online reservoir and the replay baselines, on the tiny model."""
import pytest
import torch
from avalanche.core import SupervisedPlugin

from avalanche_av.training import make_plugins
from avalanche_av.training.plugins import DERPlugin, OnlineReplayPlugin, StellaPlugin
from avalanche_av.training.storage_policy import StellaBuffer, TensorReservoir, reservoir_slots

from .conftest import make_strategy


# ---------------------------------------------------------------------------------- reservoir
def test_reservoir_inclusion_is_uniform():
    """After N stream items, each item is in memory with probability M/N.

    With R independent repetitions the per-position inclusion count is Binomial(R, M/N); we
    check every position within 5 standard deviations and the spread against the binomial one.
    """
    m, n, reps, batch = 10, 100, 600, 7
    counts = torch.zeros(n)
    g = torch.Generator().manual_seed(0)
    for _ in range(reps):
        r = TensorReservoir(m)
        for start in range(0, n, batch):
            ids = torch.arange(start, min(n, start + batch))
            r.add({"id": ids}, g)
        assert len(r) == m and r.n_seen == n
        stored = r.fields["id"][: len(r)]
        assert stored.unique().numel() == m  # no duplicates
        counts[stored] += 1
    p = m / n
    sd = (reps * p * (1 - p)) ** 0.5
    assert (counts - reps * p).abs().max() < 5 * sd
    assert 0.7 < counts.std().item() / sd < 1.3


def test_reservoir_slots_last_write_wins():
    # capacity 1, everything after the first item competes for slot 0
    g = torch.Generator().manual_seed(3)
    pos, slots = reservoir_slots(0, 50, 1, g)
    assert slots.tolist() == [0] and pos.numel() == 1
    pos, slots = reservoir_slots(0, 5, 10, g)  # still filling: every item gets its own slot
    assert slots.tolist() == [0, 1, 2, 3, 4] and pos.tolist() == [0, 1, 2, 3, 4]


def test_reservoir_resize_state_and_errors():
    r = TensorReservoir(8, dtypes={"x": torch.float16})
    r.add({"x": torch.randn(20, 3), "i": torch.arange(20)})
    assert r.fields["x"].dtype == torch.float16 and r.bytes_per_sample() == 3 * 2 + 8
    before = set(r.fields["i"][:8].tolist())
    r.resize(4)
    assert len(r) == 4 and set(r.fields["i"][:4].tolist()) <= before
    r.resize(6)
    assert len(r) == 4 and r.capacity == 6
    state = r.state_dict()
    r2 = TensorReservoir(1)
    r2.load_state_dict(state)
    assert r2.capacity == 6 and len(r2) == 4 and torch.equal(r2.fields["i"][:4], r.fields["i"][:4])
    with pytest.raises(ValueError, match="capacity"):
        TensorReservoir(0)
    with pytest.raises(ValueError, match="differ"):
        r.add({"x": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="empty"):
        TensorReservoir(3).sample(2)


# ---------------------------------------------------------------------------------- plugin
class _Probe(SupervisedPlugin):
    """Checks gradient isolation and records what the backbone was fed."""

    def __init__(self, stella):
        super().__init__()
        self.stella = stella
        self.patches = []
        self.isolation_checked = 0

    def before_backward(self, strategy, **kw):
        model, avm = strategy.model, self.stella.avm
        self.patches.append(strategy.mb_patches)
        bb = [p for p in model.parameters() if p.requires_grad]
        g_avm_on_backbone = torch.autograd.grad(
            self.stella.step.avm_loss, bb, retain_graph=True, allow_unused=True
        )
        assert all(g is None for g in g_avm_on_backbone)
        g_ssl_on_avm = torch.autograd.grad(
            strategy.mb_output.loss, list(avm.parameters()), retain_graph=True, allow_unused=True
        )
        assert all(g is None for g in g_ssl_on_avm)
        g = torch.autograd.grad(self.stella.step.avm_loss, list(avm.parameters()), retain_graph=True)
        assert sum(float(x.abs().sum()) for x in g) > 0
        self.isolation_checked += 1


@pytest.mark.parametrize("store_patches", [False, True])
def test_stella_step_gradient_isolation_shapes_and_memory(tiny_stream, store_patches):
    stella = StellaPlugin(mem_size=6, store_patches=store_patches)
    probe = _Probe(stella)
    strategy = make_strategy([stella, probe], mb=4)
    avm_before = None
    strategy.train(tiny_stream.train_stream[0])
    c = strategy.model.config
    ka, kv = round(0.5 * c.num_audio_patches), round(0.5 * c.num_video_patches)
    assert probe.isolation_checked == 4
    first, later = probe.patches[0], probe.patches[-1]
    assert first.audio_idx.shape == (4, ka) and first.video_idx.shape == (4, kv)  # empty memory
    assert later.audio_idx.shape == (8, ka) and later.video_idx.shape == (8, kv)  # + memory batch
    for idx in (later.audio_idx, later.video_idx):
        assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()  # unique per sample
    # AVM is trained in the same optimizer, as its own parameter group
    assert any(p is next(stella.avm.parameters()) for g in strategy.optimizer.param_groups for p in g["params"])
    # memory filled online: 16 clips seen, 6 kept; STELLA+ stores fewer bytes
    assert len(stella.storage) == 6 and stella.storage.store.n_seen == 16
    fields = set(stella.storage.store.fields)
    if store_patches:
        assert {"patches_a", "idx_a", "patches_v", "idx_v"} <= fields and "video" not in fields
    else:
        assert {"audio", "video", "imp_a", "p_excl_v", "query_a", "pooled_v"} <= fields
    # evaluation never selects: full clips only
    seen = []

    class _EvalProbe(SupervisedPlugin):
        def after_eval_forward(self, strategy, **kw):
            seen.append((strategy.mb_patches, strategy.mb_output.audio_idx.shape[1]))

    strategy.plugins.append(_EvalProbe())
    strategy.eval(tiny_stream.test_stream[:1])
    assert seen and all(p is None and n == c.num_audio_patches for p, n in seen)


def test_stella_plus_memory_is_smaller():
    a = StellaBuffer(4, store_patches=False)
    b = StellaBuffer(4, store_patches=True)
    a.declare_fields(StellaPlugin.MEMORY_FIELDS)
    b.declare_fields(StellaPlugin.PATCH_MEMORY_FIELDS)
    n_a, n_v, pa, pv = 32, 64, 256, 768
    common = {
        "target": torch.zeros(2, dtype=torch.long), "clip_id": torch.zeros(2, dtype=torch.long),
        "pooled_a": torch.randn(2, 128), "pooled_v": torch.randn(2, 128),
        "query_a": torch.randn(2, 4, 32), "query_v": torch.randn(2, 4, 32),
    }
    a.add({**common, "audio": torch.randn(2, 128, 64), "video": torch.zeros(2, 4, 3, 64, 64, dtype=torch.uint8),
           "imp_a": torch.rand(2, n_a), "imp_v": torch.rand(2, n_v), "p_excl_a": torch.rand(2, n_a), "p_excl_v": torch.rand(2, n_v)})
    b.add({**common, "patches_a": torch.randn(2, n_a // 2, pa), "idx_a": torch.zeros(2, n_a // 2, dtype=torch.long),
           "patches_v": torch.zeros(2, n_v // 2, pv, dtype=torch.uint8), "idx_v": torch.zeros(2, n_v // 2, dtype=torch.long)})
    raw_fp32 = (128 * 64 + 4 * 3 * 64 * 64) * 4
    assert a.bytes_per_sample() <= 0.3 * raw_fp32
    assert b.bytes_per_sample() <= 0.55 * a.bytes_per_sample()
    assert a.store.fields["video"].dtype == torch.uint8 and a.store.fields["audio"].dtype == torch.float16
    assert b.store.fields["idx_v"].dtype == torch.int16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho_a": 0.0}, "rho_a"),
        ({"rho_v": 1.5}, "rho_v"),
        ({"selection": "best"}, "selection must be one of"),
        ({"audio_selection": "mel"}, "audio_selection must be one of"),
        ({"mem_size": 0}, "mem_size"),
    ],
)
def test_stella_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StellaPlugin(**kwargs)


def test_stella_kappa_must_leave_masked_patches(tiny_stream):
    # tiny masks 75%: 8 of 32 audio patches stay visible, so keeping 25% leaves nothing to rebuild
    strategy = make_strategy([StellaPlugin(rho_a=0.25)], mb=4)
    with pytest.raises(ValueError, match="κ must exceed"):
        strategy.train(tiny_stream.train_stream[0])


def test_memory_smaller_than_batch_replays_all_of_it(tiny_stream):
    er = OnlineReplayPlugin(mem_size=2)
    seen = []

    class _Count(SupervisedPlugin):
        def before_backward(self, strategy, **kw):
            seen.append(strategy.mb_output.pooled_a.shape[0])

    strategy = make_strategy([er, _Count()], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert seen == [4, 6, 6, 6]  # first step: empty memory; then 4 current + both memory clips


@pytest.mark.parametrize(
    "options",
    [
        {"use_importance": False},
        {"use_correlation": False},
        {"selection": "random"},
        {"selection": "mats"},
        {"audio_selection": "frequency"},
        {"audio_selection": "none"},
    ],
)
def test_stella_ablations_train(tiny_stream, options):
    stella = StellaPlugin(mem_size=4, **options)
    strategy = make_strategy([stella], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert len(stella.storage) == 4 and torch.isfinite(stella.last_stats.avm_loss)


def test_der_penalty_uses_stored_embeddings(tiny_stream):
    der = DERPlugin(mem_size=4, alpha=1.0)
    strategy = make_strategy([der], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert der.last_penalty is not None and float(der.last_penalty) > 0
    assert der.storage.store.fields["pooled_a"].dtype == torch.float16


def test_registry_builds_every_named_strategy():
    from avalanche_av.training import list_strategies

    for name in list_strategies():
        plugins = make_plugins(name, mem_size=8, batch_size=4)
        assert isinstance(plugins, list)
    (sp,) = make_plugins("stella+", mem_size=8, batch_size=4)
    assert sp.store_patches and sp.batch_size_mem == 4


class _ImportanceProbe(SupervisedPlugin):
    """Records, per step, the gate's average before the step and the video importance used."""

    def __init__(self, stella):
        super().__init__()
        self.stella = stella
        self.records = []

    def before_backward(self, strategy, **kw):
        ema = self.stella.avm_acc_ema
        self.records.append((None if ema is None else float(ema), self.stella.step.imp_v.clone()))


@pytest.mark.parametrize("gate", [0.99, 0.01])
def test_avm_gate_uses_uniform_importance_until_the_avm_matches(tiny_stream, gate):
    """A gate the AVM cannot reach keeps importance uniform (1/N) on every step; a gate it passes
    at once leaves the AVM's importance (not uniform). The average restarts per experience."""
    stella = StellaPlugin(mem_size=4, avm_gate=gate)
    probe = _ImportanceProbe(stella)
    strategy = make_strategy([stella, probe], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    nv = strategy.model.config.num_video_patches
    uniform = torch.full((nv,), 1.0 / nv)
    flags = []
    for ema, imp in probe.records:
        assert ema is not None and 0.0 <= ema <= 1.0
        rows_uniform = torch.allclose(imp, uniform.expand_as(imp))
        assert rows_uniform == (ema < gate)  # the average includes this step's accuracy
        flags.append(rows_uniform)
    assert any(flags) if gate == 0.99 else not all(flags)
    assert stella.avm_acc_ema is not None
    stella.before_training_exp(strategy)
    assert stella.avm_acc_ema is None


def test_avm_gate_out_of_range_is_refused():
    with pytest.raises(ValueError, match="avm_gate"):
        StellaPlugin(avm_gate=1.0)
