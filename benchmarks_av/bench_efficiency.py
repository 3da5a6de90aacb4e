"""Efficiency of Finetune, ER, DER++, STELLA and STELLA+ side by side, in one process (SPEC §8).

For every model preset and attention mode, the five strategies train on the same synthetic
minibatches with the same batch size (one shared backbone and optimizer, see below), and are
measured **in steady state with a full replay memory** (each replay method replays a memory batch
the size of the current batch). What is reported per (model, mode, strategy):

* **FLOPs per training step** — ``torch.utils.flop_counter.FlopCounterMode`` over one whole
  iteration (plugin work, forward, backward, optimizer step). It counts matmul, convolution and
  attention kernels only (as ``FlopCounterMode`` does); elementwise ops, norms and softmax are
  not counted. PyTorch has no formula for the CPU flash-attention kernel that
  ``scaled_dot_product_attention`` dispatches to on CPU, so this script registers the standard
  SDPA formulas for it (otherwise fused attention would count 0 FLOPs on CPU).
* **Activation bytes** saved for backward per step — every tensor autograd saves while the
  iteration runs (``torch.autograd.graph.saved_tensors_hooks``). Counting rule: bytes of the
  **unique underlying storages** (keyed by the storage object itself; a storage is counted
  once at its full size however many views of it are saved, e.g. q, k and v of one fused qkv
  projection count as the one qkv buffer), **excluding** parameters and buffers of the backbone
  and of STELLA's AVM (weights are not activations). Every counted storage is pinned by a weak
  reference for the duration of the counted step, so a storage freed and a new one allocated in
  its place cannot be confused. Inputs saved by the first layers (the patch tensors) are
  included. For STELLA, the bytes saved inside its ``before_forward`` (the AVM's training
  forward) are also reported (``activation_bytes_before_forward``).
* **Throughput** — current-stream samples per second (``batch_size / step time``; the memory
  batch a replay method adds is not counted as throughput) over timed steps after warm-up, the
  five strategies interleaved round-robin (the starting strategy rotates every round). The step
  time is measured from ``before_training_iteration`` to ``after_training_iteration`` (plugin
  work, forward, backward, optimizer step, memory insertion); data loading is outside it.
  Reported from the median timed step. On CPU the step's **process CPU time** is reported beside
  the wall clock (``samples_per_cpu_s``): with one intra-op thread it is the compute the step
  did, immune to time-slicing by other processes on a shared machine, so the CPU targets use it;
  the wall-clock figures stay in the report.
* **Buffer bytes per stored sample** (``storage.bytes_per_sample()``; 0 for Finetune) and its
  ratio to the fp32 size of a raw clip (``4·(T·F + n·3·H·W)`` bytes).
* **Peak CUDA memory** (``torch.cuda.max_memory_allocated``, reset at the start of each timed
  step; also minus what was allocated at the step start) when the device is CUDA.
* **STELLA's phases** (STELLA and STELLA+): wall-clock timers (CUDA events on GPU) around the
  no-grad **scoring** pass over the full clip (backbone modality + shared blocks, the deranged
  re-fusion for the AVM's negatives, and both AVM forwards) and around the **selection math**
  (every ``avalanche_av.training.selection`` call: importance, candidates, pooled queries,
  correlation, exclusion, video/audio selection, memory re-selection), as shares of the STELLA
  step (wall clock; on CPU also CPU time). The rest of ``before_forward`` (patchify, memory
  draw, gathers) is reported as ``other``.
  The wrappers are installed by this script on the plugin / model instances (no package code is
  edited); they also split FLOPs in the counted step.

Attention modes: ``fused`` is the default (timm ``Attention.fused_attn`` and the AVM's
``F.scaled_dot_product_attention``); ``explicit`` sets ``fused_attn = False`` on every timm
``Attention`` of the backbone and swaps the ``F`` seen by ``avalanche_av.models.avm`` for a proxy
whose ``scaled_dot_product_attention`` is the explicit ``softmax(q·kᵀ·scale)·v`` (the paper's
kernel, which saves the attention probabilities for backward).

All strategies share **one** backbone instance and **one** Adam optimizer (package defaults);
each has its own plugins and memory. What is measured does not depend on the weights' values,
the update costs the same for every strategy (Adam skips parameters without a gradient, e.g. the
other STELLA's AVM), and a base backbone + Adam state per strategy would not fit a small
machine. The memory size defaults to the batch size: one warm-up iteration fills it, and every
measured iteration of a replay method replays a memory batch as large as the current batch
(checked: ``processed_per_step`` and ``memory_batch`` in the JSON).

Schedules. Default: per attention mode, warm-up rounds (the first mode at least enough to fill
the memory), ``--count-steps`` counted rounds, ``--steps`` timed rounds. ``--lean MODELS`` (for
the base config on CPU, where one step takes about a minute): warm-up only fills the memory; the
fused counted round is followed by ``--lean-steps`` timed rounds; explicit attention is counted
**forward-only** and not timed (activation bytes are all saved in the forward, so the backward
and update are skipped and saved tensors are not even retained; explicit mode then reports
forward FLOPs only).

On CPU, throughput of the base config is indicative only (a small shared CPU, one or two timed
steps per strategy); FLOPs and activation bytes are deterministic and device independent (up to
AMP dtypes on CUDA).

Run from the repository root, e.g.::

    python benchmarks_av/bench_efficiency.py --models tiny,base --batch-size 4 --steps 15 \\
        --warmup 2 --lean base --lean-steps 2 --threads 1 --device cpu --attention both \\
        --out benchmarks_av/results/efficiency_cpu.json

It prints a markdown report and writes the JSON to ``--out`` and the markdown next to it
(same stem, ``.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.training.plugins import SupervisedPlugin
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script

import avalanche_av.models.avm as avm_module  # noqa: E402
import avalanche_av.training.plugins.stella as stella_module  # noqa: E402
from avalanche_av.models import AVMAEConfig, create_model  # noqa: E402
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins  # noqa: E402
from avalanche_av.training import selection as selection_module  # noqa: E402
from avalanche_av.training.plugins import StellaPlugin  # noqa: E402

__all__ = [
    "STRATEGIES",
    "ATTENTION_MODES",
    "TARGETS",
    "raw_clip_fp32_bytes",
    "cpu_sdpa_flop_mapping",
    "explicit_sdpa",
    "attention_mode",
    "SavedTensorCounter",
    "StepMeter",
    "release_host_memory",
    "run_benchmark",
    "evaluate_targets",
    "to_markdown",
    "main",
]

STRATEGIES = ("finetune", "er", "der++", "stella", "stella+")
ATTENTION_MODES = ("fused", "explicit")
REFERENCE = "der++"

#: Targets of the issue: (key, description, comparison, threshold).
TARGETS = (
    ("act_fused", "activation bytes, fused attention: STELLA / DER++", "<=", 0.70),
    ("act_explicit", "activation bytes, explicit attention: STELLA / DER++", "<=", 0.60),
    ("throughput_base", "throughput on base (fused): STELLA / DER++", ">=", 0.97),
    ("selection_share", "selection math / STELLA step", "<=", 0.10),
    ("buffer_stella", "STELLA buffer / fp32 raw clip", "<=", 0.30),
    ("buffer_stella_plus", "STELLA+ buffer / STELLA buffer", "<=", 0.55),
)


# ----------------------------------------------------------------------------- pure helpers
def raw_clip_fp32_bytes(config: AVMAEConfig) -> int:
    """fp32 bytes of one raw clip: fbank ``(T, F)`` + frames ``(n, 3, H, W)``."""
    c = config
    return 4 * (c.audio_length * c.num_mel_bins + c.n_frames * 3 * c.image_size**2)


def _cpu_sdpa_fwd_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_bwd_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def cpu_sdpa_flop_mapping() -> dict:
    """``FlopCounterMode`` custom mapping for the CPU flash-attention kernels (absent upstream).

    Same formulas as PyTorch's CUDA SDPA entries: ``4·B·H·Nq·Nk·d`` forward (the two matmuls,
    ``d_v = d``) and the matching backward count.
    """
    aten = torch.ops.aten
    mapping = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_fwd_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_bwd_flops),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = fn
    return mapping


def explicit_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(q·kᵀ·scale)·v`` with materialised probabilities; ``(B, H, Nq, d)`` x3 -> ``(B, H, Nq, d)``.

    Only the arguments the AVM uses are supported (no mask, causal, dropout or GQA).
    """
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ValueError("explicit_sdpa supports no attn_mask, is_causal, dropout_p or enable_gqa")
    s = query.shape[-1] ** -0.5 if scale is None else scale
    attn = (query * s) @ key.transpose(-2, -1)
    return attn.softmax(dim=-1) @ value


