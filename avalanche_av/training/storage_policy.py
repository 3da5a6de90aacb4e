"""Online (task-free) reservoir memories stored as preallocated tensors.

Avalanche's ``ReservoirSamplingBuffer`` updates once per experience and holds dataset
subsets. STELLA and our ER/DER++ baselines need a reservoir updated **every iteration** that
also stores per-sample tensors computed during training (DER "logits", STELLA's pooled
queries, importance scores and exclusion probabilities). :class:`TensorReservoir` is that
store; :class:`OnlineReservoirBuffer` and :class:`StellaBuffer` put it behind Avalanche's
``ExemplarsBuffer`` interface, keeping its contract:

* ``buffer`` is an ``AvalancheDataset`` of what is actually stored (see each class for the
  sample layout); assigning a dataset of clips to it replaces the memory's content.
* ``post_adapt(agent, exp)`` (and the deprecated ``update(strategy)``) is the per-experience
  hook: it offers every clip of ``exp.dataset`` to the reservoir, so the buffer also works
  under Avalanche's own ``ReplayPlugin``. The online plugins
  (:class:`~avalanche_av.training.plugins.OnlineMemoryPlugin`) never call it: they offer the
  current clips after every iteration through :meth:`OnlineReservoirBuffer.add`.
* ``resize(strategy, new_size)`` changes ``max_size`` and the storage together.

Which per-sample fields are stored is declared by the method using the buffer
(its ``MEMORY_FIELDS`` table, see :meth:`OnlineReservoirBuffer.declare_fields`).

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
from torch.utils.data import DataLoader, TensorDataset

from ..models.inputs import to_uint8_frames

__all__ = ["TensorReservoir", "OnlineReservoirBuffer", "StellaBuffer", "reservoir_slots", "CLIP_FIELDS", "PATCH_FIELDS"]


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

    **Writes from another device** (the usual case: samples on the GPU, memory on the host) take
    one packed copy: the kept rows of every field are gathered and cast to their storage dtype on
    the samples' device, packed into one byte buffer and copied with ``non_blocking=True`` into a
    reused staging buffer on the memory's device (pinned when CUDA is present). :meth:`add`
    returns without waiting; the rows are scattered into the store by :meth:`commit`, which every
    read (``len``, :meth:`sample`, :meth:`get`, ``fields``, :meth:`state_dict`...) and the next
    :meth:`add` call first, waiting for the copy's CUDA event. Before, each field was a blocking
    copy: one host sync per field and step; now a step waits at most once, when the memory is
    next read, after the data loading and the hooks in between have overlapped with the device.
    The stored values are the same as per-field copies give (``tests/test_hot_path_syncs.py``).
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
        #: a packed copy in flight (see the class docstring), or None
        self._pending: Optional[dict] = None
        self._staging: Optional[torch.Tensor] = None
        self.fields: Dict[str, torch.Tensor] = {}
        self.size = 0
        self.n_seen = 0
        #: bumped on every write, so views built from the store know when they are stale
        self.version = 0

    @property
    def fields(self) -> Dict[str, torch.Tensor]:
        """``{name: (capacity, ...) tensor}``, the storage (pending writes committed first)."""
        self.commit()
        return self._fields

    @fields.setter
    def fields(self, value: Dict[str, torch.Tensor]) -> None:
        self._fields = value

    def __len__(self) -> int:
        self.commit()
        return self.size

    def _allocate(self, batch: Dict[str, torch.Tensor]) -> None:
        pin = self.device.type == "cpu" and torch.cuda.is_available()
        for name, t in batch.items():
            dtype = self.dtypes.get(name, t.dtype)
            buf = torch.zeros((self.capacity, *t.shape[1:]), dtype=dtype, device=self.device)
            self.fields[name] = buf.pin_memory() if pin else buf

    def add(self, batch: Dict[str, torch.Tensor], generator: Optional[torch.Generator] = None,
            keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Offer ``B`` new samples (every field ``(B, ...)``); returns the slots drawn ``(K,)``.

        Args:
            batch: the fields, all ``(B, ...)``.
            generator: the reservoir's CPU generator.
            keep: optional ``()`` bool tensor on the samples' device: ``False`` drops the whole
                offer as if it was never made (nothing stored, ``n_seen`` and the generator
                unchanged). With a packed copy it travels in the copy and is read on the host at
                :meth:`commit` (no sync); otherwise it is read here (free on CPU).
        """
        self.commit()
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
        packed = any(t.device != self._fields[name].device for name, t in batch.items())
        if keep is not None and not packed and not bool(keep):
            return torch.empty(0, dtype=torch.long)  # a dropped step: nothing stored, nothing counted
        rollback = None
        if keep is not None:
            rollback = (self.n_seen, self.size, generator, None if generator is None else generator.get_state())
        pos, slots = reservoir_slots(self.n_seen, b, self.capacity, generator)
        if packed:
            self._add_packed(batch, pos, slots, keep, rollback)
        elif pos.numel():
            for name, t in batch.items():
                buf = self._fields[name]
                src = t.detach()[pos.to(t.device)].to(device=buf.device, dtype=buf.dtype)
                buf[slots.to(buf.device)] = src
        self.n_seen += b
        self.size = min(self.capacity, self.n_seen)
        self.version += 1
        return slots

    def _add_packed(self, batch: Dict[str, torch.Tensor], pos: torch.Tensor, slots: torch.Tensor,
                    keep: Optional[torch.Tensor], rollback: Optional[tuple]) -> None:
        """Gather, cast and pack the kept rows on the samples' device, then one non-blocking copy."""
        src_dev = next(iter(batch.values())).device
        idx = pos.to(src_dev, non_blocking=True)
        parts, layout, offset = [], [], 0
        # widest storage dtype first: every field's offset is then a multiple of its element size,
        # so the host side can view its bytes as that dtype
        for name, t in sorted(batch.items(), key=lambda kv: -self._fields[kv[0]].element_size()):
            buf = self._fields[name]
            rows = t.detach()[idx].to(buf.dtype).reshape(-1)  # cast where the data is: fewer bytes to move
            nbytes = rows.numel() * rows.element_size()
            parts.append(rows.view(torch.uint8))
            layout.append((name, offset, nbytes, buf.dtype, tuple(buf.shape[1:])))
            offset += nbytes
        keep_at = None
        if keep is not None:
            keep_at = offset
            parts.append(keep.detach().reshape(1).to(torch.uint8))
            offset += 1
        if offset == 0:
            return
        if self._staging is None or self._staging.numel() < offset:
            pin = self.device.type == "cpu" and torch.cuda.is_available()
            self._staging = torch.empty(max(offset, 2 * (0 if self._staging is None else self._staging.numel())),
                                        dtype=torch.uint8, device=self.device, pin_memory=pin)
        host = self._staging[:offset]
        host.copy_(torch.cat(parts), non_blocking=True)
        event = None
        if src_dev.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending = {"event": event, "host": host, "layout": layout, "slots": slots,
                         "keep_at": keep_at, "rollback": rollback}

    def commit(self) -> None:
        """Finish a packed write in flight: wait for its copy, then scatter the rows into the store
        (or, when its ``keep`` flag is False, undo the offer: ``n_seen``, ``size`` and the
        generator go back to what they were). A no-op when nothing is pending."""
        p, self._pending = self._pending, None
        if p is None:
            return
        if p["event"] is not None:
            p["event"].synchronize()
        host = p["host"]
        if p["keep_at"] is not None and not bool(host[p["keep_at"]]):  # host memory: no device sync
            self.n_seen, self.size, generator, gen_state = p["rollback"]
            if generator is not None:
                generator.set_state(gen_state)
            self.version += 1
            return
        slots = p["slots"].to(self.device)
        for name, off, nbytes, dtype, shape in p["layout"]:
            self._fields[name][slots] = host[off:off + nbytes].view(dtype).view(-1, *shape)
        self.version += 1

    def clear(self) -> None:
        """Forget every stored sample and the stream count (field allocations are kept)."""
        self.commit()
        self.size = 0
        self.n_seen = 0
        self.version += 1

    def sample(
        self, n: int, generator: Optional[torch.Generator] = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Draw ``min(n, len(self))`` distinct samples uniformly; returns ``(slots, fields)``.

        Fields come back with ``device`` (non-blocking copies from pinned memory).
        """
        self.commit()
        if self.size == 0:
            raise ValueError("cannot sample from an empty memory")
        m = min(n, self.size)
        slots = torch.randperm(self.size, generator=generator)[:m]
        return slots, self.get(slots, device)

    def get(self, slots: torch.Tensor, device: torch.device | str | None = None) -> Dict[str, torch.Tensor]:
        """Fields of the given slots ``(K,)`` as ``(K, ...)`` tensors on ``device``."""
        self.commit()
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
        self.version += 1

    def resize(self, new_capacity: int, generator: Optional[torch.Generator] = None) -> None:
        """Change the capacity. Shrinking keeps a uniform random subset, so the kept samples are
        still a uniform sample of the stream; growing keeps everything and refills from new data."""
        if not isinstance(new_capacity, int) or new_capacity < 1:
            raise ValueError(f"memory capacity must be an int >= 1, got {new_capacity!r}")
        self.commit()
        keep = torch.arange(self.size)
        if self.size > new_capacity:
            keep = torch.randperm(self.size, generator=generator)[:new_capacity].sort().values
        for name, buf in list(self.fields.items()):
            new = torch.zeros((new_capacity, *buf.shape[1:]), dtype=buf.dtype, device=buf.device)
            new[: keep.numel()] = buf[keep.to(buf.device)]
            self.fields[name] = new
        self.capacity = new_capacity
        self.size = int(keep.numel())
        self.version += 1
        # n_seen is kept: later insertions still happen with probability capacity / n_seen.

    def bytes_per_sample(self) -> int:
        """Bytes one stored sample takes over all fields."""
        return int(sum(buf[0].numel() * buf.element_size() for buf in self.fields.values()))

    def state_dict(self) -> dict:
        self.commit()
        return {
            "capacity": self.capacity,
            "size": self.size,
            "n_seen": self.n_seen,
            "fields": {k: v[: self.size].clone() for k, v in self.fields.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.commit()
        self.capacity = int(state["capacity"])
        self.size = int(state["size"])
        self.n_seen = int(state["n_seen"])
        self.fields = {}
        for name, t in state["fields"].items():
            buf = torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
            buf[: self.size] = t.to(self.device)
            self.fields[name] = buf
        self.version += 1


#: The clip as every replay memory stores it: name -> storage dtype. Per sample: ``audio (T, F)``
#: fbank in fp16 (values normalised to about ``[-2, 4]``: relative error 5e-4), ``video
#: (n, 3, H, W)`` uint8 RGB, ``target ()`` and ``clip_id ()`` int64. Tiny preset: 128·64·2 +
#: 4·3·64·64 + 16 = 65,552 bytes; base: 1024·128·2 + 4·3·224·224 + 16 = 864,272 bytes.
CLIP_FIELDS: Dict[str, torch.dtype] = {
    "audio": torch.float16,
    "video": torch.uint8,
    "target": torch.int64,
    "clip_id": torch.int64,
}

#: Fields of a STELLA+ memory sample that replace the clip: the selected patches, their original
#: indices, and the clip's identity.
PATCH_FIELDS: Dict[str, torch.dtype] = {
    "patches_a": torch.float16,
    "idx_a": torch.int16,
    "patches_v": torch.uint8,
    "idx_v": torch.int16,
    "target": torch.int64,
    "clip_id": torch.int64,
}


class OnlineReservoirBuffer(ExemplarsBuffer):
    """Avalanche ``ExemplarsBuffer`` backed by a :class:`TensorReservoir` updated every iteration.

    It stores the clip (:data:`CLIP_FIELDS`) plus whatever per-sample fields the method using it
    declares (:meth:`declare_fields`). Float frames offered in ``[0, 1]`` are quantised to uint8,
    never cast (a cast would store zeros).

    ``buffer`` (the Avalanche view) is an ``AvalancheDataset`` whose samples are
    ``(audio (T, F) fp16, video (n, 3, H, W) uint8, target, clip_id, task_label)``, the same layout
    as our benchmark streams, so Avalanche's ``ReplayPlugin`` can concatenate it to an experience.
    The view shares the stored tensors (no copy) and is rebuilt only after the memory changed.

    Args:
        max_size: memory size in clips (``>= 1``).
        extra_dtypes: storage dtype of extra fields (e.g. ``{"pooled_a": torch.float16}``); the
            same as calling :meth:`declare_fields` after construction.
        device: memory device (CPU by default; pinned when CUDA is present).
    """

    def __init__(
        self,
        max_size: int,
        extra_dtypes: Optional[Dict[str, torch.dtype]] = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__(max_size)
        self.store = TensorReservoir(max_size, dict(self.base_fields()), device)
        self.generator = torch.Generator().manual_seed(0)
        self._view = None
        self._view_version = -1
        if extra_dtypes:
            self.declare_fields(extra_dtypes)

    # ------------------------------------------------------------------ layout
    def base_fields(self) -> Dict[str, torch.dtype]:
        """Fields every sample of this buffer has, whatever the method (the clip)."""
        return CLIP_FIELDS

    def declare_fields(self, fields: Dict[str, torch.dtype]) -> None:
        """Declare the storage dtype of the fields a method will :meth:`add`.

        Raises:
            ValueError: a field is already declared with another dtype (two methods disagree
                on what the memory holds).
        """
        for name, dtype in fields.items():
            old = self.store.dtypes.get(name)
            if old is not None and old != dtype:
                raise ValueError(f"memory field {name!r} is already stored as {old}, cannot store it as {dtype}")
            self.store.dtypes[name] = dtype

    @property
    def field_dtypes(self) -> Dict[str, torch.dtype]:
        """Storage dtype per declared field."""
        return dict(self.store.dtypes)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def n_seen(self) -> int:
        """How many stream items have been offered to the reservoir."""
        self.store.commit()
        return self.store.n_seen

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    # ------------------------------------------------------------------ the Avalanche view
    def _view_tensors(self, f: Dict[str, torch.Tensor]) -> list:
        return [f["audio"], f["video"], f["target"], f["clip_id"]]

    @property
    def buffer(self):
        if self._view is not None and self._view_version == self.store.version:
            return self._view
        n = len(self.store)
        if n == 0 or not self.store.fields:
            view = make_avalanche_dataset(TensorDataset(torch.empty(0)))
        else:
            f = {k: v[:n] for k, v in self.store.fields.items()}
            view = make_avalanche_dataset(
                TensorDataset(*self._view_tensors(f)),
                data_attributes=[
                    DataAttribute(f["target"].tolist(), "targets"),
                    DataAttribute([0] * n, "targets_task_labels", use_in_getitem=True),
                ],
            )
        self._view, self._view_version = view, self.store.version
        return view

    @buffer.setter
    def buffer(self, new_buffer) -> None:
        """Replace the memory with the clips of ``new_buffer``: a dataset whose samples start with
        ``(audio, video, target, clip_id)``. More clips than ``max_size`` are reservoir-sampled."""
        extra = set(self.store.dtypes) - set(self.base_fields())
        if extra:
            raise TypeError(
                f"{type(self).__name__} also stores {sorted(extra)}, computed during training; a dataset "
                "of clips cannot provide them. Assign clips only to a buffer without extra fields."
            )
        self.store.clear()
        self.add_dataset(new_buffer)

    # ------------------------------------------------------------------ writing
    def _compact(self, fields: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if "video" in fields:
            fields = {**fields, "video": to_uint8_frames(fields["video"])}
        return fields

    def add(self, fields: Dict[str, torch.Tensor], keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Offer a batch of new stream items (``(B, ...)`` per field); returns the written slots.

        ``keep``: an optional ``()`` bool tensor; ``False`` drops the offer (see
        :meth:`TensorReservoir.add`: how a step whose loss is found non-finite on the device
        stores nothing without a host sync).

        Raises:
            ValueError: a field was not declared, or a declared one is missing.
        """
        declared = set(self.store.dtypes)
        if set(fields) != declared:
            raise ValueError(
                f"{type(self).__name__}.add: got fields {sorted(fields)}, the memory stores {sorted(declared)}"
            )
        return self.store.add(self._compact(fields), self.generator, keep)

    def add_dataset(self, dataset, batch_size: int = 256) -> None:
        """Offer every clip of ``dataset`` (samples ``(audio, video, target, clip_id, ...)``)."""
        if len(dataset) == 0:
            return
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            collate_fn=getattr(dataset, "collate_fn", None))
        for batch in loader:
            audio, video, target, clip_id = batch[:4]
            self.add({"audio": audio, "video": video, "target": target, "clip_id": clip_id})

    def post_adapt(self, agent_state, exp) -> None:
        """Per-experience update (Avalanche's contract): offer every clip of ``exp.dataset``.

        Used when this buffer serves Avalanche's ``ReplayPlugin``; our online plugins add clips
        every iteration instead and never call it.
        """
        self.add_dataset(exp.dataset)

    def update_fields(self, slots: torch.Tensor, values: Dict[str, torch.Tensor]) -> None:
        """Overwrite fields of stored samples in place (e.g. GMED's edited inputs)."""
        self.store.update(slots, self._compact(values))

    # ------------------------------------------------------------------ reading
    def sample(self, n: int, device=None) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Draw ``min(n, len(self))`` distinct stored samples: ``(slots (m,), fields)``."""
        return self.store.sample(n, self.generator, device)

    def resize(self, strategy, new_size: int) -> None:
        """Change ``max_size`` and the storage capacity together (a uniform subset is kept)."""
        self.store.resize(new_size, self.generator)
        self.max_size = new_size

    def bytes_per_sample(self) -> int:
        """Bytes one stored sample takes over all fields (0 before the first write)."""
        return self.store.bytes_per_sample()

    def state_dict(self) -> dict:
        return {"store": self.store.state_dict(), "generator": self.generator.get_state(), "max_size": self.max_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: the saved memory holds other fields than this buffer stores (e.g. a
                STELLA memory loaded into a STELLA+ buffer).
        """
        saved = set(state["store"]["fields"])
        if saved and saved != set(self.store.dtypes):
            raise ValueError(
                f"{type(self).__name__}: the saved memory holds fields {sorted(saved)}, this buffer stores "
                f"{sorted(self.store.dtypes)}; it was saved by a different method or mode"
            )
        self.store.load_state_dict(state["store"])
        self.generator.set_state(state["generator"])
        self.max_size = int(state["max_size"])


