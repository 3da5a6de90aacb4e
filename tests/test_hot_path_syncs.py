"""Host syncs on the training hot path: the debug switch, the packed memory copy, the deferred loss check."""
import importlib

import pytest
import torch

from avalanche_av.evaluation.host_sync import EMULATED_DEVICE, HostSyncCounter
from avalanche_av.models import create_model, debug_checks, debug_checks_enabled, set_debug_checks
from avalanche_av.models import debug as debug_module


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny")


def _subset(model, n_bad=0):
    c = model.config
    b, k = 2, c.num_visible(c.num_audio_patches) + 4
    pa = torch.randn(b, k, c.audio_patch_dim)
    ia = torch.arange(k).expand(b, k).clone()
    ia[0, 0] += n_bad * c.num_audio_patches  # planted: out of range when n_bad
    kv = c.num_visible(c.num_video_patches) + 4
    pv = torch.randn(b, kv, c.video_patch_dim)
    iv = torch.arange(kv).expand(b, kv).clone()
    return pa, ia, pv, iv


def test_index_validation_raises_with_debug_checks_on(tiny):
    with debug_checks(True):
        with pytest.raises(ValueError, match=r"audio indices must lie in \[0, 32\)"):
            tiny.forward_patches(*_subset(tiny, n_bad=1))


def test_index_validation_is_skipped_with_debug_checks_off(tiny):
    with debug_checks(False):
        # not our ValueError: the lookup itself fails later (on CUDA, a device-side assert)
        with pytest.raises(IndexError):
            tiny.forward_patches(*_subset(tiny, n_bad=1))
        # shapes and dtypes are still checked (no value is read for them)
        pa, ia, pv, iv = _subset(tiny)
        with pytest.raises(ValueError, match="int64"):
            tiny.forward_patches(pa, ia.int(), pv, iv)


@pytest.mark.parametrize("on, reads", [(False, 0), (True, 2)])
def test_index_validation_reads_once_per_modality_only_when_on(tiny, on, reads):
    pa, ia, pv, iv = _subset(tiny)
    c = HostSyncCounter(resident=list(tiny.parameters()) + list(tiny.buffers()))
    with debug_checks(on), c:
        args = [t.to(EMULATED_DEVICE) for t in (pa, ia, pv, iv)]
        tiny.forward_patches(*args)
    sites = [e for e in c.syncs() if "_check_index_range" in e.site]
    assert len(sites) == reads


def test_switch_and_environment_variable(monkeypatch):
    before = debug_checks_enabled()
    with debug_checks(False):
        assert not debug_checks_enabled()
        assert set_debug_checks(True) is False and debug_checks_enabled()
    assert debug_checks_enabled() == before
    try:
        for value, expected in (("1", True), ("0", False), ("", False), ("yes", True)):
            monkeypatch.setenv("AVALANCHE_AV_DEBUG_CHECKS", value)
            importlib.reload(debug_module)
            assert debug_checks_enabled() is expected, value
    finally:
        monkeypatch.delenv("AVALANCHE_AV_DEBUG_CHECKS")
        importlib.reload(debug_module)
        set_debug_checks(before)


# ------------------------------------------------------------------ the packed memory copy
def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "audio": torch.randn(b, 8, 4, generator=g) * 3,  # stored fp16: cast before the copy
        "video": torch.randint(0, 256, (b, 2, 3, 4, 4), generator=g, dtype=torch.uint8),
        "clip_id": torch.arange(100, 100 + b),
        "score": torch.rand(b, 5, generator=g),  # float32, stored as is
        "flag": torch.rand(b, generator=g) > 0.5,
    }


def _reservoir(cap=4):
    from avalanche_av.training.storage_policy import TensorReservoir

    return TensorReservoir(cap, {"audio": torch.float16, "video": torch.uint8})


def _feed(store, batches, on_device, keeps=None):
    g = torch.Generator().manual_seed(7)
    counter = HostSyncCounter()
    with counter:
        for i, batch in enumerate(batches):
            if on_device:  # the samples live on the (emulated) accelerator, the memory on the host
                batch = {k: v.to(EMULATED_DEVICE) for k, v in batch.items()}
            keep = None if keeps is None else torch.tensor(keeps[i])
            if on_device and keep is not None:
                keep = keep.to(EMULATED_DEVICE)
            store.add(batch, g, keep)
        len(store)  # a read commits the last packed copy
    return counter, g


