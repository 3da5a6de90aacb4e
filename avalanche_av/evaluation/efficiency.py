"""Efficiency meters: FLOPs, activations saved for backward, step-phase times, memory bytes.

The paper's efficiency claims (Sec. 5.3, Table 3: memory and throughput against DER++) are
measured with these meters; ``benchmarks_av/bench_efficiency.py`` composes them and
``docs/metrics.md`` ("Efficiency") states the counting rules.

Standalone context managers (any PyTorch code):

* :class:`FlopMeter`: FLOPs of matmul, convolution and attention kernels, through
  ``torch.utils.flop_counter.FlopCounterMode``, plus formulas for the CPU flash-attention kernels
  that ``scaled_dot_product_attention`` dispatches to (PyTorch has none, so fused attention
  would count 0 FLOPs on CPU).
* :class:`SavedActivationMeter`: bytes autograd saves for backward
  (``torch.autograd.graph.saved_tensors_hooks``), unique storages, parameters excluded.
* :class:`PhaseMeter`: aggregates ``torch.profiler.record_function`` ranges by name (calls,
  wall-clock and CPU time, CUDA time, and the change of any live counter such as the two meters
  above over each range). The training code marks its phases with these ranges
  (:data:`TEMPLATE_PHASES`, :data:`MEMORY_PHASES`, :data:`STELLA_PHASES`); no function is
  wrapped or replaced. :func:`profiler_phase_totals` reads the same ranges from a
  ``torch.profiler.profile`` run instead.

Avalanche integration:

* :class:`EfficiencyPlugin`: a ``SupervisedPlugin`` that measures every training iteration from
  ``before_training_iteration`` to ``after_training_iteration`` (plugins' work, forward,
  backward, optimizer step, memory insertion; data loading is outside) and keeps one
  :class:`IterationRecord` per iteration.
* :class:`EfficiencyMetric`: the same measurement as a ``PluginMetric``, emitted to Avalanche's
  loggers.

Helpers: :func:`memory_bytes_per_sample` (plugins expose ``memory_bytes_per_sample()``),
:func:`raw_clip_bytes`, and :func:`set_fused_attention` / :func:`fused_attention`, which flip the
timm-style ``fused_attn`` switches (the backbone's timm ``Attention`` blocks and the AVM) to
measure the explicit attention kernel.

Host syncs (where a step makes the host wait for the device): :class:`HostSyncCounter` and
:class:`HostSyncPlugin`, from :mod:`avalanche_av.evaluation.host_sync`, count them on CPU by call
site (``benchmarks_av/bench_host_syncs.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import SupervisedPlugin
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = [
    "TEMPLATE_PHASES",
    "MEMORY_PHASES",
    "STELLA_PHASES",
    "ALL_PHASES",
    "sdpa_flop_mapping",
    "FlopMeter",
    "SavedActivationMeter",
    "StepClock",
    "PhaseStats",
    "PhaseMeter",
    "profiler_phase_totals",
    "IterationRecord",
    "EfficiencyPlugin",
    "EfficiencyMetric",
    "summarize_records",
    "memory_bytes_per_sample",
    "raw_clip_bytes",
    "strategy_modules",
    "set_fused_attention",
    "fused_attention",
    "HostSyncCounter",
    "HostSyncPlugin",
    "strategy_tensors",
]

#: Ranges the ``AVPretraining`` template emits: the model's forward and the backward pass.
TEMPLATE_PHASES: Tuple[str, ...] = ("av.forward", "av.backward")
#: Ranges the online-memory plugins emit: drawing a memory batch, inserting current clips.
MEMORY_PHASES: Tuple[str, ...] = ("memory.sample", "memory.add")
#: STELLA's stages, in the order of its step (paper Algorithms 2-3, Eq. 2-4).
STELLA_PHASES: Tuple[str, ...] = (
    "stella.score",
    "stella.avm_loss",
    "stella.importance",
    "stella.exclusion",
    "stella.select_current",
    "stella.select_memory",
    "stella.penalty",
    "stella.memory_update",
)
ALL_PHASES: Tuple[str, ...] = TEMPLATE_PHASES + MEMORY_PHASES + STELLA_PHASES


class _LifoGuard:
    """Meters of one kind live on one of PyTorch's stacks (dispatch modes, function modes,
    saved-tensor hooks): leaving one that is not on top would pop another's entry (for
    dispatch modes, a crash). This refuses it with a clear error instead."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.active: List[Any] = []

    def push(self, meter: Any) -> None:
        self.active.append(meter)

    def pop(self, meter: Any) -> None:
        if not self.active or self.active[-1] is not meter:
            raise RuntimeError(
                f"{self.kind} meters must be left in the reverse order they were entered; this one "
                "is not the innermost active one (two interleaved measurement windows?)"
            )
        self.active.pop()