class _FunctionalWithExplicitSDPA:
    """Stands in for ``torch.nn.functional`` inside ``avalanche_av.models.avm`` (explicit mode)."""

    scaled_dot_product_attention = staticmethod(explicit_sdpa)

    def __getattr__(self, name: str):
        return getattr(F, name)


@contextlib.contextmanager
def attention_mode(model: torch.nn.Module, mode: str):
    """Switch the backbone's timm ``Attention`` modules and the AVM's attention to ``mode``.

    ``'fused'`` leaves everything as built; ``'explicit'`` sets ``fused_attn = False`` on every
    timm ``Attention`` in ``model`` and patches the AVM module's ``F`` (restored on exit).
    """
    from timm.models.vision_transformer import Attention

    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    before = [m.fused_attn for m in attns]
    old_f = avm_module.F
    try:
        if mode == "explicit":
            for m in attns:
                m.fused_attn = False
            avm_module.F = _FunctionalWithExplicitSDPA()
        yield
    finally:
        for m, b in zip(attns, before):
            m.fused_attn = b
        avm_module.F = old_f


def _storage_key(t: torch.Tensor) -> int:
    # The C++ StorageImpl pointer: one per storage, shared by all its views.
    return t.untyped_storage()._cdata


class _NotRetained:
    """What a non-retaining :class:`SavedTensorCounter` stores instead of a saved tensor."""

    __slots__ = ()


