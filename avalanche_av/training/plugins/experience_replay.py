"""Avalanche's per-experience ``ReplayPlugin`` with a checkpoint state (strategy ``er_exp``).

Avalanche's ``ReplayPlugin`` and ``ReservoirSamplingBuffer`` keep their memory as a subset of
the experiences' datasets and have no ``state_dict``: a run resumed from a checkpoint would
start the next experience with an empty memory. These two thin subclasses change only that.

* :class:`ResumableReservoirSamplingBuffer` keeps, next to Avalanche's buffer, where each stored
  clip came from: ``origin (M, 2)`` int64 rows ``[experience id, index in that experience's
  dataset]``, in buffer order. Its update is the reservoir rule of the parent class: one uniform
  key per new clip (``torch.rand``, one call, as the parent draws it), keep the ``max_size``
  largest keys among the new and stored clips, in descending key order, so a run without a
  resume is unchanged.
* Under torchrun the memory is global (``memory_scope="global"`` in the registry): every rank
  offers the whole experience to the reservoir with rank 0's keys (one broadcast per
  experience), so every rank holds the same ``mem_size`` clips, and Avalanche's
  ``ReplayDataLoader`` gives each rank a disjoint part of the memory (and of the experience)
  per epoch. A checkpoint therefore resumes on any number of ranks. Avalanche's loader makes
  its ``DistributedSampler`` objects with seed 0 at epoch 0 every epoch (the same split every
  epoch and every run); :class:`EpochSeededReplayDataLoader` seeds them with the run's shard
  seed and the epoch instead, as the other methods' loaders are. In a single process it is
  Avalanche's loader unchanged.
* :class:`ResumableReplayPlugin` saves ``origin`` and the keys (a few hundred bytes, no clip data),
  and on resume rebuilds the same buffer, in the same order, from the experiences of the stream
  (``experience.origin_stream``) before the first replayed experience. Replay sampling then
  draws the same clips as the uninterrupted run.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer

from ..distributed import is_distributed
from .seeded_loaders import EpochSeededReplayDataLoader

__all__ = ["ResumableReservoirSamplingBuffer", "ResumableReplayPlugin"]


class ResumableReservoirSamplingBuffer(ReservoirSamplingBuffer):
    """``ReservoirSamplingBuffer`` that records each stored clip's origin.

    Attributes:
        origin: ``(M, 2)`` int64, ``[experience id, index in its dataset]`` per stored clip.
    """

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self.origin = torch.zeros(0, 2, dtype=torch.int64)

    def post_adapt(self, agent, exp) -> None:
        self._update(exp.dataset, int(exp.current_experience))

    def update_from_dataset(self, new_data: AvalancheDataset, experience_id: int = -1) -> None:
        """Offer ``new_data`` to the reservoir; ``experience_id`` is recorded as its origin
        (``-1``: not from a stream experience; such clips cannot be rebuilt on resume)."""
        self._update(new_data, experience_id)

    def _update(self, new_data: AvalancheDataset, experience_id: int) -> None:
        n = len(new_data)
        fresh = torch.rand(n)
        if is_distributed():  # the same clips on every rank: rank 0's keys
            dist.broadcast(fresh, src=0)
        keys = torch.cat([fresh, self._buffer_weights])
        origin = torch.cat([torch.stack([torch.full((n,), experience_id, dtype=torch.int64),
                                         torch.arange(n, dtype=torch.int64)], 1), self.origin])
        keys, order = keys.sort(descending=True)
        keep = order[: self.max_size]
        self.buffer = new_data.concat(self.buffer).subset(keep)
        self._buffer_weights = keys[: self.max_size]
        self.origin = origin[keep]

    def resize(self, strategy: Any, new_size: int) -> None:
        super().resize(strategy, new_size)
        self.origin = self.origin[: self.max_size]

    def state_dict(self) -> dict:
        return {"max_size": int(self.max_size), "origin": self.origin.clone(),
                "weights": self._buffer_weights.clone()}

    def rebuild(self, stream, state: dict) -> None:
        """Restore the buffer saved in ``state`` from ``stream`` (the experiences' datasets)."""
        origin = state["origin"].long()
        if (origin[:, 0] < 0).any():
            raise ValueError(f"{type(self).__name__}: the saved memory holds clips that came from outside the "
                             "stream (update_from_dataset without an experience id); it cannot be rebuilt")
        self.max_size = int(state["max_size"])
        self._buffer_weights = state["weights"].clone()
        self.origin = origin.clone()
        if not len(origin):
            self.buffer = AvalancheDataset([])
            return
        ids = sorted({int(e) for e in origin[:, 0]})
        offsets, full, total = {}, None, 0
        for e in ids:
            data = stream[e].dataset
            offsets[e] = total
            total += len(data)
            full = data if full is None else full.concat(data)
        self.buffer = full.subset([offsets[int(e)] + int(i) for e, i in origin.tolist()])


class ResumableReplayPlugin(ReplayPlugin):
    """Avalanche's ``ReplayPlugin`` whose memory survives a checkpoint and ``--resume``.

    Training is Avalanche's own (``ReplayDataLoader``, ``batch_size_mem`` memory clips per step,
    the memory updated after each experience). The storage policy must be a
    :class:`ResumableReservoirSamplingBuffer` (the default with ``mem_size``).
    """

    #: checked for torchrun: a global memory, the same on every rank (see the module docstring)
    supports_distributed = True

    def __init__(self, mem_size: int = 200, batch_size: Optional[int] = None, batch_size_mem: Optional[int] = None,
                 task_balanced_dataloader: bool = False,
                 storage_policy: Optional[ResumableReservoirSamplingBuffer] = None) -> None:
        storage_policy = storage_policy if storage_policy is not None else ResumableReservoirSamplingBuffer(mem_size)
        if not isinstance(storage_policy, ResumableReservoirSamplingBuffer):
            raise TypeError(f"{type(self).__name__} needs a ResumableReservoirSamplingBuffer, got "
                            f"{type(storage_policy).__name__}; use Avalanche's ReplayPlugin for other policies")
        super().__init__(mem_size=mem_size, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         task_balanced_dataloader=task_balanced_dataloader, storage_policy=storage_policy)
        self._pending: Optional[dict] = None

    def state_dict(self) -> dict:
        return self._pending if self._pending is not None else self.storage_policy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        # The datasets are reachable only through an experience: rebuilt in before_training_exp.
        for key in ("max_size", "origin", "weights"):
            if key not in state:
                raise KeyError(key)
        self._pending = state

    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True,
                            drop_last: bool = False, **kwargs):
        if self._pending is not None:
            stream = getattr(strategy.experience, "origin_stream", None)
            if stream is None and len(self._pending["origin"]):
                raise ValueError(f"{type(self).__name__}: cannot rebuild the memory: the experience has no "
                                 "origin_stream")
            self.storage_policy.rebuild(stream, self._pending)
            self._pending = None
        if len(self.storage_policy.buffer) == 0:
            return  # nothing to replay yet: the template's own loader
        # ReplayPlugin's loader, made with EpochSeededReplayDataLoader (the same in one process)
        passed = {k: kwargs[k] for k in ("ffcv_args", "persistent_workers") if k in kwargs}
        strategy.dataloader = EpochSeededReplayDataLoader(
            strategy.adapted_dataset,
            self.storage_policy.buffer,
            oversample_small_tasks=True,
            batch_size=self.batch_size if self.batch_size is not None else strategy.train_mb_size,
            batch_size_mem=self.batch_size_mem if self.batch_size_mem is not None else strategy.train_mb_size,
            task_balanced_dataloader=self.task_balanced_dataloader,
            num_workers=num_workers,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=getattr(strategy, "train_shard_seed", 0),
            **passed,
        )
