"""Efficiency meters (avalanche_av.evaluation.efficiency) on planted computations.

No timing assertions: FLOPs, saved bytes, call counts and counter sums are deterministic.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch.profiler import ProfilerActivity, profile, record_function

from avalanche_av.evaluation.efficiency import (
    EfficiencyMetric,
    EfficiencyPlugin,
    FlopMeter,
    PhaseMeter,
    SavedActivationMeter,
    fused_attention,
    memory_bytes_per_sample,
    profiler_phase_totals,
    raw_clip_bytes,
    set_fused_attention,
    strategy_modules,
    summarize_records,
)

F32 = 4


# ----------------------------------------------------------------------------- saved activations
def test_saved_bytes_of_a_matmul_chain_equal_the_hand_count():
    w1 = torch.nn.Parameter(torch.randn(8, 16))
    w2 = torch.nn.Parameter(torch.randn(16, 3))
    x = torch.randn(4, 8, requires_grad=True)
    with SavedActivationMeter(exclude=[w1, w2]) as m:
        y = ((x @ w1).relu() @ w2).sum()
    # mm saves x (4x8) and w1 (excluded); relu saves its output r (4x16); mm saves r (the same
    # storage, counted once) and w2 (excluded); sum saves nothing.
    assert m.total_bytes == 4 * 8 * F32 + 4 * 16 * F32
    assert m.n_storages == 2 and m.n_saved == 5
    y.backward()  # the hooks hand tensors back unchanged
    assert x.grad is not None and w1.grad is not None


def test_saved_views_count_once_and_forward_only_refuses_backward():
    lin = torch.nn.Linear(8, 24)
    x = torch.randn(4, 8, requires_grad=True)

    def run():
        qkv = lin(x)  # saves x (4x8) and the weight (excluded)
        q, k, v = qkv.unbind(dim=1)[:3]  # three views of one (4, 24) storage
        return (q * k * v).sum()  # saves q, k, v (one storage: qkv) and q*k (4,)

    with SavedActivationMeter(exclude=list(lin.parameters())) as full:
        y = run()
    assert full.total_bytes == 4 * 8 * F32 + 4 * 24 * F32 + 4 * F32
    y.backward()
    with SavedActivationMeter(exclude=list(lin.parameters()), retain=False) as fwd:
        y = run()
    assert fwd.total_bytes == full.total_bytes
    with pytest.raises(RuntimeError, match="forward-only"):
        y.backward()


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("input_grad", [False, True])
def test_flops_of_a_linear_layer(input_grad):
    b, fin, fout = 3, 8, 5
    lin = torch.nn.Linear(fin, fout)
    x = torch.randn(b, fin, requires_grad=input_grad)
    with FlopMeter() as fwd:
        y = lin(x)
    assert fwd.total == 2 * b * fin * fout
    with FlopMeter() as bwd:
        y.sum().backward()
    # the weight gradient is one more (fout x b) @ (b x fin) matmul; the input's another
    assert bwd.total == (2 if input_grad else 1) * 2 * b * fin * fout
    assert fwd.by_op() == {"aten.addmm": 2 * b * fin * fout}


def test_cpu_sdpa_flops_match_the_explicit_kernel():
    b, h, n, m, d = 2, 3, 5, 7, 4
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, d)
    with FlopMeter() as fused:
        out_f = F.scaled_dot_product_attention(q, k, v)
    with FlopMeter() as explicit:
        out_e = (q * d**-0.5 @ k.transpose(-2, -1)).softmax(-1) @ v
    torch.testing.assert_close(out_f, out_e)
    assert fused.total == explicit.total == 2 * (2 * b * h * n * m * d)


def test_meters_left_out_of_order_raise_instead_of_corrupting_the_mode_stack():
    outer, inner = FlopMeter(), FlopMeter()
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="reverse order"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)
    with FlopMeter() as fm:  # the stack is intact
        torch.randn(2, 3) @ torch.randn(3, 4)
    assert fm.total == 2 * 2 * 3 * 4


# ----------------------------------------------------------------------------- phases
def _toy(ticks: list) -> None:
    """Planted ranges: 'a' (with a nested 'b' and a nested 'a'), an untracked 'c', a lone 'b'."""
    with record_function("a"):
        ticks[0] += 1
        with record_function("b"):
            ticks[0] += 10
        with record_function("a"):  # nested in 'a': inside the outer total, not a second call
            ticks[0] += 100
    with record_function("c"):
        ticks[0] += 1000
    with record_function("b"):
        ticks[0] += 10000


def test_phase_meter_sums_the_ranges_it_was_given():
    ticks = [0]
    with PhaseMeter(("a", "b"), counters={"ticks": lambda: ticks[0]}) as pm:
        _toy(ticks)
        _toy(ticks)
    st = pm.stats
    assert set(st) == {"a", "b"}
    assert st["a"].calls == 2 and st["a"].counters["ticks"] == 2 * (1 + 10 + 100)
    assert st["b"].calls == 4 and st["b"].counters["ticks"] == 2 * (10 + 10000)
    # outermost tracked ranges only: 'a' (with its nested 'b') and the lone 'b'
    assert pm.top_level.calls == 4 and pm.top_level.counters["ticks"] == 2 * (111 + 10000)
    assert st["a"].wall_s >= 0 and st["a"].cpu_s >= 0 and st["a"].cuda_s is None
    # ranges opened outside the meter are not reported
    _toy(ticks)
    assert pm.stats["a"].calls == 2
    with PhaseMeter(None) as every:
        _toy(ticks)
    assert {n: s.calls for n, s in every.stats.items()} == {"a": 1, "b": 2, "c": 1}


def test_phase_meter_counts_flops_and_saved_bytes_per_range():
    w = torch.nn.Parameter(torch.randn(6, 5))
    x = torch.randn(4, 6)
    with FlopMeter() as fm, SavedActivationMeter(exclude=[w]) as sm:
        with PhaseMeter(("proj", "act"), counters={"flops": lambda: fm.total, "saved": lambda: sm.total_bytes}) as pm:
            with record_function("proj"):
                h = x @ w  # 2·4·6·5 FLOPs; saves x (4x6)
            with record_function("act"):
                h.tanh()  # 0 FLOPs; saves the (4x5) output
    assert pm.stats["proj"].counters == {"flops": 2 * 4 * 6 * 5, "saved": 4 * 6 * F32}
    assert pm.stats["act"].counters == {"flops": 0, "saved": 4 * 5 * F32}


def test_profiler_phase_totals_read_the_same_ranges():
    ticks = [0]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _toy(ticks)
    tot = profiler_phase_totals(prof, ("a", "b"))
    assert {n: s.calls for n, s in tot.items()} == {"a": 1, "b": 2}
    assert tot["a"].wall_s > 0
    assert profiler_phase_totals(prof, None)["c"].calls == 1


# ----------------------------------------------------------------------------- Avalanche plugin / metric
B, IN, C = 4, 8, 5


class _ToyStage(SupervisedPlugin):
    """Emits a range with a planted matmul, as a method's stage would."""

    def before_forward(self, strategy, **kwargs):
        with record_function("toy.stage"):
            torch.randn(3, 7) @ torch.randn(7, 2)


