"""Online (task-free) reservoir memories stored as preallocated tensors.

Avalanche's ``ReservoirSamplingBuffer`` updates once per experience and holds dataset
subsets. STELLA and our ER/DER++ baselines need a reservoir updated **every iteration** that
also stores per-sample tensors computed during training (DER "logits", STELLA's pooled
queries, importance scores and exclusion probabilities). :class:`TensorReservoir` is that
store; :class:`OnlineReservoirBuffer` and :class:`StellaBuffer` put it behind Avalanche's
``ExemplarsBuffer`` interface.

Storage is compact: frames stay ``uint8``, fbank and per-patch scores ``float16``
(fbank values are normalised to about ``[-2, 4]``, where fp16's relative error is 5e-4,
well below the front end's own noise), patch indices ``int16``.
Every field is one ``(M, ...)`` tensor; nothing is a Python list of samples.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch
from avalanche.benchmarks.utils import make_avalanche_dataset
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.training.storage_policy import ExemplarsBuffer
from torch.utils.data import TensorDataset

__all__ = ["TensorReservoir", "OnlineReservoirBuffer", "StellaBuffer", "reservoir_slots"]


def reservoir_slots(
    n_seen: int, batch: int, capacity: int, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reservoir sampling (Algorithm R) for a batch of ``batch`` new stream items, vectorised.

    Item ``i`` of the batch is the ``n = n_seen + i``-th item of the stream (0-based). It goes
    to slot ``n`` while the memory is filling; afterwards to a slot drawn uniformly in
    ``[0, n]``, kept only if that slot is ``< capacity``. When two items of one batch hit the same
    slot the later one wins, exactly as the sequential algorithm would.

    Returns:
        ``(batch_pos, slots)``: positions in the batch ``(K,)`` and their memory slots ``(K,)``.
    """
    n = torch.arange(n_seen, n_seen + batch, dtype=torch.float64)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    j = torch.floor(u * (n + 1)).long()
    slots = torch.where(n < capacity, n.long(), j)
    keep = slots < capacity
    pos = torch.nonzero(keep).squeeze(1)
    slots = slots[keep]
    if slots.numel() > 1:
        # last write wins: keep, for every slot, the highest batch position that targets it
        order = torch.argsort(slots * batch + pos, stable=True)
        slots, pos = slots[order], pos[order]
        last = torch.ones_like(slots, dtype=torch.bool)
        last[:-1] = slots[1:] != slots[:-1]
        slots, pos = slots[last], pos[last]
    return pos, slots


