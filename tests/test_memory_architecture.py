"""The online-memory base, named minibatch fields, storage-policy contract and option checks."""
import re

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training import Naive
from torch.utils.data import TensorDataset

from avalanche_av.models import create_model
from avalanche_av.training import (
    default_optimizer,
    list_strategies,
    make_plugins,
    strategy_options,
    validate_strategy_options,
)
from avalanche_av.training.losses import embedding_penalty
from avalanche_av.training.strategies import _spec
from avalanche_av.training.plugins import (
    DERPlugin,
    OnlineMemoryPlugin,
    OnlineReplayPlugin,
    SSLEWCPlugin,
    StellaPlugin,
)
from avalanche_av.training.storage_policy import OnlineReservoirBuffer, StellaBuffer

from .conftest import make_strategy


class _Rows(SupervisedPlugin):
    """Records, per step, each memory plugin's rows and what they hold."""

    def __init__(self, owners):
        super().__init__()
        self.owners = owners
        self.records = []

    def before_backward(self, strategy, **kw):
        rec = {"n_current": strategy.mb_n_current, "n_rows": strategy.mb_output.pooled_a.shape[0]}
        for o in self.owners:
            rows = strategy.memory_rows(o)
            rec[id(o)] = None if rows is None else (rows, strategy.mb_clip_id[rows].clone(), o.mem_batch["clip_id"].clone())
        self.records.append(rec)


