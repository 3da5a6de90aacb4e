"""Smoke run of benchmarks_av/bench_efficiency.py on the tiny preset, as a user runs it.

The script is run as a subprocess (it is a script over the package API, not a module). Only
deterministic figures are asserted (FLOPs, saved bytes, buffer sizes, token counts) plus the
report's structure; no timing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks_av" / "bench_efficiency.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("eff") / "efficiency_tiny.json"
    proc = _run("--models", "tiny", "--batch-size", "4", "--warmup", "0", "--count-steps", "1",
                "--phase-steps", "1", "--steps", "1", "--attention", "both", "--timed-attention", "fused",
                "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").exists()
    rep = json.loads(out.read_text())
    rep["_md"] = out.with_suffix(".md").read_text()
    return rep


def test_counts_are_consistent_across_strategies(report):
    block = report["models"]["tiny"]
    b = report["settings"]["batch_size"]
    c = block["config"]
    for mode in ("fused", "explicit"):
        res = block["modes"][mode]["strategies"]
        for name, r in res.items():
            assert r["flops_per_step"] > 0 and r["activation_bytes"] > 0, (mode, name)
            # steady state: a full memory replays a batch as large as the current one
            assert r["memory_batch"] == (0 if name == "finetune" else b), (mode, name)
            assert r["processed_per_step"] == (b if name == "finetune" else 2 * b)
        # ER and DER++ run the same matmuls (the penalty is elementwise); replay doubles the batch
        assert res["er"]["flops_per_step"] == res["der++"]["flops_per_step"] >= 2 * res["finetune"]["flops_per_step"]
        assert res["stella"]["flops_per_step"] == res["stella+"]["flops_per_step"]
        assert res["stella"]["activation_bytes"] == res["stella+"]["activation_bytes"]
        n_a = (c["audio_length"] // c["patch_size"]) * (c["num_mel_bins"] // c["patch_size"])
        assert res["der++"]["tokens_per_sample"]["audio"] == n_a
        assert res["stella"]["tokens_per_sample"]["audio"] == n_a // 2  # ρ_a = 0.5 kept
        # STELLA's phases, from the plugins' record_function ranges
        ph, groups = res["stella"]["phases"], res["stella"]["phase_groups"]
        assert ph["stella.score"]["saved_bytes"] == 0  # the scoring pass has no gradients
        assert 0 < groups["scoring"]["flops"] < res["stella"]["flops_per_step"]
        assert 0 < groups["plugin"]["saved_bytes"] < res["stella"]["activation_bytes"]  # the AVM's training forward
        # what the backbone trains on (everything outside the plugin) is cheaper than DER++'s step
        assert res["stella"]["flops_per_step"] - groups["plugin"]["flops"] < res["der++"]["flops_per_step"]
        assert res["stella"]["activation_bytes"] < res["der++"]["activation_bytes"]
        assert block["modes"][mode]["ratios_vs_derpp"]["der++"]["activation_bytes"] == 1.0
    fused, explicit = (block["modes"][m]["strategies"] for m in ("fused", "explicit"))
    for name in fused:  # the explicit kernel also saves the attention probabilities
        assert explicit[name]["activation_bytes"] > fused[name]["activation_bytes"], name
        # same forward FLOPs; PyTorch's fused-attention backward formula also counts recomputing q·kᵀ
        assert explicit[name]["flops_per_step"] < fused[name]["flops_per_step"], name
    # the timed and phase-metered rounds ran in fused mode only
    assert fused["stella"]["samples_per_cpu_s"] > 0 and 0 < fused["stella"]["phase_groups"]["selection"]["share_cpu"] < 1
    assert "samples_per_s" not in explicit["stella"] and "share_cpu" not in explicit["stella"]["phases"]["av.forward"]


def test_buffers_targets_and_markdown(report):
    buf = report["models"]["tiny"]["buffer"]
    assert buf["finetune"]["bytes_per_sample"] == 0
    assert 0 < buf["er"]["bytes_per_sample"] < buf["der++"]["bytes_per_sample"] < buf["stella"]["bytes_per_sample"]
    assert buf["stella+"]["bytes_per_sample"] < buf["stella"]["bytes_per_sample"]
    assert buf["stella"]["ratio_to_fp32_raw_clip"] < 1
    assert {t["target"] for t in report["targets"]} == {
        "act_fused", "act_explicit", "throughput_base", "selection_share", "buffer_stella", "buffer_stella_plus"}
    md = report["_md"]
    assert "| stella+ |" in md and "## Targets" in md and "--models tiny" in md and "stella.select_memory" in md


def test_bad_arguments_exit_2_with_one_line():
    proc = _run("--models", "tiny", "--lean", "base")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bench_efficiency: error: --lean names models")
