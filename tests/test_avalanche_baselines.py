"""Avalanche's own plugins, adapted label-free: planted cases for each defining mechanism.

EWC, SI, MAS and RWalk: the penalty is zero at the anchor, equals the hand-computed
``c · importance · δ²`` for a planted perturbation ``δ`` and its gradient step moves the parameter
back. A-GEM: a planted conflicting gradient is projected onto the half-space of the memory
gradient. LwF / LFL / feature distillation: zero against an identical teacher, positive after a
change. Every registered method runs end to end on the synthetic stream.
"""
import math

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.supervised.joint_training import AlreadyTrainedError

from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import default_optimizer, load_checkpoint, make_plugins, save_checkpoint
from avalanche_av.training.joint import (
    CumulativeAVPretraining,
    CumulativePlugin,
    JointAVPretraining,
    MultitaskPlugin,
)
from avalanche_av.training.plugins import (
    SSLAGEMPlugin,
    SSLEWCPlugin,
    SSLFeatureDistillationPlugin,
    SSLLFLPlugin,
    SSLLwFPlugin,
    SSLMASPlugin,
    SSLRWalkPlugin,
    SSLSynapticIntelligencePlugin,
)
from avalanche_av.training.plugins.clip_batches import iter_clip_batches

from .conftest import make_strategy

METHODS = ["ewc", "si", "mas", "rwalk", "lwf", "lfl", "feature-distillation", "agem", "cumulative", "multitask"]


class _Probe(SupervisedPlugin):
    """Records the adapted dataset size, iterations and losses of each training experience."""

    def __init__(self):
        super().__init__()
        self.dataset_len, self.iters, self.losses = [], [], []

    def before_training_exp(self, strategy, **kw):
        self.dataset_len.append(len(strategy.adapted_dataset))
        self.iters.append(0)

    def after_training_iteration(self, strategy, **kw):
        self.iters[-1] += 1
        self.losses.append(float(strategy.loss))


# ---------------------------------------------------------------- parameter regularisers
def _ewc_table(p):
    return p.importances[0], lambda p_: p_.ewc_lambda  # penalty = λ Σ F (θ-θ*)²


def _si_table(p):
    return p.ewc_data[1], lambda p_: p_.si_lambda[0] / 2  # penalty = λ/2 Σ ω (θ-θ*)²


def _mas_table(p):
    return p.importance, lambda p_: p_._lambda  # penalty = λ Σ Ω (θ-θ*)²


def _rwalk_table(p):
    return p.exp_penalties, lambda p_: p_.ewc_lambda  # penalty = λ Σ w (θ-θ*)²