class SavedTensorCounter:
    """Context manager: bytes of unique storages autograd saves for backward (see module doc).

    Each new storage is remembered through a weak reference: its data is not kept alive, but its
    ``StorageImpl`` (the key) cannot be freed and reused by another storage while counting, so
    nothing is double counted or missed.

    Args:
        exclude: tensors (parameters, buffers) whose storages are not counted.
        retain: ``True`` (normal step) hands every saved tensor back to autograd unchanged.
            ``False`` (forward-only measurement) stores a placeholder instead, so saved
            activations are freed as soon as the forward drops them; the graph can then not be
            backpropagated (unpacking raises).
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = (), retain: bool = True):
        self.excluded = {_storage_key(t) for t in exclude}
        self.retain = retain
        self.storages: dict = {}  # key -> (nbytes, weak reference)
        self.n_saved = 0
        self.total_bytes = 0
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor):
        self.n_saved += 1
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without storage
            return t if self.retain else _NotRetained()
        key = st._cdata
        if st.nbytes() and key not in self.excluded and key not in self.storages:
            self.storages[key] = (st.nbytes(), StorageWeakRef(st))
            self.total_bytes += st.nbytes()
        return t if self.retain else _NotRetained()

    @staticmethod
    def _unpack(t):
        if isinstance(t, _NotRetained):
            raise RuntimeError(
                "this graph was recorded by a forward-only SavedTensorCounter and cannot be backpropagated"
            )
        return t

    def __enter__(self) -> "SavedTensorCounter":
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    def release(self) -> None:
        """Drop the weak references (the byte counts stay)."""
        self.storages = {key: (n, None) for key, (n, _) in self.storages.items()}


def release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``) between steps.

    Activations of a base step are tens of MB each and come from the heap; without trimming the
    process keeps the high-water mark of every strategy's step, which a shared machine may not
    have. A no-op where glibc is absent. Called outside the measured windows only.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Clock:
    """Time marks: ``(perf_counter, process_time)`` on CPU, a CUDA event (no sync) on GPU.

    On CPU the process CPU time is kept beside the wall clock: with one intra-op thread it is
    the time the step actually computed, which time-slicing by other processes on a shared
    machine does not inflate.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter(), time.process_time()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, a, b) -> tuple[float, Optional[float]]:
        """``(wall, cpu)`` seconds between two marks (after :meth:`sync` on CUDA; cpu is ``None`` there)."""
        if self.cuda:
            return a.elapsed_time(b) / 1e3, None
        return b[0] - a[0], b[1] - a[1]


class StepMeter(SupervisedPlugin):
    """Measures whole training iterations; must be the **last** user plugin of the strategy.

    ``mode``: ``'idle'`` (nothing), ``'count'`` (FLOPs + saved-tensor bytes) or ``'time'``
    (step wall time, CPU time on CPU, peak CUDA memory). In ``'count'`` mode, ``forward_only``
    stops measuring after the forward: activation bytes and forward FLOPs are
    recorded in ``before_backward`` and the loss is swapped for a detached leaf, so the backward
    and the update are skipped (activations are all saved by then). One record per measured
    iteration is appended to ``records``. ``exclude()`` returns the parameters/buffers that are
    not activations.
    """

    def __init__(self, device: torch.device, exclude: Callable[[], Sequence[torch.Tensor]]):
        super().__init__()
        self.device = device
        self.clock = _Clock(device)
        self.exclude = exclude
        self.mode = "idle"
        self.forward_only = False
        self.records: list = []
        self.flops: Optional[FlopCounterMode] = None
        self.saved: Optional[SavedTensorCounter] = None
        self._rec: dict = {}
        self._t0 = None

    # live counters, read by the STELLA phase wrappers
    def live_flops(self) -> int:
        return int(self.flops.get_total_flops()) if self.flops is not None else 0

    def live_saved(self) -> int:
        return self.saved.total_bytes if self.saved is not None else 0

    def _timing(self) -> bool:
        return self.mode == "time"

    def before_training_iteration(self, strategy, **kwargs):
        if self.mode == "idle":
            return
        self._rec = {"phases": [], "mode": self.mode, "forward_only": self.mode == "count" and self.forward_only}
        if self._timing():
            self.clock.sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
                self._rec["cuda_alloc_start"] = int(torch.cuda.memory_allocated(self.device))
            self._t0 = self.clock.mark()
        if self.mode == "count":
            self.saved = SavedTensorCounter(self.exclude(), retain=not self.forward_only)
            self.saved.__enter__()
            self.flops = FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flop_mapping())
            self.flops.__enter__()

    def _stop_flops(self, key: str) -> None:
        self.flops.__exit__(None, None, None)
        self._rec[key] = int(self.flops.get_total_flops())
        self.flops = None

    def before_backward(self, strategy, **kwargs):
        # Runs after every other plugin's before_backward (DER++/STELLA penalties): all saves done.
        if self.mode != "count":
            return
        self.saved.__exit__(None, None, None)
        self._rec["saved_bytes"] = self.saved.total_bytes
        self._rec["saved_storages"] = len(self.saved.storages)
        self._rec["saved_tensors"] = self.saved.n_saved
        self.saved.release()
        self.saved = None
        if self.forward_only:
            self._stop_flops("forward_flops")
            strategy.loss = strategy.loss.detach().requires_grad_()  # backward becomes a no-op

    def after_training_iteration(self, strategy, **kwargs):
        if self.mode == "idle":
            return
        rec = self._rec
        out = strategy.mb_output
        rec["processed"] = int(out.per_sample_loss.shape[0])
        rec["audio_tokens"] = int(out.audio_idx.shape[1])
        rec["video_tokens"] = int(out.video_idx.shape[1])
        if self.flops is not None:
            self._stop_flops("flops")
        if self._timing():
            t1 = self.clock.mark()
            self.clock.sync()
            rec["step_s"], rec["step_cpu_s"] = self.clock.seconds(self._t0, t1)
            rec["phases"] = [(cat, *self.clock.seconds(a, b), fl, sv) for cat, a, b, fl, sv in rec["phases"]]
            if self.device.type == "cuda":
                peak = int(torch.cuda.max_memory_allocated(self.device))
                rec["cuda_peak"] = peak
                rec["cuda_peak_step"] = peak - rec["cuda_alloc_start"]
        else:
            rec["phases"] = [(cat, None, None, fl, sv) for cat, _, _, fl, sv in rec["phases"]]
        if rec["forward_only"]:
            # Drop the never-backpropagated graph now, not at this strategy's next iteration.
            strategy.mb_output = dataclasses.replace(
                out, **{f.name: getattr(out, f.name).detach() for f in dataclasses.fields(out)
                        if isinstance(getattr(out, f.name), torch.Tensor)}
            )
        self.records.append(rec)
        self._rec = {}

    # used by the STELLA phase wrappers
    def phase(self, category: str, fn: Callable, *args, **kwargs):
        if self.mode == "idle" or "phases" not in self._rec:
            return fn(*args, **kwargs)
        f0, s0, a = self.live_flops(), self.live_saved(), self.clock.mark()
        out = fn(*args, **kwargs)
        b, f1, s1 = self.clock.mark(), self.live_flops(), self.live_saved()
        self._rec["phases"].append((category, a, b, f1 - f0, s1 - s0))
        return out


