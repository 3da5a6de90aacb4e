"""Smoke run of benchmarks_av/bench_efficiency.py on the tiny model, plus its counting rules.

No timing assertions: only deterministic figures (FLOPs, saved bytes, buffer sizes, shapes) and
the structure of the report.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

_PATH = Path(__file__).resolve().parents[1] / "benchmarks_av" / "bench_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_efficiency", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_efficiency"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report(bench):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread avoids OpenMP barriers on a shared CPU
    try:
        return bench.run_benchmark(
            ["tiny"], batch_size=4, warmup=1, count_steps=1, steps=1, attention="both", device="cpu",
            log=lambda m: None,
        )
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- counting rules
def test_saved_bytes_count_unique_storages_and_skip_parameters(bench):
    lin = torch.nn.Linear(8, 24)
    x = torch.randn(4, 8, requires_grad=True)
    with bench.SavedTensorCounter(exclude=list(lin.parameters())) as c:
        qkv = lin(x)  # saves x (4x8 fp32 = 128 B) and the weight (excluded)
        q, k, v = qkv.unbind(dim=1)[:3]  # three views of one (4, 24) storage
        y = (q * k * v).sum()  # saves q, k, v and q*k: the views count once, as the qkv storage
    assert c.n_saved >= 4
    qk_bytes = 4 * 4  # q*k, a (4,) fp32 tensor
    assert c.total_bytes == 4 * 8 * 4 + 4 * 24 * 4 + qk_bytes
    y.backward()  # the hooks' unpack path returns tensors unchanged
    assert x.grad is not None and x.grad.shape == x.shape

    # forward-only counting: same bytes, nothing retained, and the graph refuses a backward
    with bench.SavedTensorCounter(exclude=list(lin.parameters()), retain=False) as c2:
        qkv = lin(x)
        q, k, v = qkv.unbind(dim=1)[:3]
        y = (q * k * v).sum()
    assert c2.total_bytes == c.total_bytes
    with pytest.raises(RuntimeError, match="forward-only"):
        y.backward()


def test_cpu_sdpa_flops_match_the_explicit_kernel(bench):
    b, h, n, m, d = 2, 3, 5, 7, 4
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, d)
    with FlopCounterMode(display=False, custom_mapping=bench.cpu_sdpa_flop_mapping()) as fused:
        out_f = F.scaled_dot_product_attention(q, k, v)
    with FlopCounterMode(display=False) as explicit:
        out_e = bench.explicit_sdpa(q, k, v)
    torch.testing.assert_close(out_f, out_e)
    assert fused.get_total_flops() == explicit.get_total_flops() == 2 * (2 * b * h * n * m * d)


def test_attention_mode_switches_and_restores(bench):
    from timm.models.vision_transformer import Attention

    import avalanche_av.models.avm as avm_mod
    from avalanche_av.models import create_model

    model = create_model("tiny")
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    before, f_before = [m.fused_attn for m in attns], avm_mod.F
    with bench.attention_mode(model, "explicit"):
        assert not any(m.fused_attn for m in attns)
        assert avm_mod.F.scaled_dot_product_attention is bench.explicit_sdpa
        assert avm_mod.F.layer_norm is F.layer_norm  # everything else passes through
    assert [m.fused_attn for m in attns] == before and avm_mod.F is f_before
    with pytest.raises(ValueError, match="attention mode"):
        with bench.attention_mode(model, "flash"):
            pass


def test_raw_clip_bytes(bench):
    from avalanche_av.models import get_config

    assert bench.raw_clip_fp32_bytes(get_config("base")) == 4 * (1024 * 128 + 4 * 3 * 224 * 224)


# ----------------------------------------------------------------------------- harness smoke run
def test_smoke_report_figures_are_positive_and_consistent(report):
    block = report["models"]["tiny"]
    b = report["settings"]["batch_size"]
    for mode in ("fused", "explicit"):
        res = block["modes"][mode]["strategies"]
        for name, r in res.items():
            assert r["flops_per_step"] > 0 and r["activation_bytes"] > 0, (mode, name)
            assert r["samples_per_s"] > 0 and r["samples_per_cpu_s"] > 0
            # steady state: a full memory replays a batch as large as the current one
            assert r["memory_batch"] == (0 if name == "finetune" else b), (mode, name)
            assert r["processed_per_step"] == (b if name == "finetune" else 2 * b)
        # same matmuls for ER and DER++ (the penalty is elementwise); replay doubles the batch
        assert res["er"]["flops_per_step"] == res["der++"]["flops_per_step"]
        assert res["er"]["flops_per_step"] >= 2 * res["finetune"]["flops_per_step"]
        # STELLA and STELLA+ train on the same token counts
        assert res["stella"]["flops_per_step"] == res["stella+"]["flops_per_step"]
        assert res["stella"]["activation_bytes"] == res["stella+"]["activation_bytes"]
        c = block["config"]
        full_a = (c["audio_length"] // c["patch_size"]) * (c["num_mel_bins"] // c["patch_size"])
        assert res["stella"]["tokens_per_sample"]["audio"] == full_a // 2  # ρ = 0.5 kept
        assert res["der++"]["tokens_per_sample"]["audio"] == full_a
        # STELLA's trained part (everything but its plugin's scoring/selection) is cheaper than
        # DER++; its total is not on tiny, where the full-clip scoring pass dominates.
        split = res["stella"]["flops_split"]
        assert 0 < split["scoring"] <= split["before_forward"] < res["stella"]["flops_per_step"]
        assert res["stella"]["flops_per_step"] - split["before_forward"] < res["der++"]["flops_per_step"]
        assert res["stella"]["activation_bytes"] < res["der++"]["activation_bytes"]
        assert set(res["stella"]["phases"]) >= {"scoring_share", "selection_share", "cpu_selection_share"}
        # the AVM's training forward (inside STELLA's before_forward) is part of its activations
        assert 0 < res["stella"]["activation_bytes_before_forward"] < res["stella"]["activation_bytes"]
        ratios = block["modes"][mode]["ratios_vs_derpp"]
        assert ratios["der++"]["activation_bytes"] == 1.0
    fused, explicit = block["modes"]["fused"]["strategies"], block["modes"]["explicit"]["strategies"]
    for name in fused:  # the explicit kernel also saves attention probabilities
        assert explicit[name]["activation_bytes"] > fused[name]["activation_bytes"], name


def test_smoke_buffers_and_targets(bench, report):
    buf = report["models"]["tiny"]["buffer"]
    assert buf["finetune"]["bytes_per_sample"] == 0
    assert 0 < buf["er"]["bytes_per_sample"] < buf["der++"]["bytes_per_sample"] < buf["stella"]["bytes_per_sample"]
    assert buf["stella+"]["bytes_per_sample"] < buf["stella"]["bytes_per_sample"]
    assert buf["stella"]["ratio_to_fp32_raw_clip"] < 1
    keys = {t["target"] for t in report["targets"]}
    assert keys == {k for k, *_ in bench.TARGETS}
    assert all(isinstance(t["met"], bool) for t in report["targets"])
    md = bench.to_markdown(report, "python benchmarks_av/bench_efficiency.py --models tiny")
    assert "| stella+ |" in md and "## Targets" in md and "--models tiny" in md


def test_lean_schedule_counts_explicit_forward_only(bench, report):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep = bench.run_benchmark(
            ["tiny"], batch_size=report["settings"]["batch_size"], warmup=0, count_steps=1, steps=0,
            attention="both", lean=["tiny"], lean_steps=1, strategies=("der++", "stella"), device="cpu",
            log=lambda m: None,
        )
    finally:
        torch.set_num_threads(threads)
    modes = rep["models"]["tiny"]["modes"]
    full = report["models"]["tiny"]["modes"]
    for name in ("der++", "stella"):
        fused, explicit = modes["fused"]["strategies"][name], modes["explicit"]["strategies"][name]
        assert fused["timed_steps"] == 1 and fused["samples_per_cpu_s"] > 0
        assert explicit["forward_only"] and "step_s_median" not in explicit
        assert 0 < explicit["forward_flops"] < fused["flops_per_step"]
        # a forward-only count saves exactly what the full step saves
        assert explicit["activation_bytes"] == full["explicit"]["strategies"][name]["activation_bytes"]
        assert fused["activation_bytes"] == full["fused"]["strategies"][name]["activation_bytes"]
        assert fused["flops_per_step"] == full["fused"]["strategies"][name]["flops_per_step"]
    with pytest.raises(ValueError, match="--lean"):
        bench.run_benchmark(["tiny"], lean=["base"], log=lambda m: None)