@pytest.mark.parametrize("plugin_fn,table", [
    (lambda: SSLEWCPlugin(ewc_lambda=100.0), _ewc_table),
    (lambda: SSLSynapticIntelligencePlugin(si_lambda=1.0), _si_table),
    (lambda: SSLMASPlugin(lambda_reg=1.0), _mas_table),
    (lambda: SSLRWalkPlugin(ewc_lambda=0.1), _rwalk_table),
], ids=["ewc", "si", "mas", "rwalk"])
def test_regulariser_pulls_planted_parameter_back(tiny_stream, plugin_fn, table):
    plugin = plugin_fn()
    strategy = make_strategy([plugin], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert strategy.clock.train_exp_counter == 1
    imps, coef = table(plugin)
    coef = float(coef(plugin))
    # the importance is non-trivial after the first experience
    flat = {n: d.data.flatten() for n, d in imps.items()}
    assert all(torch.isfinite(v).all() for v in flat.values())
    name = max(flat, key=lambda n: float(flat[n].max()))
    k = int(flat[name].argmax())
    imp_k = float(flat[name][k])
    assert imp_k > 0

    def penalty():
        # any non-zero "SSL loss" (MAS refuses an empty one), in float64 so the difference is exact
        strategy.loss = torch.full((), 1e-3, dtype=torch.float64)
        plugin.before_backward(strategy)
        return strategy.loss - 1e-3

    params = dict(strategy.model.named_parameters())
    strategy.optimizer.zero_grad()
    assert abs(float(penalty().detach())) < 1e-12  # at the anchor

    delta = 0.05
    with torch.no_grad():
        params[name].view(-1)[k] += delta
    strategy.optimizer.zero_grad(set_to_none=True)
    pen = penalty()
    # hand-computed: c · importance · δ² for the one planted coordinate
    assert float(pen) == pytest.approx(coef * imp_k * delta**2, rel=1e-3)
    pen.backward()
    g = params[name].grad.view(-1)
    assert float(g[k]) == pytest.approx(2 * coef * imp_k * delta, rel=1e-3)
    others = [p.grad for n, p in params.items() if n != name and p.grad is not None]
    assert all(float(x.abs().max()) == 0.0 for x in others) and float(g.abs().sum() - g[k].abs()) == 0.0
    # one gradient step of size 1/(4c·imp) halves the distance to the old value
    old_value = float(params[name].view(-1)[k]) - delta
    with torch.no_grad():
        params[name].view(-1)[k] -= g[k] / (4 * coef * imp_k)
    new_dist = abs(float(params[name].view(-1)[k]) - old_value)
    assert new_dist == pytest.approx(delta / 2, rel=1e-3) and new_dist < delta


def test_si_anchor_is_a_copy_not_a_view_of_the_weights(tiny_stream):
    """Avalanche's snapshots alias CPU parameters (the penalty would stay 0); ours copy."""
    si = SSLSynapticIntelligencePlugin()
    strategy = make_strategy([si], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    name, p = next(iter(strategy.model.named_parameters()))
    before = si.ewc_data[0][name].data.clone()
    with torch.no_grad():
        p.add_(1.0)
    assert torch.equal(si.ewc_data[0][name].data, before)
    cum = torch.cat([d.data for d in si.syn_data["cum_trajectory"].values()])
    assert float(cum.abs().max()) > 0  # the path integral did accumulate


def test_rwalk_short_experience_gives_finite_penalties(tiny_stream):
    """Fewer iterations than delta_t: Avalanche would divide by a zero maximum score (NaN)."""
    rw = SSLRWalkPlugin(delta_t=1000)
    probe = _Probe()
    strategy = make_strategy([rw, probe], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    w = torch.cat([p.data.flatten() for p in rw.exp_penalties.values()])
    assert torch.isfinite(w).all() and float(w.max()) == pytest.approx(1.0)  # Fisher term only, normalised
    strategy.train(tiny_stream.train_stream[1])
    assert all(math.isfinite(x) for x in probe.losses) and strategy.skipped_steps == 0


# ---------------------------------------------------------------- A-GEM
def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _set_grad(model, g):
    i = 0
    for p in model.parameters():
        p.grad = g[i:i + p.numel()].view_as(p).clone()
        i += p.numel()


def test_agem_projects_a_conflicting_gradient(tiny_stream):
    agem = SSLAGEMPlugin(patterns_per_experience=6, sample_size=4)
    strategy = make_strategy([agem], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert len(agem.buffers) == 1 and len(agem.buffers[0]) == 6
    ids0 = set(tiny_stream.train_stream[0].dataset[i][3].item() for i in agem.memory_indices[0][1])
    assert len(ids0) == 6
    model = strategy.model
    agem.before_training_iteration(strategy)  # reference gradient of the SSL loss on memory clips
    ref = agem.reference_gradients.clone()
    assert ref.shape == (sum(p.numel() for p in model.parameters()),) and float(ref.norm()) > 0
    u = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    u = u - (u @ ref) / (ref @ ref) * ref  # orthogonal to ref
    g = -ref + u * (ref.norm() / u.norm())  # planted conflict: g · ref = -|ref|² < 0
    assert float(g @ ref) < 0
    _set_grad(model, g)
    agem.after_backward(strategy)
    proj = _flat_grad(model)
    assert float(proj @ ref) >= -1e-5 * float(proj.norm() * ref.norm())
    torch.testing.assert_close(proj, g - (g @ ref) / (ref @ ref) * ref, rtol=1e-4, atol=1e-6)
    assert agem.last_dot == pytest.approx(float(g @ ref), rel=1e-4)
    # a gradient that agrees with memory is left alone
    g2 = ref + u
    _set_grad(model, g2)
    agem.after_backward(strategy)
    torch.testing.assert_close(_flat_grad(model), g2)


def test_agem_memory_total_follows_mem_size(tiny_stream):
    (agem,) = make_plugins("agem", mem_size=10, batch_size=4)
    strategy = make_strategy([agem], mb=4)
    for exp in tiny_stream.train_stream:
        strategy.train(exp)
    assert [len(b) for b in agem.buffers] == [5, 5]  # 10 clips over the stream's 2 experiences
    mem = agem.sample_from_memory()
    assert len(mem) == 5 and mem[0].shape[0] == 4  # our layout, 2 clips from each experience


# ---------------------------------------------------------------- distillation
@pytest.mark.parametrize("plugin_fn", [SSLLwFPlugin, SSLLFLPlugin, SSLFeatureDistillationPlugin],
                         ids=["lwf", "lfl", "feature-distillation"])
def test_distillation_zero_for_same_model_positive_after_change(tiny_stream, plugin_fn):
    plugin = plugin_fn()
    strategy = make_strategy([plugin], mb=4)
    batch = next(iter_clip_batches(tiny_stream.train_stream[1].dataset, 4, "cpu"))
    model = strategy.model
    assert float(plugin.distillation_loss(model, batch["audio"], batch["video"])) == 0.0  # no teacher yet
    plugin.after_training_exp(strategy)  # the teacher: a frozen copy of the model
    teacher = plugin.prev_model
    assert teacher is not model and not any(p.requires_grad for p in teacher.parameters())
    same = plugin.distillation_loss(model, batch["audio"], batch["video"])
    assert abs(float(same)) < 1e-6
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # change the audio patch embedding only
        for p in model.patch_embed_a.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    changed = plugin.distillation_loss(model, batch["audio"], batch["video"])
    assert float(changed) > 1e-4
    changed.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


# ---------------------------------------------------------------- every method, end to end
@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_end_to_end(tiny_stream, name):
    probe = _Probe()
    plugins = make_plugins(name, mem_size=8, batch_size=4)
    strategy = make_strategy(plugins + [probe], mb=4)
    retrieval = get_retrieval_metrics(strategy.evaluator)
    for exp in tiny_stream.train_stream:
        strategy.train(exp)
        strategy.eval(tiny_stream.test_stream)
    assert strategy.skipped_steps == 0 and all(math.isfinite(x) for x in probe.losses)
    acc = retrieval.matrix("a2v", k=5)
    assert acc.shape == (2, 2) and np.isfinite(acc).all()
    for which in ("A", "F"):
        assert math.isfinite(retrieval.summary_metric(which, "v2a", k=1))
    n0, n1 = (len(e.dataset) for e in tiny_stream.train_stream)
    if name == "cumulative":
        assert probe.dataset_len == [n0, n0 + n1] and probe.iters == [n0 // 4, (n0 + n1) // 4]
    elif name == "multitask":
        assert probe.dataset_len[0] == n0 + n1 and probe.iters == [(n0 + n1) // 4, 0]
        np.testing.assert_array_equal(acc[0], acc[1])  # trained once: the rows are the same model
        assert retrieval.summary_metric("F", "a2v", k=5) == 0.0
    else:
        assert probe.iters == [n0 // 4, n1 // 4]
    if name in ("lwf", "lfl", "feature-distillation"):
        assert float(plugins[0].last_penalty) > 0  # distillation acted during experience 1


def test_joint_and_cumulative_templates_reuse_avalanche(tiny_stream):
    n0, n1 = (len(e.dataset) for e in tiny_stream.train_stream)
    model = create_model("tiny")
    probe = _Probe()
    joint = JointAVPretraining(model=model, optimizer=default_optimizer(model, 1e-3), train_mb_size=4,
                               device="cpu", plugins=[probe], evaluator=av_evaluator(loggers=[]))
    joint.train(tiny_stream.train_stream)
    assert probe.dataset_len == [n0 + n1] and probe.iters == [(n0 + n1) // 4]
    with pytest.raises(AlreadyTrainedError):
        joint.train(tiny_stream.train_stream)
    model = create_model("tiny")
    probe = _Probe()
    cum = CumulativeAVPretraining(model=model, optimizer=default_optimizer(model, 1e-3), train_mb_size=4,
                                  device="cpu", plugins=[probe], evaluator=av_evaluator(loggers=[]))
    for exp in tiny_stream.train_stream:
        cum.train(exp)
    assert probe.dataset_len == [n0, n0 + n1]


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["si", "rwalk", "lwf", "cumulative", "multitask"])
def test_resume_reproduces_next_experience(tiny_stream, name, tmp_path):
    """Save after experience 0; a fresh strategy resumed from the file trains experience 1 with
    the same losses (anchors, importances, teacher, union or 'trained' flag restored)."""
    probe = _Probe()
    strategy = make_strategy(make_plugins(name, mem_size=8, batch_size=4) + [probe], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    save_checkpoint(tmp_path / "ck.pt", strategy)
    probe.losses.clear()
    strategy.train(tiny_stream.train_stream[1])
    expected = list(probe.losses)
    probe2 = _Probe()
    fresh = make_strategy(make_plugins(name, mem_size=8, batch_size=4) + [probe2], mb=4, seed=99)
    load_checkpoint(tmp_path / "ck.pt", fresh)
    fresh.train(tiny_stream.train_stream[1])
    assert probe2.losses == expected


def test_agem_resume_rebuilds_the_memory(tiny_stream, tmp_path):
    agem = SSLAGEMPlugin(patterns_per_experience=6, sample_size=4, seed=3)
    strategy = make_strategy([agem], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    save_checkpoint(tmp_path / "ck.pt", strategy)
    agem2 = SSLAGEMPlugin(patterns_per_experience=6, sample_size=4, seed=3)
    fresh = make_strategy([agem2], mb=4, seed=99)
    load_checkpoint(tmp_path / "ck.pt", fresh)
    fresh.train(tiny_stream.train_stream[1])
    assert agem2.memory_indices[0] == agem.memory_indices[0] and len(agem2.buffers) == 2


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("build,option", [
    (lambda: SSLEWCPlugin(ewc_lambda=-1.0), "ewc_lambda"),
    (lambda: SSLEWCPlugin(mode="online"), "decay_factor"),
    (lambda: SSLSynapticIntelligencePlugin(si_lambda=-0.5), "si_lambda"),
    (lambda: SSLSynapticIntelligencePlugin(eps=0.0), "eps"),
    (lambda: SSLMASPlugin(alpha=1.5), "alpha"),
    (lambda: SSLRWalkPlugin(delta_t=0), "delta_t"),
    (lambda: SSLRWalkPlugin(ewc_alpha=-0.1), "ewc_alpha"),
    (lambda: SSLLwFPlugin(temperature=0.0), "temperature"),
    (lambda: SSLLFLPlugin(lambda_e=-1.0), "lambda_e"),
    (lambda: SSLFeatureDistillationPlugin(mode="l1"), "mode"),
    (lambda: SSLAGEMPlugin(patterns_per_experience=4, sample_size=1), "sample_size"),
    (lambda: SSLAGEMPlugin(sample_size=4), "patterns_per_experience or mem_size"),
    (lambda: make_plugins("rwalk", mem_size=8, batch_size=4, ewc_alpha=1.5), "ewc_alpha"),
    (lambda: make_plugins("agem", mem_size=0, batch_size=4), "mem_size"),
])
def test_out_of_range_options_name_the_option(build, option):
    with pytest.raises(ValueError, match=option):
        build()


@pytest.mark.parametrize("plugin", [
    SSLSynapticIntelligencePlugin, SSLMASPlugin, SSLRWalkPlugin, SSLLwFPlugin, SSLLFLPlugin,
    SSLFeatureDistillationPlugin, lambda: SSLAGEMPlugin(patterns_per_experience=4, sample_size=4),
    CumulativePlugin, MultitaskPlugin,
], ids=["si", "mas", "rwalk", "lwf", "lfl", "fd", "agem", "cumulative", "multitask"])
def test_plugins_on_a_foreign_template_name_the_template(tiny_stream, plugin):
    model = create_model("tiny")
    strategy = Naive(model=model, optimizer=default_optimizer(model), criterion=torch.nn.CrossEntropyLoss(),
                     train_mb_size=4, device="cpu", plugins=[plugin()], evaluator=None)
    with pytest.raises(TypeError, match="AVPretraining"):
        strategy.train(tiny_stream.train_stream[0])