class _TimedSelection:
    """Proxy for ``avalanche_av.training.selection`` as STELLA's plugin sees it: every call is
    timed as ``'selection'`` (nested calls inside the module are not re-timed)."""

    def __init__(self, meter_of: Callable[[], Optional[StepMeter]]):
        self._meter_of = meter_of

    def __getattr__(self, name: str):
        fn = getattr(selection_module, name)
        if not callable(fn):
            return fn

        def timed(*args, **kwargs):
            meter = self._meter_of()
            if meter is None:
                return fn(*args, **kwargs)
            return meter.phase("selection", fn, *args, **kwargs)

        return timed


class _StellaPhases:
    """Installs the phase wrappers on a STELLA plugin and the shared model (instance level).

    Scoring = ``model.encode_modalities`` / ``model.fuse`` / AVM forward calls made **inside**
    ``StellaPlugin.before_forward``; the template's own forward (outside it) is not wrapped in.
    """

    active: Optional[StepMeter] = None  # the meter of the STELLA plugin currently in before_forward

    @classmethod
    def install_selection_proxy(cls) -> Callable[[], None]:
        old = stella_module.sel
        stella_module.sel = _TimedSelection(lambda: cls.active)

        def restore() -> None:
            stella_module.sel = old

        return restore

    @classmethod
    def wrap_model(cls, model: torch.nn.Module) -> None:
        if getattr(model, "_bench_phase_wrapped", False):
            return
        model._bench_phase_wrapped = True
        for name in ("encode_modalities", "fuse"):
            bound = getattr(model, name)

            def wrapped(*args, _bound=bound, **kwargs):
                meter = cls.active
                if meter is None:
                    return _bound(*args, **kwargs)
                return meter.phase("scoring", _bound, *args, **kwargs)

            setattr(model, name, wrapped)

    @classmethod
    def wrap_plugin(cls, plugin: StellaPlugin, meter: StepMeter) -> None:
        bound_bf = plugin.before_forward

        def before_forward(strategy, **kwargs):
            if plugin.avm is not None and not getattr(plugin.avm, "_bench_wrapped", False):
                avm_bound = plugin.avm.forward

                def avm_forward(*args, **kw):
                    m = cls.active
                    return avm_bound(*args, **kw) if m is None else m.phase("scoring", avm_bound, *args, **kw)

                plugin.avm.forward = avm_forward
                plugin.avm._bench_wrapped = True
            cls.active = meter
            try:
                return meter.phase("before_forward", bound_bf, strategy, **kwargs)
            finally:
                cls.active = None

        plugin.before_forward = before_forward


