"""Efficiency of Finetune, ER, DER++, STELLA and STELLA+ side by side, in one process.

A thin script over the package's public API: ``create_model``, ``make_plugins``,
``AVPretraining`` and the meters of :mod:`avalanche_av.evaluation.efficiency` (counting rules in
``docs/metrics.md``, "Efficiency"). Nothing in the package is replaced at run time: the attention
kernel is chosen with the timm-style ``fused_attn`` switches, and STELLA's phases are the
``torch.profiler.record_function`` ranges the plugins emit.

For every model preset and attention mode, the strategies train on the same synthetic
minibatches with the same batch size, in steady state with a full memory (each replay method
replays a memory batch as large as the current batch). Per (model, mode, strategy):

* **FLOPs per training step** (``FlopMeter``: matmul, convolution and attention kernels over the
  whole iteration: plugins, forward, backward, update).
* **Activation bytes** saved for backward per step (``SavedActivationMeter``: unique storages,
  parameters and buffers of the backbone and of STELLA's AVM excluded).
* **Throughput**: current samples per second (``batch_size`` / median step time; the memory
  batch is not counted), strategies interleaved round-robin, the starting one rotating every
  round. On CPU the process CPU time is reported beside the wall clock (``samples_per_cpu_s``):
  with one intra-op thread it is what the step computed, not inflated by other processes
  time-slicing a shared machine, so the CPU targets use it.
* **Phases**: per ``record_function`` range (``av.forward``, ``av.backward``, ``memory.*``,
  ``stella.*``, and PyTorch's own ``Optimizer.step#Adam.step`` / ``Optimizer.zero_grad#...``), its FLOPs and saved bytes (counted steps) and its time and share of the step
  (separate phase-metered steps: the phase meter costs a few microseconds per torch call, so
  throughput is timed without it). STELLA's *scoring* = ``stella.score`` + ``stella.avm_loss``
  (the no-grad pass over the full clip, the deranged re-fusion and both AVM forwards);
  *selection* = ``stella.importance`` + ``stella.exclusion`` + ``stella.select_current`` +
  ``stella.select_memory``.
* **Buffer bytes per stored sample** (``memory_bytes_per_sample``) and the ratio to the fp32
  raw clip; **peak CUDA memory** per step on CUDA.

Attention modes: ``fused`` (``fused_attn = True``: ``scaled_dot_product_attention``) and
``explicit`` (``False``: ``softmax(q·kᵀ/√d)·v``, which saves the attention probabilities, the
paper's setting), set on every timm ``Attention`` of the backbone and on STELLA's AVM.

All strategies share **one** backbone and **one** Adam optimizer; each has its own plugins and
memory. What is measured does not depend on the weights' values, the update costs the same for
every strategy (Adam skips parameters without a gradient, e.g. the other STELLA's AVM), and one
base backbone + Adam state per strategy would not fit a small machine.

Schedule per attention mode: warm-up rounds (the first mode at least enough to fill the
memory), ``--count-steps`` counted rounds, ``--phase-steps`` phase-metered rounds and
``--steps`` timed rounds. ``--lean MODELS`` (the base config on CPU, where a step takes about
40 s): warm-up only fills the memory, at most one phase-metered round, ``--lean-steps`` timed
rounds, and explicit attention is
counted **forward-only** (activations are all saved in the forward; a test checks the bytes
equal a full step's) and neither phase-metered nor timed.

Run from the repository root, e.g.::

    OMP_NUM_THREADS=1 python benchmarks_av/bench_efficiency.py --models tiny,base --batch-size 4 \\
        --steps 15 --phase-steps 5 --warmup 2 --lean base --lean-steps 2 --threads 1 --device cpu \\
        --attention both --out benchmarks_av/results/efficiency_cpu.json

It prints a markdown report and writes the JSON to ``--out`` and the markdown next to it.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from avalanche.training.plugins import SupervisedPlugin

from avalanche_av.evaluation import av_evaluator
from avalanche_av.evaluation.efficiency import (
    ALL_PHASES,
    EfficiencyPlugin,
    memory_bytes_per_sample,
    raw_clip_bytes,
    set_fused_attention,
    strategy_modules,
    summarize_records,
)
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

STRATEGIES = ("finetune", "er", "der++", "stella", "stella+")
ATTENTION_MODES = ("fused", "explicit")
REFERENCE = "der++"
SCORING = ("stella.score", "stella.avm_loss")
SELECTION = ("stella.importance", "stella.exclusion", "stella.select_current", "stella.select_memory")

#: Targets of the issues: (key, description, comparison, threshold).
TARGETS = (
    ("act_fused", "activation bytes, fused attention: STELLA / DER++", "<=", 0.70),
    ("act_explicit", "activation bytes, explicit attention: STELLA / DER++", "<=", 0.60),
    ("throughput_base", "throughput on base (fused): STELLA / DER++", ">=", 0.97),
    ("selection_share", "selection stages / STELLA step", "<=", 0.10),
    ("buffer_stella", "STELLA buffer / fp32 raw clip", "<=", 0.30),
    ("buffer_stella_plus", "STELLA+ buffer / STELLA buffer", "<=", 0.55),
)


# ----------------------------------------------------------------------------- plumbing
def release_host_memory() -> None:
    """Give freed heap pages back to the OS between steps (glibc ``malloc_trim``; a no-op
    elsewhere), so the process does not keep every strategy's base-size high-water mark."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class AttentionKernel(SupervisedPlugin):
    """Sets the ``fused_attn`` switches of the model and of the plugins' modules (STELLA's AVM,
    built in its ``before_training``) at the start of every ``train()`` call, outside the
    measured iterations. Put it after the method's plugins."""

    def __init__(self, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.switched = 0

    def before_training(self, strategy, **kwargs):
        self.switched = set_fused_attention(strategy_modules(strategy), self.fused)


def describe(strategy) -> dict:
    """Rows processed and tokens per sample of the step just measured."""
    out = strategy.mb_output
    return {
        "processed": int(out.per_sample_loss.shape[0]),
        "audio_tokens": int(out.audio_idx.shape[1]),
        "video_tokens": int(out.video_idx.shape[1]),
    }


def build_experiences(config, batch_size: int, n_pool: int, seed: int) -> list:
    """``n_pool`` training experiences of exactly ``batch_size`` synthetic clips in the model's shapes."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    from avalanche_av.benchmarks import sounding_objects

    grid = config.image_size // config.patch_size
    bm = sounding_objects(
        seed=seed, n_tasks=1, classes_per_task=4, train_clips_per_class=math.ceil(batch_size * n_pool / 4),
        eval_clips_per_class=1, n_frames=config.n_frames, image_size=config.image_size,
        patch_size=config.patch_size, object_cells=1 if grid < 8 else 2, n_objects=3 if grid >= 4 else 1,
        target_length=config.audio_length, num_mel_bins=config.num_mel_bins,
    )
    ds = bm.train_stream[0].dataset
    parts = [ds.subset(list(range(i * batch_size, (i + 1) * batch_size))) for i in range(n_pool)]
    return list(with_task_labels(benchmark_from_datasets(train=parts)).train_stream)


def _rounds(strategies: dict, names: Sequence[str], experiences: list, n: int, cursor: list, rotate: bool) -> None:
    """``n`` rounds of one training iteration per strategy; ``rotate`` moves the first one every round."""
    names = list(names)
    for r in range(n):
        k = r % len(names) if rotate else 0
        exp = experiences[cursor[0] % len(experiences)]
        cursor[0] += 1
        for name in names[k:] + names[:k]:
            strategies[name].train(exp)
            release_host_memory()


# ----------------------------------------------------------------------------- one model
def _strategy_figures(counted: list, phased: list, timed: list, batch_size: int) -> dict:
    out: dict = {}
    if counted:
        c = summarize_records(counted)
        info = counted[-1].info
        out.update(
            activation_bytes=c["saved_bytes"], saved_storages=c["saved_storages"], saved_tensors=c["saved_tensors"],
            forward_only=counted[-1].forward_only, processed_per_step=info["processed"],
            tokens_per_sample={"audio": info["audio_tokens"], "video": info["video_tokens"]},
        )
        if "flops" in c:
            out["flops_per_step"] = c["flops"]
        else:
            out["forward_flops"] = c["forward_flops"]
        out["memory_batch"] = info["processed"] - batch_size
        out["phases"] = {n: {"calls": p["calls"], "flops": int(p.get("flops", 0)), "saved_bytes": int(p.get("saved_bytes", 0))}
                         for n, p in c.get("phases", {}).items()}
    if phased:
        p = summarize_records(phased)
        out["phase_step_s"], out["phase_step_cpu_s"] = p["step_s"], p["step_cpu_s"]
        out["phase_unattributed_s"] = p.get("unattributed_s")
        for n, row in p.get("phases", {}).items():
            out.setdefault("phases", {}).setdefault(n, {}).update(
                {k: row[k] for k in ("wall_s", "cpu_s", "share_wall", "share_cpu", "cuda_s") if k in row}
            )
    if timed:
        t = summarize_records(timed, batch_size)
        out.update(
            timed_steps=len(timed), step_s_all=[r.wall_s for r in timed], step_cpu_s_all=[r.cpu_s for r in timed],
            step_s_median=t["step_s"], step_cpu_s_median=t["step_cpu_s"],
            samples_per_s=t["samples_per_s"], samples_per_cpu_s=t["samples_per_cpu_s"],
        )
        if "cuda_peak_bytes" in t:
            out["cuda_peak_bytes"], out["cuda_peak_step_bytes"] = t["cuda_peak_bytes"], t["cuda_peak_step_bytes"]
    ph = out.get("phases", {})
    if any(n.startswith("stella.") for n in ph):
        groups = {}
        for g, names in (("scoring", SCORING), ("selection", SELECTION),
                         ("plugin", tuple(n for n in ph if n.startswith("stella.")))):
            rows = [ph[n] for n in names if n in ph]
            keys = ("flops", "saved_bytes") + (("wall_s", "cpu_s") if phased else ())
            grp = {k: sum(r.get(k, 0) for r in rows) for k in keys}
            total = out.get("flops_per_step", out.get("forward_flops"))
            if total:
                grp["flops_share"] = grp["flops"] / total
            if phased:
                grp["share_wall"] = sum(r.get("share_wall", 0) for r in rows)
                grp["share_cpu"] = sum(r.get("share_cpu", 0) for r in rows)
            groups[g] = grp
        out["phase_groups"] = groups
    return out


def run_model(
    model_name: str, *, batch_size: int, mem_size: int, warmup: int, count_steps: int, phase_steps: int,
    steps: int, modes: Sequence[str], timed_modes: Sequence[str], lean: bool, lean_steps: int,
    device: torch.device, amp: Optional[str], seed: int, strategies: Sequence[str], log: Callable[[str], None],
) -> dict:
    """Measure every strategy on one model preset; returns the model's JSON block."""
    torch.manual_seed(seed)
    model = create_model(model_name).to(device)
    cfg = model.config
    t0 = time.perf_counter()
    experiences = build_experiences(cfg, batch_size, n_pool=4, seed=seed)
    log(f"[{model_name}] data ready in {time.perf_counter() - t0:.1f}s")

    optimizer = default_optimizer(model)  # shared: see the module docstring
    kernel = AttentionKernel()
    meters, objs = {}, {}
    for name in strategies:
        meters[name] = EfficiencyPlugin(enabled=False, describe=describe)
        objs[name] = AVPretraining(
            model=model, optimizer=optimizer, train_mb_size=batch_size, train_epochs=1, device=device,
            # the kernel switch after the method's plugins; the meter last, so its window encloses them
            plugins=[*make_plugins(name, mem_size=mem_size, batch_size=batch_size), kernel, meters[name]],
            evaluator=av_evaluator(loggers=[]), amp=amp,
        )

    def configure(**kw) -> None:
        for m in meters.values():
            m.configure(**kw)

    block: dict = {
        "config": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
        "patches": {"audio": cfg.num_audio_patches, "video": cfg.num_video_patches},
        "raw_clip_fp32_bytes": raw_clip_bytes(cfg), "lean": lean, "modes": {},
    }
    fill, cursor = math.ceil(mem_size / batch_size), [0]
    for i, mode in enumerate(modes):
        kernel.fused = mode == "fused"
        forward_only = lean and mode == "explicit"
        n_warm = (fill if lean else max(warmup, fill)) if i == 0 else (0 if lean else warmup)
        n_phase = (min(phase_steps, 1) if lean else phase_steps) if mode in timed_modes and not forward_only else 0
        n_timed = (lean_steps if lean else steps) if mode in timed_modes and not forward_only else 0
        records = {}
        schedule = (
            ("warm-up", n_warm, dict(enabled=False), False),
            ("counted", count_steps, dict(enabled=True, timing=False, flops=True, activations=True,
                                          phases=None, forward_only=forward_only), False),
            ("phase-metered", n_phase, dict(enabled=True, timing=True, flops=False, activations=False,
                                            phases=None, forward_only=False), True),
            ("timed", n_timed, dict(enabled=True, timing=True, flops=False, activations=False, phases=(),
                                    forward_only=False), True),
        )
        for kind, n, settings, rotate in schedule:
            t0 = time.perf_counter()
            for m in meters.values():
                m.records = []
            configure(**settings)
            _rounds(objs, strategies, experiences, n, cursor, rotate)
            records[kind] = {name: list(meters[name].records) for name in strategies}
            if n:
                log(f"[{model_name}/{mode}] {n} {kind} round(s){' (forward only)' if kind == 'counted' and forward_only else ''}"
                    f" in {time.perf_counter() - t0:.1f}s")
        configure(enabled=False)
        if "stella" in strategies and kernel.switched == 0:
            raise RuntimeError("no fused_attn switch found: cannot select the attention kernel")
        res = {
            name: _strategy_figures(records["counted"][name], records["phase-metered"][name],
                                    records["timed"][name], batch_size)
            for name in strategies
        }
        for name in strategies:
            mem = [p for p in objs[name].plugins if hasattr(p, "memory_bytes_per_sample")]
            res[name]["memory_size"] = sum(len(p.storage) for p in mem)
        block["modes"][mode] = {"strategies": res, "ratios_vs_derpp": _ratios(res)}

    raw = block["raw_clip_fp32_bytes"]
    buffers = {}
    for name in strategies:
        nbytes = memory_bytes_per_sample(objs[name])
        buffers[name] = {"bytes_per_sample": nbytes, "ratio_to_fp32_raw_clip": nbytes / raw}
    if buffers.get("stella", {}).get("bytes_per_sample") and "stella+" in buffers:
        buffers["stella+"]["ratio_to_stella"] = buffers["stella+"]["bytes_per_sample"] / buffers["stella"]["bytes_per_sample"]
    block["buffer"] = buffers
    return block


def _ratios(res: dict) -> dict:
    ref = res.get(REFERENCE)
    if not ref:
        return {}
    keys = ("flops_per_step", "forward_flops", "activation_bytes", "samples_per_s", "samples_per_cpu_s",
            "cuda_peak_step_bytes")
    return {name: {k: r[k] / ref[k] for k in keys if k in r and ref.get(k)} for name, r in res.items()}


def evaluate_targets(report: dict) -> list:
    """One entry per (target, model) the report has data for: value, threshold, met."""
    out = []
    for model_name, block in report["models"].items():
        modes = block["modes"]

        def add(key, value, note=""):
            if value is None:
                return
            _, desc, cmp, thr = next(t for t in TARGETS if t[0] == key)
            met = value <= thr if cmp == "<=" else value >= thr
            out.append({"target": key, "description": desc, "model": model_name, "value": value,
                        "comparison": cmp, "threshold": thr, "met": bool(met), "note": note})

        for mode, key in (("fused", "act_fused"), ("explicit", "act_explicit")):
            add(key, modes.get(mode, {}).get("ratios_vs_derpp", {}).get("stella", {}).get("activation_bytes"))
        q = modes.get("fused", {}).get("ratios_vs_derpp", {}).get("stella", {})
        scope = "" if model_name == "base" else "; the issue states this target for base only"
        if "samples_per_cpu_s" in q:
            add("throughput_base", q["samples_per_cpu_s"], "CPU time" + scope)
        elif "samples_per_s" in q:
            add("throughput_base", q["samples_per_s"], "wall clock" + scope)
        for mode in ("fused", "explicit"):
            grp = modes.get(mode, {}).get("strategies", {}).get("stella", {}).get("phase_groups", {}).get("selection", {})
            if "share_cpu" in grp:
                add("selection_share", grp["share_cpu"], f"{mode} attention, CPU time")
        buf = block.get("buffer", {})
        if "stella" in buf:
            add("buffer_stella", buf["stella"]["ratio_to_fp32_raw_clip"])
        if "ratio_to_stella" in buf.get("stella+", {}):
            add("buffer_stella_plus", buf["stella+"]["ratio_to_stella"])
    return out


def run_benchmark(
    models: Sequence[str], *, batch_size: int = 8, mem_size: Optional[int] = None, warmup: int = 2,
    count_steps: int = 1, phase_steps: int = 1, steps: int = 3, attention: str = "both",
    timed_attention: Optional[str] = None, lean: Sequence[str] = (), lean_steps: int = 1, device: str = "cpu",
    amp: Optional[str] = "auto", seed: int = 0, strategies: Sequence[str] = STRATEGIES,
    log: Callable[[str], None] = print, on_model_done: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Run the harness; returns the report dict (what ``--out`` holds). Raises ``ValueError``
    for bad arguments. ``on_model_done(report)`` gets the partial report after each model."""
    modes = list(ATTENTION_MODES) if attention == "both" else [attention]
    timed = modes if timed_attention is None else (
        list(ATTENTION_MODES) if timed_attention == "both" else [timed_attention])
    bad = [m for m in modes + timed if m not in ATTENTION_MODES]
    if bad:
        raise ValueError(f"attention must be 'fused', 'explicit' or 'both', got {bad[0]!r}")
    if [m for m in lean if m not in models]:
        raise ValueError(f"--lean names models that are not in --models: {[m for m in lean if m not in models]}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; allowed: {list(STRATEGIES)}")
    if batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2, got {batch_size}")
    mem_size = batch_size if mem_size is None else mem_size
    if mem_size < batch_size:
        raise ValueError(f"--mem-size ({mem_size}) must be >= --batch-size ({batch_size}) so replay batches are full")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    report: dict = {
        "settings": {
            "models": list(models), "batch_size": batch_size, "mem_size": mem_size, "warmup": warmup,
            "count_steps": count_steps, "phase_steps": phase_steps, "steps": steps, "attention": modes,
            "timed_attention": timed, "lean": [m for m in models if m in lean], "lean_steps": lean_steps,
            "device": str(dev), "amp": amp, "seed": seed, "threads": torch.get_num_threads(),
            "strategies": list(strategies),
        },
        "environment": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "host": platform.node(), "cpu_count": _cpu_count(),
            "cuda_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        },
        "models": {},
    }
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in models:
            report["models"][name] = run_model(
                name, batch_size=batch_size, mem_size=mem_size, warmup=warmup, count_steps=count_steps,
                phase_steps=phase_steps, steps=steps, modes=modes, timed_modes=timed, lean=name in lean,
                lean_steps=lean_steps, device=dev, amp=amp, seed=seed, strategies=strategies, log=log,
            )
            release_host_memory()
            report["wall_s"] = time.perf_counter() - t0
            report["targets"] = evaluate_targets(report)
            if on_model_done is not None:
                on_model_done(report)
    return report


def _cpu_count() -> Optional[int]:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ----------------------------------------------------------------------------- reporting
def _mib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def _fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _gflops(r: dict) -> str:
    if "flops_per_step" in r:
        return f"{r['flops_per_step'] / 1e9:,.1f}"
    if "forward_flops" in r:
        return f"{r['forward_flops'] / 1e9:,.1f} (fwd only)"
    return "-"


def to_markdown(report: dict, command: str = "") -> str:
    s, env = report["settings"], report["environment"]
    lines = ["# Efficiency: Finetune, ER, DER++, STELLA, STELLA+ (one process, side by side)", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        f"Date {env.get('date', '-')}, host `{env.get('host', '-')}` ({env.get('cpu_count', '?')} CPUs visible), "
        f"device `{s['device']}`{' (' + env['cuda_device'] + ')' if env.get('cuda_device') else ''}, "
        f"torch {env['torch']}, {s['threads']} thread(s). Batch {s['batch_size']} current + a memory batch of the "
        f"same size for replay methods (memory {s['mem_size']} clips, full when measured); {s['count_steps']} counted, "
        f"{s.get('phase_steps', 0)} phase-metered and {s['steps']} timed step(s) per strategy after warm-up, "
        f"strategies interleaved round-robin; AMP `{s['amp']}` (CPU: off). Wall time {report.get('wall_s', 0):.0f} s.",
        "",
        "FLOPs: matmul/conv/attention kernels per training step (forward + backward + update). Activations: "
        "unique storages saved for backward, parameters excluded. Throughput: current samples / median step time "
        "(wall clock, and per second of process CPU time, which other processes' load does not inflate). Ratios "
        "are vs DER++ in the same mode and run.",
    ]
    if s.get("lean"):
        lines += ["", f"Lean schedule for {', '.join('`' + m + '`' for m in s['lean'])}: warm-up only fills the "
                  f"memory; at most 1 phase-metered and {s.get('lean_steps', 1)} timed step(s) per strategy (fused); "
                  "explicit attention is "
                  "counted forward-only (activation bytes; forward FLOPs; not timed)."]
    for model_name, block in report["models"].items():
        c, buf = block["config"], block["buffer"]
        lines += ["", f"## `{model_name}`: audio {c['audio_length']}x{c['num_mel_bins']} ({block['patches']['audio']} "
                  f"patches), video {c['n_frames']}x{c['image_size']}² ({block['patches']['video']} patches), "
                  f"{c['modality_depth']}+{c['shared_depth']} blocks, width {c['embed_dim']}, mask ratio {c['mask_ratio']}"]
        for mode, mb in block["modes"].items():
            lines += ["", f"### {mode} attention", "",
                      "| strategy | tokens a/v per sample | processed / step | GFLOPs / step | x DER++ | activations MiB "
                      "| x DER++ | step ms wall (CPU) | samples/s wall | x DER++ | samples/CPU-s | x DER++ "
                      "| peak CUDA MiB (step) | buffer B / sample | x fp32 clip |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in mb["strategies"].items():
                q, tok = mb["ratios_vs_derpp"].get(name, {}), r.get("tokens_per_sample", {})
                step = r.get("step_s_median")
                cpu = r.get("step_cpu_s_median")
                lines.append(
                    f"| {name} | {tok.get('audio', '-')}/{tok.get('video', '-')} | {r.get('processed_per_step', '-')} "
                    f"| {_gflops(r)} | {_fmt(q.get('flops_per_step', q.get('forward_flops')))} "
                    f"| {_mib(r.get('activation_bytes'))} | {_fmt(q.get('activation_bytes'))} "
                    f"| {_fmt(None if step is None else step * 1e3, ',.0f')} ({_fmt(None if cpu is None else cpu * 1e3, ',.0f')}) "
                    f"| {_fmt(r.get('samples_per_s'), ',.2f')} | {_fmt(q.get('samples_per_s'))} "
                    f"| {_fmt(r.get('samples_per_cpu_s'), ',.2f')} | {_fmt(q.get('samples_per_cpu_s'))} "
                    f"| {_mib(r.get('cuda_peak_bytes'))} ({_mib(r.get('cuda_peak_step_bytes'))}) "
                    f"| {buf[name]['bytes_per_sample']:,} | {_fmt(buf[name]['ratio_to_fp32_raw_clip'], '.3f')} |"
                )
            lines += _phase_tables(mb["strategies"])
        lines += ["", "Buffer per stored sample: " + ", ".join(
            f"{n} {b['bytes_per_sample']:,} B ({b['ratio_to_fp32_raw_clip']:.3f}x fp32 clip)" for n, b in buf.items()
        ) + f"; fp32 raw clip {block['raw_clip_fp32_bytes']:,} B."]
        if "ratio_to_stella" in buf.get("stella+", {}):
            lines[-1] += f" STELLA+ / STELLA = {buf['stella+']['ratio_to_stella']:.3f}."
    lines += ["", "## Targets", "", "| target | model | measured | threshold | met |", "|---|---|---|---|---|"]
    for t in report.get("targets", []):
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['description']}{note} | {t['model']} | {t['value']:.3f} | {t['comparison']} "
                     f"{t['threshold']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _phase_tables(res: dict) -> list:
    """The per-strategy step split and STELLA's per-stage table (markdown lines)."""
    lines = []
    rows = [(n, r) for n, r in res.items() if r.get("phases")]
    if not rows:
        return lines
    timed_rows = [(n, r) for n, r in rows if r.get("phase_step_s")]
    if timed_rows:
        lines += ["", "Step split by `record_function` range (time: phase-metered steps, CPU time). The STELLA "
                  "stages exclude `stella.memory_update`, which is the memory's `memory.add`.", "",
                  "| strategy | phase-metered step ms (CPU) | av.forward | av.backward | optimizer | memory.sample + "
                  "memory.add | stella.* stages | outside every range (wall) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in timed_rows:
        ph = r["phases"]
        step = r.get("phase_step_cpu_s")

        def share(names):
            vals = [ph[n]["share_cpu"] for n in names if "share_cpu" in ph.get(n, {})]
            return f"{sum(vals):.1%}" if vals else "-"

        # stella.memory_update is the base's memory.add (counted in the memory column)
        stella = [n for n in ph if n.startswith("stella.") and n != "stella.memory_update"]
        un, pstep = r.get("phase_unattributed_s"), r.get("phase_step_s")
        lines.append(
            f"| {name} | {_fmt(None if step is None else step * 1e3, ',.0f')} | {share(['av.forward'])} "
            f"| {share(['av.backward'])} | {share([n for n in ph if n.startswith('Optimizer.')])} "
            f"| {share(['memory.sample', 'memory.add'])} | {share(stella)} "
            f"| {_fmt(None if un is None or not pstep else un / pstep, '.1%')} |"
        )
    stella_rows = [(n, r) for n, r in rows if any(k.startswith("stella.") for k in r["phases"])]
    if stella_rows:
        lines += ["", "STELLA's stages (time: phase-metered steps; FLOPs and activations: counted steps; scoring = "
                  "`stella.score` + `stella.avm_loss`; selection = importance, exclusion, select_current, "
                  "select_memory):", "",
                  "| strategy | stage | CPU ms | share of step (CPU) | GFLOPs | share of FLOPs | activations MiB |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in stella_rows:
            total = r.get("flops_per_step", r.get("forward_flops")) or 0
            of = " (of fwd)" if "forward_flops" in r else ""
            items = [(n, r["phases"][n]) for n in ALL_PHASES if n.startswith("stella.") and n in r["phases"]]
            items += [(f"**{g}**", v) for g, v in r.get("phase_groups", {}).items() if g in ("scoring", "selection")]
            for stage, p in items:
                cpu = p.get("cpu_s")
                fl = p.get("flops")
                lines.append(
                    f"| {name} | {stage} | {_fmt(None if cpu is None else cpu * 1e3, ',.1f')} "
                    f"| {_fmt(p.get('share_cpu'), '.1%')} | {_fmt(None if fl is None else fl / 1e9, ',.2f')} "
                    f"| {_fmt(fl / total if fl is not None and total else None, '.1%')}{of} | {_mib(p.get('saved_bytes'))} |"
                )
    return lines


# ----------------------------------------------------------------------------- CLI
def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,base", help="comma-separated presets (tiny, base, cav_mae_base)")
    ap.add_argument("--batch-size", type=int, default=8, help="current-batch size (same for every model)")
    ap.add_argument("--mem-size", type=int, default=None, help="memory size in clips (default: the batch size)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per strategy and timed mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per strategy and mode")
    ap.add_argument("--count-steps", type=int, default=1, help="steps under the FLOP / saved-tensor meters")
    ap.add_argument("--phase-steps", type=int, default=1,
                    help="steps under the phase meter per timed mode (at most 1 for --lean models)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--attention", default="both", choices=("fused", "explicit", "both"))
    ap.add_argument("--timed-attention", default=None, choices=("fused", "explicit", "both"),
                    help="modes whose steps are also timed (default: all of --attention)")
    ap.add_argument("--lean", default="", help="comma-separated models on the lean schedule (e.g. base on CPU)")
    ap.add_argument("--lean-steps", type=int, default=1, help="timed steps per strategy for --lean models")
    ap.add_argument("--amp", default="auto", help="template AMP: auto, bf16, fp16 or off (CPU is always off)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads (1 on a loaded shared CPU, where OpenMP barriers stall)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-render the markdown of a JSON report")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks_av/results/efficiency_<device>.json)")
    args = ap.parse_args(argv)
    for name in ("batch_size", "threads", "count_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps", "warmup", "phase_steps", "lean_steps"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parse(argv)
    if args.render:
        path = Path(args.render)
        report = json.loads(path.read_text(encoding="utf-8"))
        md = to_markdown(report, report.get("command", ""))
        path.with_suffix(".md").write_text(md, encoding="utf-8")
        print(md)
        return report
    torch.set_num_threads(args.threads)
    cli = list(argv if argv is not None else sys.argv[1:])
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks_av/bench_efficiency.py", *cli])
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results" / f"efficiency_{torch.device(args.device).type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rep: dict) -> None:  # after each model too, so a long run keeps what it measured
        rep["command"] = command
        out.write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(to_markdown(rep, command), encoding="utf-8")

    try:
        report = run_benchmark(
            [m.strip() for m in args.models.split(",") if m.strip()], batch_size=args.batch_size,
            mem_size=args.mem_size, warmup=args.warmup, count_steps=args.count_steps, phase_steps=args.phase_steps,
            steps=args.steps, attention=args.attention, timed_attention=args.timed_attention,
            lean=[m.strip() for m in args.lean.split(",") if m.strip()], lean_steps=args.lean_steps,
            device=args.device, amp=None if args.amp == "off" else args.amp, seed=args.seed,
            strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
            log=lambda m: print(m, file=sys.stderr, flush=True), on_model_done=write,
        )
    except ValueError as e:
        print(f"bench_efficiency: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(to_markdown(report, command))
    write(report)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