class StellaBuffer(OnlineReservoirBuffer):
    """STELLA's rehearsal memory (paper Sec. 3.3): a reservoir updated every iteration.

    STELLA mode (``store_patches=False``) stores the clip plus the fields of
    :attr:`avalanche_av.training.plugins.StellaPlugin.MEMORY_FIELDS` (DER "logits", pooled
    queries, importance and exclusion probabilities at insertion). STELLA+ mode
    (``store_patches=True``) stores only the selected patches (:data:`PATCH_FIELDS`) plus the
    embeddings and queries; memory samples are then never re-selected.

    ``buffer`` samples:

    * STELLA: ``(audio, video, target, clip_id, task_label)``, as :class:`OnlineReservoirBuffer`;
    * STELLA+: ``(patches_a (Ka, p²) fp16, idx_a (Ka,) int16, patches_v (Kv, 3p²) uint8 raw
      pixels, idx_v (Kv,) int16, target, clip_id, task_label)``, the patch form that
      ``AVMAE.forward_patches`` takes (after ``normalize_video_patches`` and ``.long()``).

    Only :class:`~avalanche_av.training.plugins.StellaPlugin` can fill it: the scores need the
    AVM. Under Avalanche's ``ReplayPlugin`` its per-experience update therefore raises a
    ``TypeError`` (documented in ``docs/stella.md``); its ``buffer`` view can still be read there.
    """

    def __init__(self, max_size: int = 2000, store_patches: bool = False, device: torch.device | str = "cpu"):
        self.store_patches = store_patches
        super().__init__(max_size, None, device)

    def base_fields(self) -> Dict[str, torch.dtype]:
        return PATCH_FIELDS if self.store_patches else CLIP_FIELDS

    def _view_tensors(self, f: Dict[str, torch.Tensor]) -> list:
        if self.store_patches:
            return [f["patches_a"], f["idx_a"], f["patches_v"], f["idx_v"], f["target"], f["clip_id"]]
        return super()._view_tensors(f)

    def post_adapt(self, agent_state, exp) -> None:
        raise TypeError(
            "StellaBuffer stores AVM scores (importance, queries, exclusion probabilities) that only "
            "StellaPlugin computes, so it cannot be filled per experience by Avalanche's ReplayPlugin. "
            "Use StellaPlugin(storage_policy=StellaBuffer(...)), or OnlineReservoirBuffer with ReplayPlugin."
        )

    @OnlineReservoirBuffer.buffer.setter
    def buffer(self, new_buffer) -> None:
        raise TypeError("StellaBuffer is filled by StellaPlugin (its scores need the AVM); it cannot be assigned")