# ----------------------------------------------------------------------------- data
def build_experiences(config: AVMAEConfig, batch_size: int, n_pool: int, seed: int) -> list:
    """``n_pool`` training experiences of exactly ``batch_size`` synthetic clips in the model's shapes."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    from avalanche_av.benchmarks import sounding_objects

    grid = config.image_size // config.patch_size
    classes = 4
    n = batch_size * n_pool
    bm = sounding_objects(
        seed=seed,
        n_tasks=1,
        classes_per_task=classes,
        train_clips_per_class=math.ceil(n / classes),
        eval_clips_per_class=1,  # 0 breaks with_task_labels on the empty eval set
        n_frames=config.n_frames,
        image_size=config.image_size,
        patch_size=config.patch_size,
        object_cells=1 if grid < 8 else 2,
        n_objects=3 if grid >= 4 else 1,
        target_length=config.audio_length,
        num_mel_bins=config.num_mel_bins,
    )
    ds = bm.train_stream[0].dataset
    parts = [ds.subset(list(range(i * batch_size, (i + 1) * batch_size))) for i in range(n_pool)]
    return list(with_task_labels(benchmark_from_datasets(train=parts)).train_stream)


# ----------------------------------------------------------------------------- the run
def _memory_plugin(strategy) -> Any:
    for p in strategy.plugins:
        if hasattr(p, "storage") and hasattr(p.storage, "bytes_per_sample"):
            return p
    return None


def _run_rounds(strategies: dict, names: Sequence[str], experiences: list, n: int, cursor: list,
                rotate: bool) -> None:
    """``n`` round-robin rounds, one training iteration per strategy per round; with ``rotate``
    the starting strategy moves by one every round."""
    names = list(names)
    for r in range(n):
        k = (r % len(names)) if rotate else 0
        exp = experiences[cursor[0] % len(experiences)]
        cursor[0] += 1
        for name in names[k:] + names[:k]:
            strategies[name].train(exp)
            release_host_memory()


_PHASES = ("scoring", "selection", "before_forward")


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _summarise(records: list, batch_size: int) -> dict:
    """Per-strategy figures from the meter's records (see the module doc for the rules)."""
    counts = [r for r in records if r["mode"] == "count"]
    timed = [r for r in records if "step_s" in r]
    out: dict = {}
    if counts:
        last = counts[-1]
        saved = [r["saved_bytes"] for r in counts]
        out.update(
            activation_bytes=int(statistics.mean(saved)),
            activation_bytes_all=saved,
            saved_storages=last["saved_storages"],
            saved_tensors=last["saved_tensors"],
            processed_per_step=last["processed"],
            tokens_per_sample={"audio": last["audio_tokens"], "video": last["video_tokens"]},
        )
        key = "forward_flops" if last["forward_only"] else "flops"
        flops = [r[key] for r in counts]
        out[key + ("" if last["forward_only"] else "_per_step")] = int(statistics.mean(flops))
        out[key + "_all"] = flops
        out["forward_only"] = bool(last["forward_only"])
        ph = [p for r in counts for p in r["phases"]]
        if ph:
            fl = {c: sum(f for cat, _, _, f, _ in ph if cat == c) / len(counts) for c in _PHASES}
            sv = sum(x for cat, _, _, _, x in ph if cat == "before_forward") / len(counts)
            out["activation_bytes_before_forward"] = int(sv)
            total = statistics.mean(flops)
            out["flops_split"] = {
                "of": key,
                "scoring": int(fl["scoring"]),
                "selection": int(fl["selection"]),
                "before_forward": int(fl["before_forward"]),
                "scoring_share": fl["scoring"] / total if total else 0.0,
                "before_forward_share": fl["before_forward"] / total if total else 0.0,
            }
    if timed:
        steps = [r["step_s"] for r in timed]
        med = _median(steps)
        out.update(
            timed_steps=len(steps),
            step_s_all=steps,
            step_s_median=med,
            samples_per_s=batch_size / med,
            processed_per_s=timed[-1]["processed"] / med,
        )
        if timed[-1].get("step_cpu_s") is not None:
            cpu = [r["step_cpu_s"] for r in timed]
            out.update(step_cpu_s_all=cpu, step_cpu_s_median=_median(cpu), samples_per_cpu_s=batch_size / _median(cpu))
        if "cuda_peak" in timed[-1]:
            out["cuda_peak_bytes"] = max(r["cuda_peak"] for r in timed)
            out["cuda_peak_step_bytes"] = max(r["cuda_peak_step"] for r in timed)
        per_step = []
        for r in timed:
            if not r["phases"]:
                continue
            row = {}
            for clock, idx, step in (("", 1, r["step_s"]), ("cpu_", 2, r.get("step_cpu_s"))):
                if step is None:
                    continue
                t = {c: sum(p[idx] for p in r["phases"] if p[0] == c) for c in _PHASES}
                other = t["before_forward"] - t["scoring"] - t["selection"]
                row.update({
                    f"{clock}step_s": step, f"{clock}scoring_s": t["scoring"], f"{clock}selection_s": t["selection"],
                    f"{clock}other_before_forward_s": other, f"{clock}rest_of_step_s": step - t["before_forward"],
                    f"{clock}scoring_share": t["scoring"] / step, f"{clock}selection_share": t["selection"] / step,
                    f"{clock}other_before_forward_share": other / step,
                })
            per_step.append(row)
        if per_step:
            # Medians over timed steps, each field separately (robust to a step disturbed by
            # other processes); shares are medians of per-step shares.
            out["phases"] = {k: _median([p[k] for p in per_step]) for k in per_step[0]}
            out["phases"]["steps"] = len(per_step)
    return out