_FLOP_GUARD = _LifoGuard("FlopMeter")
_SAVED_GUARD = _LifoGuard("SavedActivationMeter")
_PHASE_GUARD = _LifoGuard("PhaseMeter")


# ----------------------------------------------------------------------------- FLOPs
def _cpu_sdpa_fwd_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_bwd_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def sdpa_flop_mapping() -> Dict[Any, Callable[..., int]]:
    """``FlopCounterMode`` ``custom_mapping`` for the CPU flash-attention kernels.

    Same formulas as PyTorch's own CUDA SDPA entries: ``4·B·H·Nq·Nk·d`` for the forward (the two
    matmuls, ``d_v = d``) and the matching backward count, so fused and explicit attention count
    the same FLOPs. Kernels absent from this PyTorch build are skipped.
    """
    aten = torch.ops.aten
    mapping: Dict[Any, Callable[..., int]] = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_fwd_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_bwd_flops),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = fn
    return mapping


class FlopMeter:
    """Context manager: FLOPs of the ops run inside it (forward and backward alike).

    Counts what ``FlopCounterMode`` counts (matmul, convolution, attention; elementwise ops,
    norms and softmax count 0) plus the CPU SDPA kernels of :func:`sdpa_flop_mapping`.
    :attr:`total` is live, so it can be read while counting (e.g. by :class:`PhaseMeter`).

    Example::

        with FlopMeter() as fm:
            y = torch.nn.Linear(8, 4)(torch.randn(2, 8))
        fm.total  # 2 * 2 * 8 * 4 = 128
    """

    def __init__(self, custom_mapping: Optional[Mapping[Any, Callable[..., int]]] = None) -> None:
        mapping = sdpa_flop_mapping()
        mapping.update(custom_mapping or {})
        self._counter = FlopCounterMode(display=False, custom_mapping=mapping)
        self._final: Optional[int] = None
        self._active = False

    @property
    def total(self) -> int:
        """FLOPs counted so far (live inside the context, final after it)."""
        if self._final is not None and not self._active:
            return self._final
        return int(self._counter.get_total_flops())

    def by_op(self) -> Dict[str, int]:
        """FLOPs per ATen op name (e.g. ``'aten.mm'``)."""
        return {str(k): int(v) for k, v in self._counter.get_flop_counts().get("Global", {}).items()}

    def __enter__(self) -> "FlopMeter":
        self._final = None
        self._active = True
        self._counter.__enter__()
        _FLOP_GUARD.push(self)
        return self

    def __exit__(self, *exc) -> None:
        _FLOP_GUARD.pop(self)
        self._counter.__exit__(*exc)
        self._active = False
        self._final = int(self._counter.get_total_flops())


# ----------------------------------------------------------------------------- saved activations
class _NotRetained:
    """What a non-retaining :class:`SavedActivationMeter` stores in place of a saved tensor."""

    __slots__ = ()


def _unpack_saved(t):
    if isinstance(t, _NotRetained):
        raise RuntimeError(
            "this graph was recorded by a forward-only SavedActivationMeter (retain=False) and cannot "
            "be backpropagated"
        )
    return t


