"""Counting host syncs on CPU: every place a training step would make the host wait for an accelerator.

On a GPU, a *host sync* is any operation after which the host cannot continue until the device
has finished the work queued so far: reading a tensor value on the host (``.item()``,
``int(t)``, ``float(t)``, ``bool(t)``, ``if t:``, ``.tolist()``, ``.numpy()``), a blocking
device-to-host copy (``.cpu()``, ``.to('cpu')``, ``host[...] = device_tensor``), and ops whose
output *shape* depends on tensor values (``nonzero``, boolean-mask indexing, ``masked_select``,
``unique``, ``repeat_interleave`` without ``output_size``, ``bincount`` without ``minlength``,
``torch.equal``). Each one stalls the queue: the host stops launching kernels and the device
idles until the host catches up. ``torch.cuda.set_sync_debug_mode('warn')`` reports them on a
GPU (``benchmarks_av/gpu_check.py`` does); :class:`HostSyncCounter` finds them on a CPU-only
machine.

How it works on CPU. The counter *emulates an accelerator*: the strategy runs on
``torch.device('cpu', 0)`` (:data:`EMULATED_DEVICE`), which PyTorch executes as plain CPU. A
``TorchDispatchMode`` tracks which tensors would live on the device: the ones declared resident
(:func:`strategy_tensors`: parameters, buffers, gradients, optimizer state), anything moved with
``.to(EMULATED_DEVICE)`` (the minibatch), any factory op called with ``device=`` the emulated
device, and every op output that has a resident input. While active, ``tensor.device`` of a
resident tensor reads ``cpu:0`` (the counter overrides the ``torch.Tensor.device`` property for
its duration and restores it on exit: property reads bypass PyTorch's function modes), so code
that allocates on "the device of x" allocates resident tensors, as it would on a GPU. Host-side tensors (the CPU generator's draws of the reservoir,
the memory stored on the host) stay host tensors: reading *them* costs no sync on a GPU either
and is reported separately (``host_reads``).

Each event is attributed to its call site (the innermost frame outside PyTorch and this module,
e.g. a line of Avalanche's metrics or of our template),
so a report says *where* a step syncs. What it cannot see: syncs inside CUDA-only code paths
(``GradScaler``, ``torch.cuda.Event.synchronize``), and transfers from pageable memory that the
CUDA driver makes synchronous; the GPU measurement covers those.

Usage::

    counter = HostSyncCounter(resident=strategy_tensors(strategy))
    with counter:
        strategy.train(exp)             # the strategy was built with device=EMULATED_DEVICE
    counter.per_iteration()             # syncs per training iteration, by kind and site

:class:`HostSyncPlugin` marks the training iterations (add it last in ``plugins``) so that
events are split into per-iteration counts and events outside any iteration (data loading,
epoch/experience hooks).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from avalanche.training.plugins import SupervisedPlugin
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "EMULATED_DEVICE",
    "SyncEvent",
    "HostSyncCounter",
    "HostSyncPlugin",
    "strategy_tensors",
    "SYNC_KINDS",
]

#: The device a strategy runs on under :class:`HostSyncCounter`: executed as CPU, tracked as an
#: accelerator.
EMULATED_DEVICE = torch.device("cpu", 0)

#: Event kinds. ``read``: a value read on the host (``.item()``, ``bool(t)``...). ``shape``: an
#: op whose output shape depends on values. ``d2h``: a blocking device-to-host copy. ``d2h_async``:
#: a non-blocking one (no sync; the host must not read it before an event says it arrived).
#: ``h2d``: a host-to-device copy (no sync from pinned memory).
SYNC_KINDS = ("read", "shape", "d2h")

_aten = torch.ops.aten
_READ_OPS = {_aten._local_scalar_dense.default, _aten.equal.default}
_SHAPE_PACKETS = {
    _aten.nonzero, _aten.masked_select, _aten._unique2, _aten.unique_consecutive, _aten.unique_dim,
    _aten.argwhere,
}
_INDEX_PACKETS = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}
_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


@dataclass(frozen=True)
class SyncEvent:
    """One counted event.

    Attributes:
        kind: ``read``, ``shape``, ``d2h`` (host syncs), or ``d2h_async`` / ``h2d`` (transfers
            that do not sync).
        op: what was called (``aten._local_scalar_dense``, ``Tensor.tolist``...).
        site: ``path:line (function)`` of the innermost caller outside PyTorch.
        resident: the operand lives on the (emulated) device; ``False`` for host tensors, whose
            reads cost no sync on a GPU.
        window: the training iteration it happened in (:class:`HostSyncPlugin`), or ``None``.
    """

    kind: str
    op: str
    site: str
    resident: bool
    window: Optional[int]

    @property
    def is_sync(self) -> bool:
        return self.resident and self.kind in SYNC_KINDS


def _call_site() -> str:
    f = sys._getframe(2)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(_TORCH_DIR) and not path.startswith(_HERE) and "<frozen" not in path:
            return f"{_short(path)}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "?"


def _short(path: str) -> str:
    for key in ("avalanche_av", "benchmarks_av", "site-packages"):
        i = path.find(os.sep + key + os.sep)
        if i >= 0:
            return path[i + 1 + (len(key) + 1 if key == "site-packages" else 0):]
    return os.path.basename(path)


def _tensors(obj: Any) -> List[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _is_emulated(device: Any) -> bool:
    if device is None:
        return False
    if isinstance(device, str):
        device = torch.device(device)
    return isinstance(device, torch.device) and device.type == "cpu" and device.index == EMULATED_DEVICE.index


def _target_device(args: tuple, kwargs: dict) -> Tuple[Optional[torch.device], bool]:
    """The device a ``Tensor.to`` call moves to (``None``: unchanged) and its ``non_blocking``."""
    dev = kwargs.get("device")
    nb = bool(kwargs.get("non_blocking", False))
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            dev = a
        elif isinstance(a, torch.Tensor):  # .to(other): its device
            dev = a.device
        elif isinstance(a, bool):
            nb = a
    if isinstance(dev, str):
        dev = torch.device(dev)
    return dev, nb


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: "HostSyncCounter") -> None:
        super().__init__()
        self.c = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.c
        if c._quiet:
            return func(*args, **kwargs)
        ins = _tensors((args, kwargs))
        resident = any(t in c.resident for t in ins)
        packet = func.overloadpacket
        if func in _READ_OPS:
            c._record("read", f"aten.{packet.__name__}", resident)
        elif packet in _SHAPE_PACKETS or (packet is _aten.repeat_interleave and kwargs.get("output_size") is None
                                          and any(t.dim() > 0 for t in ins)) or (
                packet is _aten.bincount and not kwargs.get("minlength") and len(args) < 3):
            c._record("shape", f"aten.{packet.__name__}", resident)
        elif packet in _INDEX_PACKETS and any(
                t.dtype == torch.bool for t in _tensors(args[1] if len(args) > 1 else kwargs.get("indices"))):
            c._record("shape", f"aten.{packet.__name__} (bool mask)", resident)
        out = func(*args, **kwargs)
        outs = _tensors(out)
        if not resident and not ins and _is_emulated(kwargs.get("device")):
            resident = True  # a factory op on the device
        if resident:
            mutated = func._schema.is_mutable
            if mutated and args and isinstance(args[0], torch.Tensor) and args[0] not in c.resident:
                # a host tensor written from device tensors: an implicit device-to-host copy
                c._record("d2h", f"aten.{packet.__name__} (host destination)", True)
                return out
            for t in outs:
                c.resident[t] = True
        return out


class _Function(TorchFunctionMode):
    def __init__(self, counter: "HostSyncCounter") -> None:
        super().__init__()
        self.c = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.c
        name = getattr(func, "__name__", "")
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if src is None:
            return func(*args, **kwargs)
        if name in ("tolist", "numpy", "__array__"):
            c._record("read", f"Tensor.{name}", src in c.resident)
            return func(*args, **kwargs)
        if name in ("cpu", "to"):
            dev, nb = (torch.device("cpu"), bool(kwargs.get("non_blocking", False))) if name == "cpu" \
                else _target_device(args, kwargs)
            was = src in c.resident
            out = func(*args, **kwargs)
            if dev is None or not isinstance(out, torch.Tensor):
                return out
            if _is_emulated(dev):
                if not was:
                    c._record("h2d", f"Tensor.{name}", True)
                    out = out.view_as(out) if out is src else out
                c.resident[out] = True
            elif dev.type == "cpu" and was:
                c._record("d2h_async" if nb else "d2h", f"Tensor.{name}", True)
                out = out.view_as(out) if out is src else out  # a distinct (host) tensor
                c.resident.pop(out, None)
            return out
        if name == "copy_" and len(args) > 1 and isinstance(args[1], torch.Tensor):
            if args[1] in c.resident and src not in c.resident:
                nb = bool(kwargs.get("non_blocking", args[2] if len(args) > 2 else False))
                c._record("d2h_async" if nb else "d2h", "Tensor.copy_", True)
                c._quiet += 1  # the dispatch mode must neither count it again nor mark the host tensor
                try:
                    return func(*args, **kwargs)
                finally:
                    c._quiet -= 1
        return func(*args, **kwargs)


class HostSyncCounter:
    """Context manager: counts host syncs (and host reads, transfers) by kind and call site.

    Args:
        resident: tensors that live on the (emulated) device when counting starts, e.g.
            :func:`strategy_tensors`. Tensors created later are tracked automatically.

    Attributes:
        events: every :class:`SyncEvent`, in order.
        iterations: how many training iterations :class:`HostSyncPlugin` marked.
    """

    def __init__(self, resident: Iterable[torch.Tensor] = ()) -> None:
        self.resident: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for t in resident:
            self.resident[t] = True
        self.events: List[SyncEvent] = []
        self.window: Optional[int] = None
        self.iterations = 0
        self._quiet = 0
        self._modes: Optional[tuple] = None

    def mark_resident(self, tensors: Iterable[torch.Tensor]) -> None:
        """Declare more tensors as device-resident."""
        for t in tensors:
            self.resident[t] = True

    def _record(self, kind: str, op: str, resident: bool) -> None:
        self.events.append(SyncEvent(kind, op, _call_site(), resident, self.window))

    def __enter__(self) -> "HostSyncCounter":
        if "device" in vars(torch.Tensor):
            raise RuntimeError("HostSyncCounter cannot be nested (torch.Tensor.device is already overridden)")
        resident, base_get = self.resident, torch._C.TensorBase.device.__get__

        def device(t: torch.Tensor) -> torch.device:
            return EMULATED_DEVICE if t in resident else base_get(t)

        # Measurement only, undone on exit: property getters bypass torch-function modes, and
        # code that allocates "on the device of x" must see the emulated device for resident x.
        torch.Tensor.device = property(device)  # type: ignore[assignment]
        fn, disp = _Function(self), _Dispatch(self)
        fn.__enter__()
        disp.__enter__()
        self._modes = (fn, disp)
        return self

    def __exit__(self, *exc) -> None:
        assert self._modes is not None
        fn, disp = self._modes
        try:
            disp.__exit__(*exc)
            fn.__exit__(*exc)
        finally:
            del torch.Tensor.device
            self._modes = None

    # ------------------------------------------------------------------ reports
    def syncs(self, window: Any = "all") -> List[SyncEvent]:
        """The sync events (resident operand, kind in :data:`SYNC_KINDS`); ``window`` selects
        one iteration, ``None`` (outside every iteration) or ``'all'``."""
        return [e for e in self.events if e.is_sync and (window == "all" or e.window == window)]

    def per_iteration(self) -> dict:
        """Syncs per training iteration: ``syncs_per_iteration`` (mean over marked iterations),
        ``min``/``max``, ``by_kind`` and ``by_site`` (mean per iteration), ``outside_iterations``
        (syncs outside every iteration, total), ``host_reads_per_iteration`` (reads of host
        tensors: no GPU sync), and ``async_d2h`` / ``h2d`` transfers per iteration."""
        n = max(self.iterations, 1)
        inside = [e for e in self.events if e.window is not None]
        syncs = [e for e in inside if e.is_sync]
        per = Counter(e.window for e in syncs)
        counts = [per.get(i, 0) for i in range(self.iterations)] or [0]
        return {
            "iterations": self.iterations,
            "syncs_per_iteration": len(syncs) / n,
            "min": min(counts),
            "max": max(counts),
            "by_kind": {k: v / n for k, v in sorted(Counter(e.kind for e in syncs).items())},
            "by_site": {f"{s} [{k}: {op}]": v / n for (s, k, op), v in
                        sorted(Counter((e.site, e.kind, e.op) for e in syncs).items(), key=lambda x: -x[1])},
            "outside_iterations": len([e for e in self.events if e.window is None and e.is_sync]),
            "host_reads_per_iteration": len([e for e in inside if not e.resident]) / n,
            "async_d2h_per_iteration": len([e for e in inside if e.kind == "d2h_async"]) / n,
            "h2d_per_iteration": len([e for e in inside if e.kind == "h2d"]) / n,
        }


class HostSyncPlugin(SupervisedPlugin):
    """Marks training iterations for a :class:`HostSyncCounter`.

    Iteration ``i``'s window runs from its ``before_training_iteration`` to the next one (or to
    the end of the epoch), so it holds everything a training step costs: the plugins' work, the
    forward, backward and update, the evaluator's per-iteration metrics (which run after the
    plugins' ``after_training_iteration``) and the loading of the next minibatch.
    """

    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def before_training_iteration(self, strategy, **kwargs):
        self.counter.window = self.counter.iterations
        self.counter.iterations += 1

    def after_training_epoch(self, strategy, **kwargs):
        self.counter.window = None

    def after_training_exp(self, strategy, **kwargs):
        self.counter.window = None


def strategy_tensors(strategy: Any) -> List[torch.Tensor]:
    """Tensors that live on the strategy's device between steps: the model's and the plugins'
    modules' parameters, gradients and buffers, and the optimizer's state. PyTorch keeps an
    optimizer's ``step`` counters on the host unless the group is ``capturable`` or ``fused``;
    those stay host tensors here too."""
    # the model and every module a plugin holds (STELLA's AVM, EMA teachers); the same set as
    # efficiency.strategy_modules, which re-exports this module (so no import from there)
    mods: List[torch.nn.Module] = [strategy.model]
    for p in getattr(strategy, "plugins", ()):
        mods += [v for v in vars(p).values() if isinstance(v, torch.nn.Module) and all(v is not m for m in mods)]
    out: List[torch.Tensor] = []
    for m in mods:
        for p in m.parameters():
            out.append(p)
            if p.grad is not None:
                out.append(p.grad)
        out.extend(m.buffers())
    for group in strategy.optimizer.param_groups:
        on_device_step = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            for k, v in strategy.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and (k != "step" or on_device_step):
                    out.append(v)
    return out