def run_model(
    model_name: str,
    *,
    batch_size: int,
    mem_size: int,
    warmup: int,
    count_steps: int,
    steps: int,
    modes: Sequence[str],
    timed_modes: Sequence[str],
    lean: bool,
    lean_steps: int = 1,
    device: torch.device = torch.device("cpu"),
    amp: Optional[str],
    seed: int,
    strategies: Sequence[str] = STRATEGIES,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure every strategy on one model preset; returns the per-model JSON block.

    Schedule per attention mode: warm-up rounds (the first mode runs at least enough to fill the
    memory), ``count_steps`` counted rounds, then ``steps`` timed rounds (modes in
    ``timed_modes``). ``lean`` (for base on CPU): warm-up only fills the memory, the counted round
    is followed by ``lean_steps`` timed rounds, and explicit is counted forward-only (not timed).
    """
    torch.manual_seed(seed)
    model = create_model(model_name).to(device)
    cfg = model.config
    t0 = time.perf_counter()
    experiences = build_experiences(cfg, batch_size, n_pool=4, seed=seed)
    log(f"[{model_name}] data ready in {time.perf_counter() - t0:.1f}s")

    strategies_obj: dict = {}
    meters: dict = {}

    def exclude() -> list:
        tensors = list(model.parameters()) + list(model.buffers())
        for s in strategies_obj.values():
            for p in s.plugins:
                if isinstance(p, StellaPlugin) and p.avm is not None:
                    tensors += list(p.avm.parameters()) + list(p.avm.buffers())
        return tensors

    from avalanche_av.evaluation import av_evaluator

    # One backbone and one Adam for all strategies (see the module doc): the update costs the
    # same for every strategy, and parameters without a gradient (the other STELLA's AVM) are
    # skipped by Adam.
    optimizer = default_optimizer(model)
    _StellaPhases.wrap_model(model)
    for name in strategies:
        meter = StepMeter(device, exclude)
        plugins = make_plugins(name, mem_size=mem_size, batch_size=batch_size)
        for p in plugins:
            if isinstance(p, StellaPlugin):
                _StellaPhases.wrap_plugin(p, meter)
        strategies_obj[name] = AVPretraining(
            model=model,
            optimizer=optimizer,
            train_mb_size=batch_size,
            train_epochs=1,
            device=device,
            plugins=[*plugins, meter],  # the meter last: its window encloses the other plugins
            evaluator=av_evaluator(loggers=[]),
            amp=amp,
        )
        meters[name] = meter

    fill = math.ceil(mem_size / batch_size)
    cursor = [0]
    block: dict = {
        "config": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
        "patches": {"audio": cfg.num_audio_patches, "video": cfg.num_video_patches},
        "raw_clip_fp32_bytes": raw_clip_fp32_bytes(cfg),
        "lean": lean,
        "modes": {},
    }

    def set_meters(mode: str, forward_only: bool = False) -> None:
        for m in meters.values():
            m.mode, m.forward_only = mode, forward_only

    for i, mode in enumerate(modes):
        for m in meters.values():
            m.records = []
        with attention_mode(model, mode):
            n_warm = (fill if lean else max(warmup, fill)) if i == 0 else (0 if lean else warmup)
            t0 = time.perf_counter()
            set_meters("idle")
            _run_rounds(strategies_obj, strategies, experiences, n_warm, cursor, rotate=False)
            log(f"[{model_name}/{mode}] {n_warm} warm-up round(s) in {time.perf_counter() - t0:.1f}s")
            t0 = time.perf_counter()
            forward_only = lean and mode == "explicit"
            set_meters("count", forward_only=forward_only)
            _run_rounds(strategies_obj, strategies, experiences, count_steps, cursor, rotate=False)
            log(f"[{model_name}/{mode}] {count_steps} counted round(s){' (forward only)' if forward_only else ''} "
                f"in {time.perf_counter() - t0:.1f}s")
            n_timed = (lean_steps if lean else steps) if mode in timed_modes and not forward_only else 0
            if n_timed > 0:
                t0 = time.perf_counter()
                set_meters("time")
                _run_rounds(strategies_obj, strategies, experiences, n_timed, cursor, rotate=True)
                log(f"[{model_name}/{mode}] {n_timed} timed round(s) in {time.perf_counter() - t0:.1f}s")
            set_meters("idle")
        res = {name: _summarise(meters[name].records, batch_size) for name in strategies}
        for name in strategies:
            mem = _memory_plugin(strategies_obj[name])
            res[name]["memory_batch"] = res[name].get("processed_per_step", batch_size) - batch_size
            res[name]["memory_size"] = 0 if mem is None else len(mem.storage)
        block["modes"][mode] = {"strategies": res, "ratios_vs_derpp": _ratios(res)}

    buffers = {}
    for name in strategies:
        mem = _memory_plugin(strategies_obj[name])
        nbytes = 0 if mem is None else int(mem.storage.bytes_per_sample())
        buffers[name] = {"bytes_per_sample": nbytes, "ratio_to_fp32_raw_clip": nbytes / block["raw_clip_fp32_bytes"]}
    if "stella" in buffers and "stella+" in buffers and buffers["stella"]["bytes_per_sample"]:
        plus, full = buffers["stella+"]["bytes_per_sample"], buffers["stella"]["bytes_per_sample"]
        buffers["stella+"]["ratio_to_stella"] = plus / full
    if REFERENCE in buffers and buffers[REFERENCE]["bytes_per_sample"]:
        for name in buffers:
            buffers[name]["ratio_to_derpp"] = buffers[name]["bytes_per_sample"] / buffers[REFERENCE]["bytes_per_sample"]
    block["buffer"] = buffers
    return block


def _ratios(res: dict) -> dict:
    ref = res.get(REFERENCE)
    if not ref:
        return {}
    out = {}
    for name, r in res.items():
        q = {}
        for key in ("flops_per_step", "forward_flops", "activation_bytes", "samples_per_s", "samples_per_cpu_s",
                    "cuda_peak_step_bytes"):
            if key in r and ref.get(key):
                q[key] = r[key] / ref[key]
        out[name] = q
    return out


def evaluate_targets(report: dict) -> list:
    """One entry per (target, model) that the report has data for: value, threshold, met."""
    out = []
    for model_name, block in report["models"].items():
        modes = block["modes"]

        def add(key, value, note=""):
            _, desc, cmp, thr = next(t for t in TARGETS if t[0] == key)
            if value is None:
                return
            met = value <= thr if cmp == "<=" else value >= thr
            out.append({"target": key, "description": desc, "model": model_name, "value": value,
                        "comparison": cmp, "threshold": thr, "met": bool(met), "note": note})

        for mode, key in (("fused", "act_fused"), ("explicit", "act_explicit")):
            r = modes.get(mode, {}).get("ratios_vs_derpp", {}).get("stella", {})
            add(key, r.get("activation_bytes"))
        q = modes.get("fused", {}).get("ratios_vs_derpp", {}).get("stella", {})
        clock = "CPU time" if "samples_per_cpu_s" in q else "wall clock"
        scope = "" if model_name == "base" else "; the issue states this target for base only"
        add("throughput_base", q.get("samples_per_cpu_s", q.get("samples_per_s")), clock + scope)
        for mode in ("fused", "explicit"):
            ph = modes.get(mode, {}).get("strategies", {}).get("stella", {}).get("phases")
            if ph:
                cpu = "cpu_selection_share" in ph
                add("selection_share", ph["cpu_selection_share" if cpu else "selection_share"],
                    f"{mode} attention, {'CPU time' if cpu else 'wall clock'}")
        buf = block.get("buffer", {})
        if "stella" in buf:
            add("buffer_stella", buf["stella"]["ratio_to_fp32_raw_clip"])
        if "stella+" in buf and "ratio_to_stella" in buf["stella+"]:
            add("buffer_stella_plus", buf["stella+"]["ratio_to_stella"])
    return out


def run_benchmark(
    models: Sequence[str],
    *,
    batch_size: int = 8,
    mem_size: Optional[int] = None,
    warmup: int = 2,
    count_steps: int = 1,
    steps: int = 3,
    attention: str = "both",
    timed_attention: Optional[str] = None,
    lean: Sequence[str] = (),
    lean_steps: int = 1,
    device: str = "cpu",
    amp: Optional[str] = "auto",
    seed: int = 0,
    strategies: Sequence[str] = STRATEGIES,
    log: Callable[[str], None] = print,
    on_model_done: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Run the whole harness and return the report dict (what ``--out`` holds).

    ``lean``: model names measured with the lean schedule (see :func:`run_model`).
    ``on_model_done(report)`` is called after each model with the partial report (targets
    evaluated so far), e.g. to save it.
    """
    modes = list(ATTENTION_MODES) if attention == "both" else [attention]
    if timed_attention is None:
        timed = modes
    else:
        timed = list(ATTENTION_MODES) if timed_attention == "both" else [timed_attention]
    for m in modes + timed:
        if m not in ATTENTION_MODES:
            raise ValueError(f"attention must be 'fused', 'explicit' or 'both', got {m!r}")
    bad_lean = [m for m in lean if m not in models]
    if bad_lean:
        raise ValueError(f"--lean names models that are not in --models: {bad_lean}")
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
    restore = _StellaPhases.install_selection_proxy()
    report: dict = {
        "settings": {
            "models": list(models), "batch_size": batch_size, "mem_size": mem_size, "warmup": warmup,
            "count_steps": count_steps, "steps": steps, "attention": modes, "timed_attention": timed,
            "lean": [m for m in models if m in lean], "lean_steps": lean_steps,
            "device": str(dev), "amp": amp, "seed": seed, "threads": torch.get_num_threads(),
            "strategies": list(strategies),
        },
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(),
            "cuda_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        },
        "models": {},
    }
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in models:
                report["models"][name] = run_model(
                    name, batch_size=batch_size, mem_size=mem_size, warmup=warmup, count_steps=count_steps,
                    steps=steps, modes=modes, timed_modes=timed, lean=name in lean, lean_steps=lean_steps,
                    device=dev, amp=amp, seed=seed, strategies=strategies, log=log,
                )
                release_host_memory()
                report["wall_s"] = time.perf_counter() - t0
                if on_model_done is not None:
                    report["targets"] = evaluate_targets(report)
                    on_model_done(report)
        report["wall_s"] = time.perf_counter() - t0
    finally:
        restore()
    report["targets"] = evaluate_targets(report)
    return report


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
    s = report["settings"]
    lines = ["# Efficiency: Finetune, ER, DER++, STELLA, STELLA+ (one process, side by side)", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    env = report["environment"]
    lines += [
        f"Device `{s['device']}`{' (' + env['cuda_device'] + ')' if env.get('cuda_device') else ''}, "
        f"torch {env['torch']}, {s['threads']} thread(s); batch {s['batch_size']} current + a memory batch "
        f"of the same size for replay methods (memory {s['mem_size']} clips, full when measured); "
        f"{s['count_steps']} counted step(s), {s['steps']} timed step(s) after warm-up, strategies "
        f"interleaved round-robin; AMP `{s['amp']}` (CPU: off). Wall time {report.get('wall_s', 0):.0f} s.",
        "",
        "FLOPs: matmul/conv/attention kernels per training step (forward + backward + update). "
        "Activations: unique storages saved for backward, parameters excluded. Throughput: current "
        "samples / median step time (wall clock; on CPU also per second of process CPU time, which other "
        "processes' load does not inflate). Ratios are vs DER++ in the same mode and run.",
    ]
    if s["device"] == "cpu":
        lines += ["", "CPU throughput is indicative only (a small, shared CPU; few timed steps), especially on "
                  "the lean-scheduled models."]
    if s.get("lean"):
        lines += ["", f"Lean schedule for {', '.join('`' + m + '`' for m in s['lean'])}: warm-up only fills the "
                  f"memory; {s.get('lean_steps', 1)} timed step(s) per strategy after the counted one (fused); "
                  "explicit attention is counted forward-only (activation bytes; forward FLOPs; not timed)."]
    for model_name, block in report["models"].items():
        c = block["config"]
        lines += [
            "",
            f"## `{model_name}` — audio {c['audio_length']}x{c['num_mel_bins']} "
            f"({block['patches']['audio']} patches), "
            f"video {c['n_frames']}x{c['image_size']}² ({block['patches']['video']} patches), "
            f"{c['modality_depth']}+{c['shared_depth']} blocks, width {c['embed_dim']}, mask ratio {c['mask_ratio']}",
        ]
        buf = block["buffer"]
        for mode, mb in block["modes"].items():
            lines += [
                "",
                f"### {mode} attention",
                "",
                "| strategy | tokens a/v per sample | processed / step | GFLOPs / step | x DER++ | activations MiB "
                "| x DER++ "
                "| step ms wall (CPU) | samples/s wall | x DER++ | samples/CPU-s | x DER++ | peak CUDA MiB (step) "
                "| buffer B / sample | x fp32 clip |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for name, r in mb["strategies"].items():
                q = mb["ratios_vs_derpp"].get(name, {})
                tok = r.get("tokens_per_sample", {})
                lines.append(
                    f"| {name} | {tok.get('audio', '-')}/{tok.get('video', '-')} | {r.get('processed_per_step', '-')} "
                    f"| {_gflops(r)} | {_fmt(q.get('flops_per_step', q.get('forward_flops')))} "
                    f"| {_mib(r.get('activation_bytes'))} | {_fmt(q.get('activation_bytes'))} "
                    f"| {_fmt(r['step_s_median'] * 1e3 if 'step_s_median' in r else None, ',.0f')} "
                    f"({_fmt(r['step_cpu_s_median'] * 1e3 if 'step_cpu_s_median' in r else None, ',.0f')}) "
                    f"| {_fmt(r.get('samples_per_s'), ',.2f')} | {_fmt(q.get('samples_per_s'))} "
                    f"| {_fmt(r.get('samples_per_cpu_s'), ',.2f')} | {_fmt(q.get('samples_per_cpu_s'))} "
                    f"| {_mib(r.get('cuda_peak_bytes'))} ({_mib(r.get('cuda_peak_step_bytes'))}) "
                    f"| {buf[name]['bytes_per_sample']:,} | {_fmt(buf[name]['ratio_to_fp32_raw_clip'], '.3f')} |"
                )
            ph_rows = [(n, r) for n, r in mb["strategies"].items() if "phases" in r or "flops_split" in r]
            if ph_rows:
                lines += [
                    "",
                    "STELLA's step split (scoring = no-grad backbone + AVM over the full clip; selection = "
                    "importance, correlation, exclusion, selection math):",
                    "",
                    "| strategy | clock | step ms | scoring ms (share) | selection ms (share) "
                    "| other before_forward ms (share) | scoring FLOPs share | plugin FLOPs share "
                    "| plugin activations MiB |",
                    "|---|---|---|---|---|---|---|---|---|",
                ]
                for name, r in ph_rows:
                    p, fs = r.get("phases") or {}, r.get("flops_split", {})
                    of = " (of fwd)" if fs.get("of") == "forward_flops" else ""
                    tail = (
                        f"| {_fmt(fs.get('scoring_share'), '.1%')}{of} "
                        f"| {_fmt(fs.get('before_forward_share'), '.1%')}{of} "
                        f"| {_mib(r.get('activation_bytes_before_forward'))} |"
                    )
                    clocks = [(c, label) for c, label in (("", "wall"), ("cpu_", "CPU")) if f"{c}step_s" in p]
                    if not clocks:
                        lines.append(f"| {name} | - | - | - | - | - {tail}")
                    for c, label in clocks:
                        lines.append(
                            f"| {name} | {label} | {p[c + 'step_s'] * 1e3:,.0f} "
                            f"| {p[c + 'scoring_s'] * 1e3:,.1f} ({p[c + 'scoring_share']:.1%}) "
                            f"| {p[c + 'selection_s'] * 1e3:,.1f} ({p[c + 'selection_share']:.1%}) "
                            f"| {p[c + 'other_before_forward_s'] * 1e3:,.1f} "
                            f"({p[c + 'other_before_forward_share']:.1%}) "
                            + tail
                        )
        lines += ["", "Buffer per stored sample: " + ", ".join(
            f"{n} {b['bytes_per_sample']:,} B ({b['ratio_to_fp32_raw_clip']:.3f}x fp32 clip)" for n, b in buf.items()
        ) + f"; fp32 raw clip {block['raw_clip_fp32_bytes']:,} B."]
        if "ratio_to_stella" in buf.get("stella+", {}):
            lines[-1] += f" STELLA+ / STELLA = {buf['stella+']['ratio_to_stella']:.3f}."
    lines += ["", "## Targets", "", "| target | model | measured | threshold | met |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(
            f"| {t['description']}{note} | {t['model']} | {t['value']:.3f} | {t['comparison']} {t['threshold']} "
            f"| {'yes' if t['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI
def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,base", help="comma-separated presets (tiny, base, cav_mae_base)")
    ap.add_argument("--batch-size", type=int, default=8, help="current-batch size (same for every model)")
    ap.add_argument("--mem-size", type=int, default=None,
                    help="memory size in clips (default: the batch size, full after one step)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per strategy and timed mode")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed warm-up steps per strategy and mode (the first mode runs at least enough "
                         "to fill the memory)")
    ap.add_argument("--count-steps", type=int, default=1, help="steps under the FLOP / saved-tensor counters")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--attention", default="both", choices=("fused", "explicit", "both"))
    ap.add_argument("--timed-attention", default=None, choices=("fused", "explicit", "both"),
                    help="modes whose steps are also timed (default: all of --attention)")
    ap.add_argument("--lean", default="",
                    help="comma-separated models run on the lean schedule (e.g. base on CPU): warm-up only fills the "
                         "memory, --lean-steps timed steps after the counted one, explicit counted forward-only")
    ap.add_argument("--lean-steps", type=int, default=1, help="timed steps per strategy for --lean models")
    ap.add_argument("--amp", default="auto", help="template AMP: auto, bf16, fp16 or off (CPU is always off)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads (1 on a loaded shared CPU: OpenMP barriers with 2 threads "
                         "competing for 2 busy cores slowed small ops by an order of magnitude)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only re-render the markdown of an existing JSON report (written next to it)")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks_av/results/efficiency_<device>.json); "
                         "the markdown goes next to it")
    args = ap.parse_args(argv)
    for name in ("batch_size", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps", "warmup", "count_steps", "lean_steps"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0")
    if args.count_steps < 1:
        raise SystemExit("--count-steps must be >= 1 (FLOPs and activations come from those steps)")
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
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *cli])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dev = torch.device(args.device).type
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"efficiency_{dev}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rep: dict) -> None:  # also after each model, so a long run keeps what it measured
        rep["command"] = command
        out.write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(to_markdown(rep, command), encoding="utf-8")

    report = run_benchmark(
        models, batch_size=args.batch_size, mem_size=args.mem_size, warmup=args.warmup,
        count_steps=args.count_steps, steps=args.steps, attention=args.attention,
        timed_attention=args.timed_attention, lean=[m.strip() for m in args.lean.split(",") if m.strip()],
        lean_steps=args.lean_steps,
        device=args.device, amp=None if args.amp == "off" else args.amp,
        seed=args.seed, strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
        log=lambda m: print(m, file=sys.stderr, flush=True), on_model_done=write,
    )
    md = to_markdown(report, command)
    print(md)
    write(report)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