class SavedActivationMeter:
    """Context manager: bytes of the tensors autograd saves for backward inside it.

    Counting rule: the bytes of the **unique underlying storages** of the saved tensors, each at
    its full size however many views of it are saved (q, k and v cut from one fused ``qkv``
    projection count once, as the ``qkv`` buffer), **excluding** the storages of ``exclude``
    (parameters and buffers: weights are not activations). Every counted storage is pinned by a
    weak reference while counting, so a storage freed during the step and a new one allocated
    at the same address are not confused.

    Args:
        exclude: tensors whose storages are not counted (typically ``model.parameters()`` and
            ``model.buffers()``).
        retain: ``True`` hands every saved tensor back to autograd unchanged. ``False``
            (forward-only measurement) keeps a placeholder instead, so activations are freed as
            soon as the forward drops them; the recorded graph then refuses a backward pass.

    Attributes:
        total_bytes: bytes counted (live).
        n_saved: tensors saved (views included).
        n_storages: unique storages counted.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = (), retain: bool = True) -> None:
        self._excluded = {t.untyped_storage()._cdata for t in exclude}
        self.retain = retain
        self.total_bytes = 0
        self.n_saved = 0
        self._refs: Dict[int, Optional[StorageWeakRef]] = {}
        self._ctx: Optional[contextlib.AbstractContextManager] = None

    @property
    def n_storages(self) -> int:
        return len(self._refs)

    def _pack(self, t: torch.Tensor):
        self.n_saved += 1
        placeholder = t if self.retain else _NotRetained()
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without a storage
            return placeholder
        key = st._cdata  # the StorageImpl: one per storage, shared by all of its views
        nbytes = st.nbytes()
        if nbytes and key not in self._excluded and key not in self._refs:
            self._refs[key] = StorageWeakRef(st)
            self.total_bytes += nbytes
        return placeholder

    def __enter__(self) -> "SavedActivationMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack_saved)
        self._ctx.__enter__()
        _SAVED_GUARD.push(self)
        return self

    def __exit__(self, *exc) -> None:
        assert self._ctx is not None
        _SAVED_GUARD.pop(self)
        self._ctx.__exit__(*exc)
        self._ctx = None
        # Drop the weak references: the counts stay, the storages' bookkeeping may go.
        self._refs = dict.fromkeys(self._refs)


# ----------------------------------------------------------------------------- clocks and phases
class StepClock:
    """Time marks: wall clock and process CPU time, plus a CUDA event on a CUDA device.

    The process CPU time is what the process computed (all its threads); with one intra-op
    thread it is not inflated when other processes time-slice a shared CPU. CUDA events are
    read after a synchronisation, in :meth:`seconds`.
    """

    def __init__(self, device: Union[str, torch.device, None] = None) -> None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = dev.type == "cuda"

    def mark(self) -> tuple:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return time.perf_counter(), time.process_time(), event

    def seconds(self, a: tuple, b: tuple) -> Tuple[float, float, Optional[float]]:
        """``(wall_s, cpu_s, cuda_s)`` between two marks (``cuda_s`` is ``None`` off CUDA)."""
        cuda_s = None
        if a[2] is not None and b[2] is not None:
            b[2].synchronize()
            cuda_s = a[2].elapsed_time(b[2]) / 1e3
        return b[0] - a[0], b[1] - a[1], cuda_s


@dataclass
class PhaseStats:
    """What :class:`PhaseMeter` aggregated for one range name.

    Times are inclusive (nested ranges of other names are part of them); a range nested in one
    of the **same** name is not counted again.

    Attributes:
        calls: outermost occurrences of the range.
        wall_s, cpu_s: summed wall-clock and process CPU seconds (0 when the clock is off).
        cuda_s: summed CUDA-event seconds on a CUDA device, else ``None``.
        counters: summed change of each live counter over the range (e.g. ``'flops'``).
    """

    calls: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cuda_s: Optional[float] = None
    counters: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_op(func: Any, packet: Any) -> bool:
    return func is packet or getattr(func, "overloadpacket", None) is packet


class _RangeMode(TorchFunctionMode):
    """Sees the ``profiler._record_function_enter_new`` / ``_record_function_exit`` calls that
    ``torch.profiler.record_function`` makes, and reports them to its :class:`PhaseMeter`."""

    def __init__(self, meter: "PhaseMeter") -> None:
        super().__init__()
        self.meter = meter
        self.enter_op = torch.ops.profiler._record_function_enter_new
        self.exit_op = torch.ops.profiler._record_function_exit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_op(func, self.enter_op):
            handle = func(*args, **kwargs)
            self.meter._enter(args[0] if args else kwargs.get("name", ""), handle)
            return handle
        if _is_op(func, self.exit_op):
            self.meter._exit(args[0] if args else None)
        return func(*args, **kwargs)


class PhaseMeter:
    """Context manager: aggregates ``torch.profiler.record_function`` ranges by name.

    The code under measurement marks its phases with ``record_function(name)``; the meter sees
    each range open and close (through a ``TorchFunctionMode``: no function is wrapped or
    replaced) and sums, per name, the calls, the wall-clock / CPU / CUDA time and the change of
    every live counter over the range. Ranges whose names are not tracked are ignored.

    Args:
        phases: range names to track; ``None`` tracks every range. Default :data:`ALL_PHASES`.
        counters: live counters read at each range boundary, e.g.
            ``{"flops": lambda: fm.total, "saved_bytes": lambda: sm.total_bytes}``.
        clock: time the ranges (``False`` when only counters are wanted).
        device: a CUDA device adds CUDA-event times.

    Overhead: the mode intercepts every torch function call made in Python while it is active
    (a few microseconds each), so measure throughput in steps without it.

    Attributes:
        stats: ``{name: PhaseStats}`` for the ranges seen (closed ones).
        top_level: a :class:`PhaseStats` summing the outermost tracked ranges only (ranges not
            nested in another tracked range), to compute what no range covers.
    """

    def __init__(
        self,
        phases: Optional[Iterable[str]] = ALL_PHASES,
        *,
        counters: Optional[Mapping[str, Callable[[], float]]] = None,
        clock: bool = True,
        device: Union[str, torch.device, None] = None,
    ) -> None:
        self.phases = None if phases is None else frozenset(phases)
        self.counters = dict(counters or {})
        self.clock = StepClock(device) if clock else None
        self._mode: Optional[_RangeMode] = None
        self.reset()

    def reset(self) -> None:
        self._open: Dict[int, tuple] = {}  # id(handle) -> (handle, name, mark, counter snapshot, outermost?)
        self._depth: Dict[str, int] = {}
        self._n_open = 0
        self._pending: List[tuple] = []  # (name, start mark, end mark, counter deltas, top level?)
        self._stats: Dict[str, PhaseStats] = {}
        self._top = PhaseStats()

    def tracks(self, name: str) -> bool:
        return self.phases is None or name in self.phases

    def _mark(self):
        return self.clock.mark() if self.clock is not None else None

    def _enter(self, name: str, handle: Any) -> None:
        if not self.tracks(name):
            return
        depth = self._depth.get(name, 0)
        self._depth[name] = depth + 1
        if depth:  # nested in a range of the same name: already inside its total
            self._open[id(handle)] = (handle, name, None, None, False)
            return
        top = self._n_open == 0
        self._n_open += 1
        snapshot = {k: fn() for k, fn in self.counters.items()}
        self._open[id(handle)] = (handle, name, self._mark(), snapshot, top)

    def _exit(self, handle: Any) -> None:
        entry = self._open.pop(id(handle), None)
        if entry is None:
            return
        end = self._mark()
        _, name, start, snapshot, top = entry
        self._depth[name] -= 1
        if start is None and snapshot is None:
            return
        self._n_open -= 1
        deltas = {k: fn() - snapshot[k] for k, fn in self.counters.items()}
        self._pending.append((name, start, end, deltas, top))

    def _resolve(self) -> None:
        # CUDA events are read here, after the step, so no range boundary synchronises the device.
        for name, start, end, deltas, top in self._pending:
            for st in (self._stats.setdefault(name, PhaseStats()),) + ((self._top,) if top else ()):
                st.calls += 1
                if start is not None:
                    wall, cpu, cuda = self.clock.seconds(start, end)
                    st.wall_s += wall
                    st.cpu_s += cpu
                    if cuda is not None:
                        st.cuda_s = (st.cuda_s or 0.0) + cuda
                for k, v in deltas.items():
                    st.counters[k] = st.counters.get(k, 0) + v
        self._pending = []

    @property
    def stats(self) -> Dict[str, PhaseStats]:
        self._resolve()
        return self._stats

    @property
    def top_level(self) -> PhaseStats:
        self._resolve()
        return self._top

    def __enter__(self) -> "PhaseMeter":
        self._mode = _RangeMode(self)
        self._mode.__enter__()
        _PHASE_GUARD.push(self)
        return self

    def __exit__(self, *exc) -> None:
        assert self._mode is not None
        _PHASE_GUARD.pop(self)
        self._mode.__exit__(*exc)
        self._mode = None


def profiler_phase_totals(prof: Any, phases: Optional[Iterable[str]] = ALL_PHASES) -> Dict[str, PhaseStats]:
    """The :class:`PhaseMeter` aggregation, read from a finished ``torch.profiler.profile`` run.

    Use it where the profiler runs anyway (e.g. a GPU trace): per tracked name, the count and
    summed wall-clock time of the outermost occurrences (host side), and on CUDA the device time
    of the kernels launched inside them. The profiler records every op, so its times include
    its own overhead.

    Args:
        prof: a ``torch.profiler.profile`` (after its context exited) or its ``events()``.
        phases: names to report; ``None`` for every ``record_function`` range.
    """
    from torch.autograd import DeviceType

    events = prof.events() if hasattr(prof, "events") else prof
    wanted = None if phases is None else frozenset(phases)
    by_name: Dict[str, List[Any]] = {}
    for e in events:
        # Host-side ranges only: on CUDA the profiler adds a device-side copy of each range.
        if e.device_type != DeviceType.CPU:
            continue
        if (e.name not in wanted) if wanted is not None else not getattr(e, "is_user_annotation", False):
            continue
        by_name.setdefault(e.name, []).append(e)
    out: Dict[str, PhaseStats] = {}
    for name, evs in by_name.items():
        evs.sort(key=lambda e: e.time_range.start)
        st = PhaseStats()
        end = float("-inf")
        for e in evs:
            if e.time_range.start < end:  # nested in an occurrence of the same name
                continue
            end = e.time_range.end
            st.calls += 1
            st.wall_s += e.time_range.elapsed_us() / 1e6
            dev = getattr(e, "device_time_total", 0) or 0
            if dev:
                st.cuda_s = (st.cuda_s or 0.0) + dev / 1e6
        out[name] = st
    return out


# ----------------------------------------------------------------------------- Avalanche plugin
@dataclass
class IterationRecord:
    """One measured training iteration (:class:`EfficiencyPlugin`).

    Attributes:
        wall_s, cpu_s: the iteration's wall-clock and process CPU seconds (``None`` when not
            timed); ``cuda_s`` its CUDA-event seconds on a CUDA device.
        flops: FLOPs of the whole iteration; with ``forward_only``, of everything before the
            backward pass.
        forward_only: the backward pass and the update were skipped (see the plugin).
        saved_bytes, saved_storages, saved_tensors: :class:`SavedActivationMeter` figures.
        phases: ``{range name: PhaseStats}`` of the iteration.
        unattributed_s: wall seconds of the iteration outside every tracked range.
        cuda_peak_bytes: peak CUDA memory allocated during the iteration;
            ``cuda_peak_step_bytes`` the same minus what was allocated when it started.
        info: what the plugin's ``describe(strategy)`` returned after the iteration.
    """

    wall_s: Optional[float] = None
    cpu_s: Optional[float] = None
    cuda_s: Optional[float] = None
    flops: Optional[int] = None
    forward_only: bool = False
    saved_bytes: Optional[int] = None
    saved_storages: Optional[int] = None
    saved_tensors: Optional[int] = None
    phases: Dict[str, PhaseStats] = field(default_factory=dict)
    unattributed_s: Optional[float] = None
    cuda_peak_bytes: Optional[int] = None
    cuda_peak_step_bytes: Optional[int] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def strategy_modules(strategy: Any) -> List[torch.nn.Module]:
    """The strategy's model and every ``nn.Module`` one of its plugins holds as an attribute
    (STELLA's AVM, an EMA teacher): what :class:`EfficiencyPlugin` excludes from activations by
    default, and where :func:`set_fused_attention` finds attention switches."""
    mods = [strategy.model]
    for p in getattr(strategy, "plugins", ()):
        for v in vars(p).values():
            if isinstance(v, torch.nn.Module) and all(v is not m for m in mods):
                mods.append(v)
    return mods


def _weights(strategy) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []
    for m in strategy_modules(strategy):
        out += list(m.parameters()) + list(m.buffers())
    return out


def _detach_output(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(
            out, **{f.name: getattr(out, f.name).detach() for f in dataclasses.fields(out)
                    if f.init and isinstance(getattr(out, f.name), torch.Tensor)}
        )
    return out


_MODE_WINDOWS: List[Any] = []  # EfficiencyPlugins whose iteration window holds meters now


class EfficiencyPlugin(SupervisedPlugin):
    """Measures each training iteration of the strategy it is attached to.

    The window is ``before_training_iteration`` → ``after_training_iteration``: plugins' work,
    forward, backward, optimizer step and memory insertion; data loading is outside it. Put the
    plugin **last** in ``plugins``: the window then encloses the other plugins' hooks of those
    two events, and its ``before_backward`` sees the loss terms other plugins add there.

    Args:
        timing: record wall-clock / CPU (/ CUDA) seconds and, on CUDA, peak memory.
        flops: count FLOPs (:class:`FlopMeter`). Counting slows the step: do not time it.
        activations: count bytes saved for backward (:class:`SavedActivationMeter`).
        phases: range names for a :class:`PhaseMeter` (``None``: every range; ``()``: no phase
            meter). When counting, each range also gets its FLOPs and saved bytes.
        forward_only: with ``flops`` / ``activations``, stop counting at ``before_backward`` and
            replace ``strategy.loss`` by a detached leaf, so that the backward pass and the
            update do nothing. Activations are all saved by then, so the bytes equal a full
            step's; the FLOPs are the forward's. Saved tensors are not even retained.
        exclude: ``exclude(strategy)`` returns the tensors not counted as activations; default:
            the parameters and buffers of the model and of every module a plugin holds as an
            attribute (STELLA's AVM).
        describe: ``describe(strategy)``, called after each measured iteration, stored as
            ``info`` (e.g. the batch's token counts).
        device: whose CUDA events / memory are read; default the strategy's device.
        enabled: ``False`` records nothing (e.g. during warm-up).

    Attributes:
        records: one :class:`IterationRecord` per measured iteration.
    """

    def __init__(
        self,
        *,
        timing: bool = True,
        flops: bool = False,
        activations: bool = False,
        phases: Optional[Iterable[str]] = (),
        forward_only: bool = False,
        exclude: Optional[Callable[[Any], Iterable[torch.Tensor]]] = None,
        describe: Optional[Callable[[Any], Dict[str, Any]]] = None,
        device: Union[str, torch.device, None] = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.timing, self.flops, self.activations = bool(timing), bool(flops), bool(activations)
        self.phases: Optional[Tuple[str, ...]] = None if phases is None else tuple(phases)
        self.forward_only, self.enabled = bool(forward_only), bool(enabled)
        self.exclude = exclude or _weights
        self.describe = describe
        self.device = None if device is None else torch.device(device)
        self.records: List[IterationRecord] = []
        self._clear()

    def configure(self, **settings: Any) -> "EfficiencyPlugin":
        """Change what is measured from the next iteration on, e.g.
        ``configure(flops=True, activations=True, timing=False)``; the keyword names are the
        constructor's ``timing``, ``flops``, ``activations``, ``phases``, ``forward_only`` and
        ``enabled``."""
        allowed = ("timing", "flops", "activations", "phases", "forward_only", "enabled")
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise ValueError(f"EfficiencyPlugin.configure: unknown settings {unknown}; allowed: {list(allowed)}")
        for k, v in settings.items():
            if k == "phases":
                self.phases = None if v is None else tuple(v)
            else:
                setattr(self, k, bool(v))
        return self

    def _clear(self) -> None:
        if self in _MODE_WINDOWS:
            _MODE_WINDOWS.remove(self)
        self._rec: Optional[IterationRecord] = None
        self._flop: Optional[FlopMeter] = None
        self._saved: Optional[SavedActivationMeter] = None
        self._phase: Optional[PhaseMeter] = None
        self._clock: Optional[StepClock] = None
        self._t0: Optional[tuple] = None
        self._cuda_start = 0

    def close(self) -> None:
        """Leave every meter of an unfinished iteration (after an exception), recording nothing."""
        self._stop_counting()
        if self._phase is not None:
            self._phase.__exit__(None, None, None)
        self._clear()

    def _dev(self, strategy) -> torch.device:
        return self.device or torch.device(getattr(strategy, "device", "cpu"))

    # ------------------------------------------------------------------ hooks
    def before_training_iteration(self, strategy, **kwargs):
        if self._rec is not None:  # the previous iteration never finished (an exception)
            self.close()
        if not self.enabled:
            return
        dev = self._dev(strategy)
        counting = self.flops or self.activations
        if counting or self.phases != ():
            open_windows = [w for w in _MODE_WINDOWS if w is not self]
            if open_windows:
                raise ValueError(
                    "two EfficiencyPlugin / EfficiencyMetric instances count FLOPs, activations or phases "
                    "in the same training iteration; their windows interleave, so only one may (the "
                    "others can still time the step: timing=True with flops, activations and phases off)"
                )
            _MODE_WINDOWS.append(self)
        self._rec = IterationRecord(forward_only=counting and self.forward_only)
        counters: Dict[str, Callable[[], float]] = {}
        # The three meters use separate stacks (saved-tensor hooks, dispatch modes, function
        # modes), so each can be left on its own in before_backward / after_training_iteration.
        if self.activations:
            self._saved = SavedActivationMeter(self.exclude(strategy), retain=not self._rec.forward_only)
            self._saved.__enter__()
            counters["saved_bytes"] = lambda m=self._saved: m.total_bytes
        if self.flops:
            self._flop = FlopMeter().__enter__()
            counters["flops"] = lambda m=self._flop: m.total
        if self.phases != ():
            self._phase = PhaseMeter(self.phases, counters=counters, clock=self.timing, device=dev).__enter__()
        if self.timing:
            self._clock = StepClock(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                self._cuda_start = int(torch.cuda.memory_allocated(dev))
            self._t0 = self._clock.mark()

    def _stop_counting(self) -> None:
        rec = self._rec
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            if rec is not None:
                rec.saved_bytes = self._saved.total_bytes
                rec.saved_storages = self._saved.n_storages
                rec.saved_tensors = self._saved.n_saved
            self._saved = None
        if self._flop is not None:
            self._flop.__exit__(None, None, None)
            if rec is not None:
                rec.flops = self._flop.total
            self._flop = None

    def before_backward(self, strategy, **kwargs):
        if self._rec is None or not self._rec.forward_only:
            return
        # The phase meter keeps running; its counters read the stopped meters' final values.
        self._stop_counting()
        strategy.loss = strategy.loss.detach().requires_grad_()  # backward and update: no-ops

    def after_training_iteration(self, strategy, **kwargs):
        rec = self._rec
        if rec is None:
            return
        end = self._clock.mark() if self.timing else None
        self._stop_counting()
        top = None
        if self._phase is not None:
            self._phase.__exit__(None, None, None)
            rec.phases = dict(self._phase.stats)
            top = self._phase.top_level
        if self.timing:
            rec.wall_s, rec.cpu_s, rec.cuda_s = self._clock.seconds(self._t0, end)
            if top is not None:
                rec.unattributed_s = rec.wall_s - top.wall_s
            dev = self._dev(strategy)
            if dev.type == "cuda":
                rec.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(dev))
                rec.cuda_peak_step_bytes = rec.cuda_peak_bytes - self._cuda_start
        if rec.forward_only:
            # Drop the never-backpropagated graph now rather than at the next iteration.
            strategy.mb_output = _detach_output(strategy.mb_output)
        if self.describe is not None:
            rec.info = dict(self.describe(strategy))
        self.records.append(rec)
        self._clear()

    def summary(self, batch_size: Optional[int] = None) -> dict:
        """:func:`summarize_records` of :attr:`records`."""
        return summarize_records(self.records, batch_size)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def summarize_records(records: Sequence[IterationRecord], batch_size: Optional[int] = None) -> dict:
    """Medians (times) and means (counts) over iteration records.

    Keys present only when measured: ``step_s`` / ``step_cpu_s`` / ``step_cuda_s`` (medians),
    ``samples_per_s`` / ``samples_per_cpu_s`` (``batch_size`` over the median, when given),
    ``flops`` (or ``forward_flops``), ``saved_bytes``, ``cuda_peak_bytes`` (max), and
    ``phases``: per range the median wall / CPU seconds and their median share of the step,
    and the mean counters. Medians resist a step disturbed by other processes.
    """
    out: dict = {"iterations": len(records)}
    timed = [r for r in records if r.wall_s is not None]
    if timed:
        out["step_s"] = _median([r.wall_s for r in timed])
        out["step_cpu_s"] = _median([r.cpu_s for r in timed])
        if all(r.cuda_s is not None for r in timed):
            out["step_cuda_s"] = _median([r.cuda_s for r in timed])
        if batch_size:
            out["samples_per_s"] = batch_size / out["step_s"]
            out["samples_per_cpu_s"] = batch_size / out["step_cpu_s"] if out["step_cpu_s"] > 0 else None
        peaks = [r.cuda_peak_bytes for r in timed if r.cuda_peak_bytes is not None]
        if peaks:
            out["cuda_peak_bytes"] = max(peaks)
            out["cuda_peak_step_bytes"] = max(r.cuda_peak_step_bytes for r in timed)
    counted = [r for r in records if r.flops is not None]
    if counted:
        key = "forward_flops" if counted[-1].forward_only else "flops"
        out[key] = int(statistics.mean(r.flops for r in counted))
    saved = [r for r in records if r.saved_bytes is not None]
    if saved:
        out["saved_bytes"] = int(statistics.mean(r.saved_bytes for r in saved))
        out["saved_storages"] = saved[-1].saved_storages
        out["saved_tensors"] = saved[-1].saved_tensors
    names: List[str] = []
    for r in records:
        names += [n for n in r.phases if n not in names]
    phases: dict = {}
    for n in names:
        recs = [r for r in records if n in r.phases]
        ph = [r.phases[n] for r in recs]
        row: dict = {"calls": statistics.mean(p.calls for p in ph)}
        with_time = [(p, r) for p, r in zip(ph, recs) if r.wall_s]
        if with_time:
            row["wall_s"] = _median([p.wall_s for p, _ in with_time])
            row["cpu_s"] = _median([p.cpu_s for p, _ in with_time])
            row["share_wall"] = _median([p.wall_s / r.wall_s for p, r in with_time])
            row["share_cpu"] = _median([p.cpu_s / r.cpu_s for p, r in with_time if r.cpu_s])
            if all(p.cuda_s is not None for p, _ in with_time):
                row["cuda_s"] = _median([p.cuda_s for p, _ in with_time])
        keys = sorted({k for p in ph for k in p.counters})
        for k in keys:
            row[k] = statistics.mean(p.counters.get(k, 0) for p in ph)
        phases[n] = row
    if phases:
        out["phases"] = phases
        un = [r.unattributed_s for r in records if r.unattributed_s is not None]
        if un:
            out["unattributed_s"] = _median(un)
    return out


# ----------------------------------------------------------------------------- Avalanche metric
class EfficiencyMetric(PluginMetric[Dict[str, float]]):
    """The :class:`EfficiencyPlugin` measurement as a ``PluginMetric`` for Avalanche loggers.

    Add it to an ``EvaluationPlugin`` (the evaluator runs after the user plugins, so the window
    encloses them). After every training iteration it emits ``{prefix}/step_s``,
    ``{prefix}/step_cpu_s``, and when counted ``{prefix}/flops`` and ``{prefix}/saved_bytes``,
    plus ``{prefix}/{range}_s`` per tracked range, with the strategy's training iteration
    counter as x.

    Args:
        prefix: metric name prefix.
        **kwargs: as :class:`EfficiencyPlugin` (``time``, ``flops``, ``activations``, ``phases``...).
    """

    def __init__(self, prefix: str = "Efficiency", **kwargs: Any) -> None:
        super().__init__()
        self.prefix = prefix
        self.meter = EfficiencyPlugin(**kwargs)

    def reset(self) -> None:
        self.meter.records = []

    def result(self) -> Optional[Dict[str, float]]:
        if not self.meter.records:
            return None
        return self._values(self.meter.records[-1])

    def _values(self, rec: IterationRecord) -> Dict[str, float]:
        vals: Dict[str, float] = {}
        for name, v in (("step_s", rec.wall_s), ("step_cpu_s", rec.cpu_s), ("step_cuda_s", rec.cuda_s),
                        ("forward_flops" if rec.forward_only else "flops", rec.flops),
                        ("saved_bytes", rec.saved_bytes)):
            if v is not None:
                vals[name] = v
        if rec.wall_s is not None:
            for name, st in rec.phases.items():
                vals[f"{name}_s"] = st.wall_s
        return vals

    def before_training_iteration(self, strategy) -> None:
        self.meter.before_training_iteration(strategy)

    def before_backward(self, strategy) -> None:
        self.meter.before_backward(strategy)

    def after_training_iteration(self, strategy) -> List[MetricValue]:
        self.meter.after_training_iteration(strategy)
        vals = self.result() or {}
        x = strategy.clock.train_iterations
        return [MetricValue(self, f"{self.prefix}/{k}", float(v), x) for k, v in vals.items()]

    def __str__(self) -> str:
        return self.prefix


# ----------------------------------------------------------------------------- helpers
def memory_bytes_per_sample(strategy_or_plugins: Any) -> int:
    """Bytes one stored memory sample costs, summed over the plugins that keep a memory.

    Args:
        strategy_or_plugins: a strategy (its ``plugins``) or an iterable of plugins; plugins
            expose ``memory_bytes_per_sample()``. 0 when none does (e.g. fine-tuning).
    """
    plugins = getattr(strategy_or_plugins, "plugins", strategy_or_plugins)
    return int(sum(p.memory_bytes_per_sample() for p in plugins if hasattr(p, "memory_bytes_per_sample")))


def raw_clip_bytes(config: Any, bytes_per_element: int = 4) -> int:
    """Bytes of one raw clip, fbank ``(T, F)`` plus frames ``(n, 3, H, W)``, at
    ``bytes_per_element`` (4: float32), for an ``AVMAEConfig``-like ``config``."""
    c = config
    return bytes_per_element * (c.audio_length * c.num_mel_bins + c.n_frames * 3 * c.image_size**2)


def _attention_switches(modules: Union[torch.nn.Module, Iterable[torch.nn.Module]]) -> List[torch.nn.Module]:
    if isinstance(modules, torch.nn.Module):
        modules = [modules]
    found: Dict[int, torch.nn.Module] = {}
    for mod in modules:
        for m in mod.modules():
            if isinstance(getattr(m, "fused_attn", None), bool):
                found.setdefault(id(m), m)
    return list(found.values())


def set_fused_attention(modules: Union[torch.nn.Module, Iterable[torch.nn.Module]], enabled: bool) -> int:
    """Set every timm-style ``fused_attn`` switch in ``modules`` and their submodules; returns
    how many were set.

    ``fused_attn = True`` runs ``scaled_dot_product_attention``; ``False`` the explicit
    ``softmax(q·kᵀ/√d)·v`` kernel, which saves the attention probabilities for backward (the
    setting of the paper's memory comparison). timm's ``Attention`` (the backbone's blocks) and
    :class:`~avalanche_av.models.avm.AVMatching` have the switch.
    """
    switches = _attention_switches(modules)
    for m in switches:
        m.fused_attn = bool(enabled)
    return len(switches)


@contextlib.contextmanager
def fused_attention(modules: Union[torch.nn.Module, Iterable[torch.nn.Module]], enabled: bool) -> Iterator[int]:
    """:func:`set_fused_attention` for the duration of the block (each switch is restored after
    it); yields how many switches were set."""
    switches = _attention_switches(modules)
    before = [m.fused_attn for m in switches]
    try:
        for m in switches:
            m.fused_attn = bool(enabled)
        yield len(switches)
    finally:
        for m, b in zip(switches, before):
            m.fused_attn = b


# Re-exported here so that every efficiency meter is reachable from one module.
from .host_sync import HostSyncCounter, HostSyncPlugin, strategy_tensors  # noqa: E402