TOY_FLOPS = 2 * 3 * 7 * 2


def _naive(plugins, evaluator=None):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(0)
    ds = _make_taskaware_tensor_classification_dataset(torch.randn(3 * B, IN), torch.randint(0, C, (3 * B,)))
    bm = benchmark_from_datasets(train=[ds])
    model = torch.nn.Linear(IN, C)
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=B, train_epochs=1,
        device="cpu", plugins=plugins, evaluator=evaluator or EvaluationPlugin(loggers=[]),
    )
    return strategy, bm.train_stream[0]


def test_efficiency_plugin_counts_a_training_iteration():
    meter = EfficiencyPlugin(flops=True, activations=True, phases=("toy.stage",),
                             describe=lambda s: {"rows": int(s.mb_x.shape[0])})
    strategy, exp = _naive([_ToyStage(), meter])
    strategy.train(exp)
    assert len(meter.records) == 3
    rec = meter.records[-1]
    # forward 2·B·IN·C, weight gradient 2·B·IN·C (the input needs none), plus the toy stage
    assert rec.flops == 2 * (2 * B * IN * C) + TOY_FLOPS
    # the input (B, IN), log-softmax output (B, C), int64 targets (B,), NLL's total weight ()
    assert rec.saved_bytes == B * IN * F32 + B * C * F32 + B * 8 + F32
    assert rec.phases["toy.stage"].calls == 1 and rec.phases["toy.stage"].counters["flops"] == TOY_FLOPS
    assert rec.wall_s > 0 and rec.info == {"rows": B}
    s = meter.summary(batch_size=B)
    assert s["iterations"] == 3 and s["flops"] == rec.flops and s["samples_per_s"] > 0
    assert s["phases"]["toy.stage"]["flops"] == TOY_FLOPS


def test_forward_only_counting_saves_the_same_bytes_and_skips_the_update():
    meter = EfficiencyPlugin(flops=True, activations=True, forward_only=True, timing=False)
    strategy, exp = _naive([_ToyStage(), meter])
    before = strategy.model.weight.detach().clone()
    strategy.train(exp)
    rec = meter.records[-1]
    assert rec.forward_only and rec.wall_s is None
    assert rec.flops == 2 * B * IN * C + TOY_FLOPS  # no backward
    assert rec.saved_bytes == B * IN * F32 + B * C * F32 + B * 8 + F32
    torch.testing.assert_close(strategy.model.weight.detach(), before)  # no update happened
    assert summarize_records(meter.records)["forward_flops"] == rec.flops