def test_packed_copy_stores_exactly_what_per_field_copies_store():
    batches = [_batch(6, s) for s in range(4)]  # 24 offers into 4 slots: overwrites happen
    direct, packed = _reservoir(), _reservoir()
    _feed(direct, batches, on_device=False)
    counter, _ = _feed(packed, batches, on_device=True)
    assert packed.n_seen == direct.n_seen == 24 and len(packed) == len(direct) == 4
    for name, buf in direct.fields.items():
        assert packed.fields[name].dtype == buf.dtype
        assert torch.equal(packed.fields[name], buf), name
    # one non-blocking copy per add, no blocking device-to-host copy
    assert [e.kind for e in counter.events if e.kind in ("d2h", "d2h_async")] == ["d2h_async"] * 4
    assert counter.syncs() == []


def test_packed_copy_discards_a_dropped_offer_and_restores_the_generator():
    batches = [_batch(6, s) for s in range(3)]
    ref = _reservoir()
    _, g_ref = _feed(ref, [batches[0], batches[2]], on_device=False)
    for on_device in (True, False):
        store = _reservoir()
        counter, g = _feed(store, batches, on_device=on_device, keeps=[True, False, True])
        assert store.n_seen == ref.n_seen == 12
        assert torch.equal(g.get_state(), g_ref.get_state())
        for name, buf in ref.fields.items():
            assert torch.equal(store.fields[name], buf), (on_device, name)
        if on_device:
            assert counter.syncs() == []  # the flag travelled in the packed copy


def test_reads_commit_a_pending_copy():
    store = _reservoir(8)
    with HostSyncCounter():
        batch = {k: v.to(EMULATED_DEVICE) for k, v in _batch(3).items()}
        store.add(batch, torch.Generator().manual_seed(0))
        assert store._pending is not None
        slots, got = store.sample(3, torch.Generator().manual_seed(0))
        assert store._pending is None
    assert torch.equal(got["clip_id"].sort().values, torch.arange(100, 103))


# ------------------------------------------------------------------ the deferred loss check
class _Poison:
    """Multiplies the audio of the training iterations in ``at`` by NaN."""

    def __new__(cls, at):
        from avalanche.training.plugins import SupervisedPlugin

        class P(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.calls = 0

            def before_forward(self, strategy, **kw):
                if self.calls in at:
                    strategy.mbatch[0] = strategy.mbatch[0] * float("nan")
                self.calls += 1

        return P()


def test_unchecked_nonfinite_step_is_counted_and_stores_nothing(tiny_stream):
    from avalanche_av.training.plugins import OnlineReplayPlugin

    from .conftest import make_strategy

    er = OnlineReplayPlugin(mem_size=64)
    strategy = make_strategy([_Poison({1}), er], mb=4, nan_check_every=3)
    with pytest.warns(UserWarning, match="1 of the last 2 training step"):
        strategy.train(tiny_stream.train_stream[0])  # iterations 0, 1 unchecked; 2 checked
    n = len(tiny_stream.train_stream[0].dataset)
    assert strategy.skipped_steps == 1 and er.storage.n_seen == n - 4
    assert torch.isfinite(er.storage.store.fields["audio"][: len(er.storage)].float()).all()
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())


def test_unchecked_steps_are_settled_at_the_end_of_the_experience(tiny_stream):
    from .conftest import make_strategy

    strategy = make_strategy([_Poison({3})], mb=4, nan_check_every=10)  # 4 iterations: none checked
    with pytest.warns(UserWarning, match="non-finite loss"):
        strategy.train(tiny_stream.train_stream[0])
    assert strategy.skipped_steps == 1 and strategy._unchecked_steps == 0


def test_unchecked_nonfinite_step_raises_at_the_check(tiny_stream):
    from avalanche_av.training import NonFiniteLossError

    from .conftest import make_strategy

    strategy = make_strategy([_Poison({0})], mb=4, nan_check_every=2, nan_policy="raise")
    with pytest.raises(NonFiniteLossError, match="1 of the last 1 training step"):
        strategy.train(tiny_stream.train_stream[0])
    assert strategy.clock.train_exp_iterations == 1  # raised at iteration 1's check


def test_fused_optimizer_skips_an_unchecked_nonfinite_step_exactly(tiny_stream):
    import copy

    from .conftest import make_strategy

    strategy = make_strategy([_Poison({0})], mb=4, nan_check_every=4)
    strategy.optimizer = torch.optim.Adam(strategy.model.parameters(), lr=1e-3, fused=True)
    before = copy.deepcopy(strategy.model.state_dict())
    exp = tiny_stream.train_stream[0]
    first = exp.dataset.subset(list(range(4)))  # exactly the poisoned iteration
    with pytest.warns(UserWarning, match="non-finite"):
        strategy.train(_one_batch(first))
    after = strategy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert strategy.skipped_steps == 1


def _one_batch(dataset):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    return with_task_labels(benchmark_from_datasets(train=[dataset])).train_stream[0]


def test_nan_check_every_is_validated():
    from .conftest import make_strategy

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="nan_check_every"):
            make_strategy(nan_check_every=bad)