class TensorReservoir:
    """Fixed-capacity reservoir of named per-sample tensors, filled online.

    Fields are allocated on the first :meth:`add` from the shapes/dtypes given (``(B, ...)`` per
    field) and stored as ``(capacity, ...)`` tensors on ``device``. ``dtypes`` maps a field name
    to the dtype it is stored in (compact storage); other fields keep their own dtype.

    Args:
        capacity: ``M``, the memory size in samples (``>= 1``).
        dtypes: storage dtype per field name.
        device: where the memory lives (CPU by default; pinned when CUDA is available so that
            memory batches copy to the GPU asynchronously).
    """

    def __init__(
        self,
        capacity: int,
        dtypes: Optional[Dict[str, torch.dtype]] = None,
        device: torch.device | str = "cpu",
    ):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"memory capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.dtypes = dict(dtypes or {})
        self.device = torch.device(device)
        self.fields: Dict[str, torch.Tensor] = {}
        self.size = 0
        self.n_seen = 0

    def __len__(self) -> int:
        return self.size

    def _allocate(self, batch: Dict[str, torch.Tensor]) -> None:
        pin = self.device.type == "cpu" and torch.cuda.is_available()
        for name, t in batch.items():
            dtype = self.dtypes.get(name, t.dtype)
            buf = torch.zeros((self.capacity, *t.shape[1:]), dtype=dtype, device=self.device)
            self.fields[name] = buf.pin_memory() if pin else buf

    def add(self, batch: Dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Offer ``B`` new samples (every field ``(B, ...)``); returns the slots written ``(K,)``."""
        sizes = {t.shape[0] for t in batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"all fields must share the batch dimension, got sizes {sorted(sizes)}")
        b = sizes.pop()
        if not self.fields:
            self._allocate(batch)
        elif set(batch) != set(self.fields):
            raise ValueError(f"fields {sorted(batch)} differ from the stored ones {sorted(self.fields)}")
        else:
            for name, t in batch.items():
                if tuple(t.shape[1:]) != tuple(self.fields[name].shape[1:]):
                    raise ValueError(
                        f"field {name!r}: per-sample shape {tuple(t.shape[1:])} differs from stored "
                        f"{tuple(self.fields[name].shape[1:])}"
                    )
        pos, slots = reservoir_slots(self.n_seen, b, self.capacity, generator)
        if pos.numel():
            for name, t in batch.items():
                buf = self.fields[name]
                src = t.detach()[pos.to(t.device)].to(device=buf.device, dtype=buf.dtype)
                buf[slots.to(buf.device)] = src
        self.n_seen += b
        self.size = min(self.capacity, self.n_seen)
        return slots

    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Draw ``min(n, len(self))`` distinct samples uniformly; returns ``(slots, fields)``.

        Fields come back with ``device`` (non-blocking copies from pinned memory).
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty memory")
        m = min(n, self.size)
        slots = torch.randperm(self.size, generator=generator)[:m]
        return slots, self.get(slots, device)

    def get(self, slots: torch.Tensor, device: torch.device | str | None = None) -> Dict[str, torch.Tensor]:
        """Fields of the given slots ``(K,)`` as ``(K, ...)`` tensors on ``device``."""
        out = {}
        for name, buf in self.fields.items():
            t = buf[slots.to(buf.device)]
            out[name] = t.to(device, non_blocking=True) if device is not None else t
        return out

    def update(self, slots: torch.Tensor, values: Dict[str, torch.Tensor]) -> None:
        """Overwrite fields of existing slots in place (e.g. GMED's edited inputs)."""
        for name, t in values.items():
            buf = self.fields[name]
            buf[slots.to(buf.device)] = t.detach().to(device=buf.device, dtype=buf.dtype)

    def resize(self, new_capacity: int, generator: Optional[torch.Generator] = None) -> None:
        """Change the capacity. Shrinking keeps a uniform random subset, so the kept samples are
        still a uniform sample of the stream; growing keeps everything and refills from new data."""
        if not isinstance(new_capacity, int) or new_capacity < 1:
            raise ValueError(f"memory capacity must be an int >= 1, got {new_capacity!r}")
        keep = torch.arange(self.size)
        if self.size > new_capacity:
            keep = torch.randperm(self.size, generator=generator)[:new_capacity].sort().values
        for name, buf in list(self.fields.items()):
            new = torch.zeros((new_capacity, *buf.shape[1:]), dtype=buf.dtype, device=buf.device)
            new[: keep.numel()] = buf[keep.to(buf.device)]
            self.fields[name] = new
        self.capacity = new_capacity
        self.size = int(keep.numel())
        # n_seen is kept: later insertions still happen with probability capacity / n_seen.

    def bytes_per_sample(self) -> int:
        """Bytes one stored sample takes over all fields."""
        return int(sum(buf[0].numel() * buf.element_size() for buf in self.fields.values()))

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "size": self.size,
            "n_seen": self.n_seen,
            "fields": {k: v[: self.size].clone() for k, v in self.fields.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.size = int(state["size"])
        self.n_seen = int(state["n_seen"])
        self.fields = {}
        for name, t in state["fields"].items():
            buf = torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
            buf[: self.size] = t.to(self.device)
            self.fields[name] = buf


class OnlineReservoirBuffer(ExemplarsBuffer):
    """Avalanche ``ExemplarsBuffer`` backed by a :class:`TensorReservoir` updated every iteration.

    Stores the raw clip (``audio`` fp16 ``(T, F)``, ``video`` uint8 ``(n, 3, H, W)``), ``target``,
    ``clip_id`` and any extra per-sample fields a plugin passes to :meth:`add`.

    ``buffer`` (the Avalanche view) is an AvalancheDataset of the stored clips as
    ``(audio, video, target, clip_id)`` samples, built on access.

    Args:
        max_size: memory size in clips.
        extra_dtypes: storage dtype of extra fields (e.g. ``{"pooled_a": torch.float16}``).
        device: memory device (CPU by default).
    """

    CLIP_DTYPES = {"audio": torch.float16, "video": torch.uint8, "target": torch.int64, "clip_id": torch.int64}

    def __init__(
        self,
        max_size: int,
        extra_dtypes: Optional[Dict[str, torch.dtype]] = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__(max_size)
        self.store = TensorReservoir(max_size, {**self.CLIP_DTYPES, **(extra_dtypes or {})}, device)
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return len(self.store)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    @property
    def buffer(self):
        if len(self.store) == 0 or "audio" not in self.store.fields:
            return make_avalanche_dataset(TensorDataset(torch.empty(0)))
        f = {k: v[: len(self.store)] for k, v in self.store.fields.items()}
        ds = TensorDataset(f["audio"], f["video"], f["target"], f["clip_id"])
        return make_avalanche_dataset(
            ds,
            data_attributes=[
                DataAttribute(f["target"].tolist(), "targets"),
                DataAttribute([0] * len(self.store), "targets_task_labels", use_in_getitem=True),
            ],
        )

    @buffer.setter
    def buffer(self, new_buffer):  # Avalanche's base class assigns an empty dataset at init
        pass

    def add(self, fields: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Offer a batch of samples (``(B, ...)`` per field); returns the written slots."""
        return self.store.add(fields, self.generator)

    def sample(self, n: int, device=None) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return self.store.sample(n, self.generator, device)

    def update(self, strategy, **kwargs):
        """Avalanche hook: offer the strategy's current raw minibatch (first ``n_current`` rows)."""
        mb = strategy.mbatch
        n = kwargs.get("n_current", mb[0].shape[0])
        self.add({"audio": mb[0][:n], "video": mb[1][:n], "target": mb[2][:n], "clip_id": mb[3][:n]})

    def resize(self, strategy, new_size: int):
        self.max_size = new_size
        self.store.resize(new_size, self.generator)

    def bytes_per_sample(self) -> int:
        return self.store.bytes_per_sample()

    def state_dict(self) -> dict:
        return {"store": self.store.state_dict(), "generator": self.generator.get_state(), "max_size": self.max_size}

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state["store"])
        self.generator.set_state(state["generator"])
        self.max_size = int(state["max_size"])


class StellaBuffer(OnlineReservoirBuffer):
    """STELLA's rehearsal memory (SPEC §3 "Memory and loss").

    Per sample, STELLA mode (``store_patches=False``) stores:

    ============== ======================= ========
    field          shape                   dtype
    ============== ======================= ========
    audio          ``(T, F)``              fp16
    video          ``(n, 3, H, W)``        uint8
    target, clip_id ``()``                 int64
    pooled_a/_v    ``(D,)`` DER "logits"   fp16
    query_a/_v     ``(H, d)`` pooled query fp16
    imp_a / imp_v  ``(Na,)`` / ``(Nv,)``   fp16  importance at insertion
    excl_a/excl_v  ``(Na,)`` / ``(Nv,)``   fp16  exclusion probability at insertion
    ============== ======================= ========

    STELLA+ mode (``store_patches=True``) replaces the clip and the scores by the selected
    patches only: ``patches_a (Ka, p*p)`` fp16, ``idx_a (Ka,)`` int16, ``patches_v (Kv, 3p²)``
    uint8 (raw pixels), ``idx_v (Kv,)`` int16; memory samples are then never re-selected.
    :meth:`bytes_per_sample` reports the real figure.
    """

    def __init__(self, max_size: int = 2000, store_patches: bool = False, device: torch.device | str = "cpu"):
        half = torch.float16
        extras = {
            "pooled_a": half, "pooled_v": half, "query_a": half, "query_v": half,
            "imp_a": half, "imp_v": half, "excl_a": half, "excl_v": half,
            "patches_a": half, "patches_v": torch.uint8, "idx_a": torch.int16, "idx_v": torch.int16,
        }
        super().__init__(max_size, extras, device)
        self.store_patches = store_patches

    def update(self, strategy, **kwargs):  # the plugin calls add() with all fields
        raise NotImplementedError("StellaBuffer is filled by StellaPlugin through add()")