def test_efficiency_metric_reaches_the_loggers_and_two_counting_windows_are_refused():
    from avalanche.training.plugins import EvaluationPlugin

    metric = EfficiencyMetric(flops=True)
    evaluator = EvaluationPlugin(metric, loggers=[])
    strategy, exp = _naive([], evaluator)
    strategy.train(exp)
    last = evaluator.get_last_metrics()
    assert last["Efficiency/flops"] == 2 * (2 * B * IN * C) and last["Efficiency/step_s"] > 0

    strategy, exp = _naive([EfficiencyPlugin(flops=True)], EvaluationPlugin(EfficiencyMetric(flops=True), loggers=[]))
    with pytest.raises(ValueError, match="only one may"):
        strategy.train(exp)
    strategy.plugins[0].close()  # leave the unfinished window's meters
    with FlopMeter() as fm:  # the mode stack is clean again
        torch.randn(2, 3) @ torch.randn(3, 4)
    assert fm.total == 48


def test_efficiency_plugin_on_the_av_template_sees_stella_stages(tiny_stream):
    from avalanche_av.training import make_plugins

    from .conftest import make_strategy

    meter = EfficiencyPlugin(flops=True, activations=True, phases=None, timing=False)

    class LastForwardOnly(SupervisedPlugin):
        def before_training_iteration(self, strategy, **kwargs):
            if strategy.clock.train_exp_iterations == 3:
                meter.configure(forward_only=True)

    strategy = make_strategy([*make_plugins("stella", mem_size=8, batch_size=4), LastForwardOnly(), meter], mb=4)
    strategy.train(tiny_stream.train_stream[0])  # 16 clips: 4 iterations, the memory full from the 3rd
    assert len(meter.records) == 4
    first, rec, fwd = meter.records[0], meter.records[2], meter.records[3]
    # a forward-only count saves exactly what a full step saves (same shapes, full memory)
    assert fwd.forward_only and fwd.saved_bytes == rec.saved_bytes and fwd.flops < rec.flops
    assert "stella.select_memory" not in first.phases and "stella.penalty" not in first.phases  # empty memory
    for name in ("av.forward", "av.backward", "stella.score", "stella.avm_loss", "stella.importance",
                 "stella.exclusion", "stella.select_current", "stella.select_memory", "stella.penalty",
                 "stella.memory_update", "memory.sample", "memory.add"):
        assert rec.phases[name].calls == 1, name
    ph = {n: p.counters for n, p in rec.phases.items()}
    assert ph["stella.score"]["saved_bytes"] == 0  # the scoring pass runs without gradients
    assert ph["stella.score"]["flops"] > 0 and ph["stella.avm_loss"]["saved_bytes"] > 0
    assert ph["av.forward"]["saved_bytes"] + ph["stella.avm_loss"]["saved_bytes"] <= rec.saved_bytes
    assert sum(ph[n]["flops"] for n in ("stella.score", "stella.avm_loss", "av.forward", "av.backward")) <= rec.flops
    # the AVM is a plugin module: its weights are excluded like the backbone's
    avm = strategy.plugins[0].avm
    assert any(m is avm for m in strategy_modules(strategy))


# ----------------------------------------------------------------------------- helpers
def test_memory_bytes_per_sample_sums_the_memory_plugins():
    class Mem:
        def __init__(self, n):
            self.n = n

        def memory_bytes_per_sample(self):
            return self.n

    class Strategy:
        plugins = [Mem(100), object(), Mem(28)]

    assert memory_bytes_per_sample(Strategy()) == 128
    assert memory_bytes_per_sample([object()]) == 0


def test_raw_clip_bytes():
    from avalanche_av.models import get_config

    assert raw_clip_bytes(get_config("base")) == 4 * (1024 * 128 + 4 * 3 * 224 * 224)
    assert raw_clip_bytes(get_config("tiny"), bytes_per_element=1) == 128 * 64 + 4 * 3 * 64 * 64


def test_fused_attention_switches_timm_and_the_avm_and_the_explicit_kernel_saves_more():
    from timm.models.vision_transformer import Attention

    from avalanche_av.models.avm import AVMatching

    torch.manual_seed(0)
    avm, attn = AVMatching(dim=32, num_heads=4), Attention(dim=32, num_heads=4)
    fa, fv = torch.randn(2, 6, 32), torch.randn(2, 9, 32)

    def run():
        with SavedActivationMeter(exclude=[*avm.parameters(), *attn.parameters()]) as m:
            logit = avm(fa, fv, return_attn=False).logit
            y = attn(fa)
        return logit, y, m.total_bytes

    with fused_attention([avm, attn], True) as n:
        assert n == 2
        logit_f, y_f, bytes_f = run()
    with fused_attention([avm, attn], False):
        assert avm.fused_attn is False and attn.fused_attn is False
        logit_e, y_e, bytes_e = run()
    torch.testing.assert_close(logit_f, logit_e)
    torch.testing.assert_close(y_f, y_e)
    assert bytes_e > bytes_f  # the explicit kernel keeps its attention probabilities
    assert set_fused_attention(torch.nn.Sequential(avm, attn, torch.nn.Linear(2, 2)), False) == 2
    assert avm.fused_attn is False