def test_er_and_der_compose_each_replaying_its_own_memory(tiny_stream):
    er, der = OnlineReplayPlugin(mem_size=5, seed=1), DERPlugin(mem_size=6, seed=2)
    probe = _Rows([er, der])
    strategy = make_strategy([er, der, probe], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    n_clips = len(tiny_stream.train_stream[0].dataset)
    # every reservoir saw exactly the current clips, once each
    for p in (er, der):
        assert p.storage.n_seen == n_clips
        ids = p.storage.store.fields["clip_id"][: len(p.storage)]
        assert ids.unique().numel() == len(p.storage)
    later = probe.records[-1]
    (rows_er, ids_er, mem_er), (rows_der, ids_der, mem_der) = later[id(er)], later[id(der)]
    assert rows_er.start == later["n_current"] and rows_er.stop == rows_der.start
    assert rows_der.stop == later["n_rows"]
    assert torch.equal(ids_er, mem_er) and torch.equal(ids_der, mem_der)
    # DER's penalty is computed on its own rows (the planted-value check is test_memory_penalty_uses_the_stored_embeddings for STELLA)
    assert der.last_penalty is not None and float(der.last_penalty) > 0


def test_stella_refuses_another_online_memory(tiny_stream):
    strategy = make_strategy([OnlineReplayPlugin(mem_size=4), StellaPlugin(mem_size=4)], mb=4)
    with pytest.raises(ValueError, match="StellaPlugin rewrites every row"):
        strategy.train(tiny_stream.train_stream[0])


@pytest.mark.parametrize("plugin", [
    lambda: StellaPlugin(mem_size=4), lambda: OnlineReplayPlugin(mem_size=4), lambda: DERPlugin(mem_size=4),
    lambda: SSLEWCPlugin(ewc_lambda=1.0),
    # the paper's baselines on the online-memory base (issue 9)
    *[(lambda n=n: make_plugins(n, mem_size=4, batch_size=4)[0]) for n in ("mir", "gmed", "cls-er", "lump", "esmer")],
])
def test_plugins_on_a_foreign_template_name_the_template(tiny_stream, plugin):
    model = create_model("tiny")
    strategy = Naive(model=model, optimizer=default_optimizer(model), criterion=torch.nn.CrossEntropyLoss(),
                     train_mb_size=4, device="cpu", plugins=[plugin()], evaluator=None)
    with pytest.raises(TypeError, match="AVPretraining"):
        strategy.train(tiny_stream.train_stream[0])


@pytest.mark.parametrize("store_patches", [False, True])
def test_avalanche_replay_plugin_sees_stella_buffer(tiny_stream, store_patches):
    stella = StellaPlugin(mem_size=6, store_patches=store_patches)
    make_strategy([stella], mb=4).train(tiny_stream.train_stream[0])
    rp = ReplayPlugin(mem_size=6, storage_policy=stella.storage)
    buf = rp.storage_policy.buffer
    assert len(buf) == len(stella.storage) == 6
    sample = buf[0]
    c = create_model("tiny").config
    if store_patches:
        ka = round(0.5 * c.num_audio_patches)
        assert len(sample) == 7 and sample[0].shape == (ka, c.audio_patch_dim) and sample[1].dtype == torch.int16
    else:
        assert len(sample) == 5 and sample[1].dtype == torch.uint8 and sample[0].shape == (c.audio_length, c.num_mel_bins)
    assert buf is rp.storage_policy.buffer  # cached until the memory changes


def test_replay_plugin_with_online_buffer_runs_end_to_end(tiny_stream):
    buf = OnlineReservoirBuffer(8)
    rp = ReplayPlugin(mem_size=8, batch_size_mem=4, storage_policy=buf)
    strategy = make_strategy([rp], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert len(buf.buffer) == 8 and buf.n_seen == len(tiny_stream.train_stream[0].dataset)
    strategy.train(tiny_stream.train_stream[1])  # replays through Avalanche's ReplayDataLoader
    assert len(buf) == 8 and buf.n_seen == sum(len(e.dataset) for e in tiny_stream.train_stream)


def test_replay_plugin_with_stella_buffer_raises_documented_error(tiny_stream):
    strategy = make_strategy([ReplayPlugin(mem_size=8, storage_policy=StellaBuffer(8))], mb=4)
    with pytest.raises(TypeError, match="only StellaPlugin computes"):
        strategy.train(tiny_stream.train_stream[0])


def test_avalanche_buffer_inside_our_base_is_refused():
    with pytest.raises(TypeError, match="online storage policy"):
        OnlineReplayPlugin(storage_policy=ReservoirSamplingBuffer(8))
    with pytest.raises(TypeError, match="StellaBuffer"):
        StellaPlugin(storage_policy=OnlineReservoirBuffer(8))
    with pytest.raises(ValueError, match="contradicts"):
        StellaPlugin(storage_policy=StellaBuffer(8, store_patches=True), store_patches=False)


def test_buffer_update_quantises_float_frames_and_setter_loads_clips():
    buf = OnlineReservoirBuffer(4)
    video = torch.full((3, 2, 3, 8, 8), 0.5)
    buf.add({"audio": torch.randn(3, 6, 4), "video": video, "target": torch.arange(3), "clip_id": torch.arange(3)})
    assert buf.store.fields["video"].dtype == torch.uint8
    assert (buf.store.fields["video"][:3] == 128).all()  # round(0.5 * 255), not a cast to 0
    ds = TensorDataset(torch.randn(10, 6, 4), torch.zeros(10, 2, 3, 8, 8, dtype=torch.uint8),
                       torch.arange(10), torch.arange(100, 110))
    buf.buffer = ds
    assert len(buf.buffer) == 4 and buf.n_seen == 10
    assert set(buf.store.fields["clip_id"][:4].tolist()) <= set(range(100, 110))
    stella_buf = StellaBuffer(4)
    with pytest.raises(TypeError, match="cannot be assigned"):
        stella_buf.buffer = ds


def test_resize_keeps_plugin_and_storage_consistent(tiny_stream):
    er = OnlineReplayPlugin(mem_size=8)
    make_strategy([er], mb=4).train(tiny_stream.train_stream[0])
    er.storage.resize(None, 3)
    assert er.mem_size == 3 == er.storage.max_size == er.storage.store.capacity and len(er.storage) == 3
    assert len(er.storage.buffer) == 3


def test_nonfinite_step_stores_nothing(tiny_stream):
    er = OnlineReplayPlugin(mem_size=64)

    class _Poison(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def before_forward(self, strategy, **kw):
            self.calls += 1
            if self.calls == 2:
                strategy.mbatch[0] = strategy.mbatch[0] * float("nan")

    strategy = make_strategy([_Poison(), er], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    n = len(tiny_stream.train_stream[0].dataset)
    assert strategy.skipped_steps == 1 and er.storage.n_seen == n - 4
    assert torch.isfinite(er.storage.store.fields["audio"][: len(er.storage)].float()).all()


# ------------------------------------------------------------------ options
def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option 'rho' for strategy 'stella'; valid options: .*rho_a.*rho_v"):
        validate_strategy_options("stella", {"rho": 0.3})
    with pytest.raises(ValueError, match="valid options: none"):
        validate_strategy_options("finetune", {"alpha": 0.5})
    with pytest.raises(ValueError, match="expects a float"):
        validate_strategy_options("der++", {"alpha": "big"})
    with pytest.raises(ValueError, match="valid strategies"):
        validate_strategy_options("gem", {})
    assert "store_patches" not in strategy_options("stella+")  # fixed by the name
    assert "alpha" in strategy_options("der++")


# Every registered method with a memory, read from the registry so a new one is covered too.
@pytest.mark.parametrize("name", [n for n in list_strategies() if _spec(n).uses_memory])
def test_memory_methods_need_a_memory(name):
    with pytest.raises(ValueError, match=re.escape(f"strategy '{name}' needs mem_size >= 1")):
        make_plugins(name, mem_size=0, batch_size=4)
    assert make_plugins("finetune", mem_size=0, batch_size=4) == []


def test_ablation_presets_set_their_option():
    (p,) = make_plugins("stella-lpis", mem_size=8, batch_size=4)
    assert p.use_correlation is False and p.use_importance is True
    (p,) = make_plugins("stella-rca", mem_size=8, batch_size=4)
    assert p.use_importance is False
    (p,) = make_plugins("stella-audio-freq", mem_size=8, batch_size=4)
    assert p.audio_selection == "frequency"


# ------------------------------------------------------------------ STELLA stages, planted inputs
class _StepProbe(SupervisedPlugin):
    def __init__(self, stella):
        super().__init__()
        self.stella = stella
        self.steps = []

    def before_backward(self, strategy, **kw):
        s = self.stella.step
        rows = strategy.memory_rows(self.stella)
        self.steps.append((s, rows, strategy.mb_output))


def test_lpis_excludes_nothing(tiny_stream):
    stella = StellaPlugin(mem_size=8, use_correlation=False)
    probe = _StepProbe(stella)
    make_strategy([stella, probe], mb=4).train(tiny_stream.train_stream[0])
    later = [s for s, rows, _ in probe.steps if rows is not None]
    assert later
    for s in later:
        assert float(s.p_excl_v.abs().sum()) == 0.0 and float(s.excl_v.float().mean()) == 0.0
        assert float(s.excl_a.float().mean()) == 0.0


def test_exclusion_probability_is_zero_off_candidates_and_on_first_step(tiny_stream):
    stella = StellaPlugin(mem_size=8)
    probe = _StepProbe(stella)
    make_strategy([stella, probe], mb=4).train(tiny_stream.train_stream[0])
    first = probe.steps[0][0]
    assert first.first_step and float(first.p_excl_a.sum()) == 0.0 and float(first.p_excl_v.sum()) == 0.0
    s = probe.steps[-1][0]
    off = torch.ones_like(s.p_excl_v, dtype=torch.bool).scatter(1, s.cand_v, False)
    assert float(s.p_excl_v[off].abs().sum()) == 0.0
    assert float(s.p_excl_v.max()) > 0.0 and float(s.p_excl_v.max()) <= 1.0


def test_memory_penalty_uses_the_stored_embeddings(tiny_stream):
    stella = StellaPlugin(mem_size=8, alpha=1.0)
    probe = _StepProbe(stella)
    strategy = make_strategy([stella, probe], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    # plant stored embeddings: every stored pooled vector becomes 3.0
    stella.storage.store.fields["pooled_a"].fill_(3.0)
    stella.storage.store.fields["pooled_v"].fill_(-2.0)
    probe.steps.clear()
    strategy.train(tiny_stream.train_stream[1])
    s, rows, out = probe.steps[0]
    m = rows.stop - rows.start
    want = embedding_penalty(out.pooled_a[rows], out.pooled_v[rows], torch.full((m, out.pooled_a.shape[1]), 3.0),
                             torch.full((m, out.pooled_v.shape[1]), -2.0))
    assert torch.allclose(s.penalty, want.detach(), rtol=1e-5)
    # and it is not the value an unplanted memory would give
    assert float(s.penalty) > 4.0


def test_importance_is_uniform_under_rca(tiny_stream):
    stella = StellaPlugin(mem_size=8, use_importance=False)
    probe = _StepProbe(stella)
    make_strategy([stella, probe], mb=4).train(tiny_stream.train_stream[0])
    s = probe.steps[-1][0]
    assert torch.equal(s.imp_v, torch.ones_like(s.imp_v)) and torch.equal(s.imp_a, torch.ones_like(s.imp_a))
    assert s.idx_v.shape == (4, stella.kappa_v)


def test_online_memory_base_is_the_common_parent():
    for cls in (OnlineReplayPlugin, DERPlugin, StellaPlugin):
        assert issubclass(cls, OnlineMemoryPlugin)
    assert StellaPlugin.exclusive and not DERPlugin.exclusive


def test_a_stella_memory_does_not_load_into_a_stella_plus_buffer(tiny_stream):
    stella = StellaPlugin(mem_size=4)
    make_strategy([stella], mb=4).train(tiny_stream.train_stream[0])
    plus = StellaPlugin(mem_size=4, store_patches=True)
    with pytest.raises(ValueError, match="different method or mode"):
        plus.storage.load_state_dict(stella.storage.state_dict())


def _initial_generator_state(plugin) -> torch.Tensor:
    """The random draws' generator of a method's memory: the reservoir's (online memories) or
    A-GEM's subset draws."""
    return plugin.generator.get_state() if hasattr(plugin, "memory_indices") else plugin.storage.generator.get_state()


@pytest.mark.parametrize("name", ["er", "der++", "stella", "cls-er", "esmer", "agem"])
def test_the_run_seed_seeds_a_memory_unless_its_seed_option_is_set(name):
    def seeded(seed):
        return torch.Generator().manual_seed(seed).get_state()

    (default,) = make_plugins(name, mem_size=8, batch_size=4)
    assert torch.equal(_initial_generator_state(default), seeded(0))  # the plugin's own default
    (from_run,) = make_plugins(name, mem_size=8, batch_size=4, run_seed=5)
    assert torch.equal(_initial_generator_state(from_run), seeded(5))
    (own,) = make_plugins(name, mem_size=8, batch_size=4, run_seed=5, seed=2)
    assert torch.equal(_initial_generator_state(own), seeded(2))  # the user's option wins
    assert make_plugins("finetune", mem_size=8, batch_size=4, run_seed=5) == []
    (er_exp,) = make_plugins("er_exp", mem_size=8, batch_size=4, run_seed=5)  # no seed option: global RNG
    assert er_exp.storage_policy.max_size == 8


@pytest.mark.parametrize("name, options", [("er", {}), ("agem", {}), ("agem", {"seed": 9})])
def test_a_run_seeds_its_memory_with_its_seed(tmp_path, name, options):
    """``avalanche-av run --seed 3`` gives the memory's generator seed 3 (not the plugin's fixed
    default), so the memory's random draws differ between the seeds of a comparison."""
    from avalanche_av.experiment import RunConfig, run_experiment

    class Probe(SupervisedPlugin):
        state = None

        def before_training(self, strategy, **kwargs):
            if Probe.state is None:  # before any draw of the first experience
                Probe.state = _initial_generator_state(strategy.plugins[0])

    cfg = RunConfig(strategy=name, seed=3, n_tasks=1, classes_per_task=2, train_clips_per_class=4,
                    eval_clips_per_class=2, epochs=1, batch_size=4, mem_size=4, progress=False, csv_log=False,
                    diagnostics=False, track_clips=0, out_dir=str(tmp_path / "run"), strategy_options=options)
    run_experiment(cfg, extra_plugins=[Probe()])
    want = options.get("seed", 3)
    assert torch.equal(Probe.state, torch.Generator().manual_seed(want).get_state())
