"""Avalanche's multi-dataset loaders with distributed samplers that follow the run's seed.

Under torchrun, Avalanche's ``ReplayDataLoader`` and ``GroupBalancedInfiniteDataLoader`` split
each of their datasets between the ranks with a ``DistributedSampler`` made with its defaults:
seed 0, epoch 0. The ranks' parts are then disjoint, as they should be, but the same in every
run whatever ``--seed`` says, and (``ReplayDataLoader``, made anew each epoch) the same every
epoch. The two subclasses here change only the samplers' seed and epoch; in a single process
(no ``DistributedSampler``) they are Avalanche's loaders unchanged.
"""
from __future__ import annotations

from typing import Any, List

from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader, ReplayDataLoader
from torch.utils.data import DistributedSampler

__all__ = ["seed_distributed_samplers", "EpochSeededReplayDataLoader", "SeededGroupBalancedInfiniteDataLoader"]


def seed_distributed_samplers(batch_samplers: List[Any], seed: int, epoch: int = 0) -> List[Any]:
    """Give the ``DistributedSampler`` inside each batch sampler ``seed`` and ``epoch``.

    Args:
        batch_samplers: what Avalanche's ``_create_samplers`` returns (one ``BatchSampler`` per
            dataset); others are left as they are.
        seed: the samplers' seed, the same on every rank (the ranks' parts stay disjoint).
        epoch: the samplers' epoch (each epoch permutes anew).

    Returns:
        ``batch_samplers``, changed in place.
    """
    for batch_sampler in batch_samplers:
        inner = getattr(batch_sampler, "sampler", None)
        if isinstance(inner, DistributedSampler):
            inner.seed = int(seed)
            inner.set_epoch(int(epoch))
    return batch_samplers


class EpochSeededReplayDataLoader(ReplayDataLoader):
    """Avalanche's ``ReplayDataLoader`` whose distributed samplers follow a seed and the epoch.

    Under torchrun each of its datasets (the experience, the memory) is split by a
    ``DistributedSampler``; Avalanche makes them anew each epoch with seed 0 and epoch 0. Here
    they get ``seed`` and the epoch of :meth:`set_epoch` (the template calls it before every
    epoch), so the ranks' parts change every epoch and follow the run's seed. In a single
    process nothing changes.

    Args:
        seed: the samplers' seed (the same on every rank).
        args, kwargs: as ``ReplayDataLoader``.
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        self.seed = int(seed)
        self.epoch = 0
        super().__init__(*args, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _create_samplers(self, datasets, batch_sizes, distributed_sampling, loader_kwargs):
        samplers = super()._create_samplers(datasets, batch_sizes, distributed_sampling, loader_kwargs)
        return seed_distributed_samplers(samplers, self.seed, self.epoch)


class SeededGroupBalancedInfiniteDataLoader(GroupBalancedInfiniteDataLoader):
    """Avalanche's ``GroupBalancedInfiniteDataLoader`` whose distributed samplers start from ``seed``.

    A-GEM draws its memory samples from it. Under torchrun Avalanche's samplers start at seed 0,
    epoch 0, and move to the next epoch at every pass over a group (so each pass splits the group
    anew between the ranks); here they start at ``seed``, so the sequence follows the run. In a
    single process nothing changes.

    Args:
        seed: the samplers' seed (the same on every rank).
        args, kwargs: as ``GroupBalancedInfiniteDataLoader``.
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        self.seed = int(seed)
        super().__init__(*args, **kwargs)

    def _create_samplers(self, datasets, batch_sizes, distributed_sampling, loader_kwargs):
        samplers = super()._create_samplers(datasets, batch_sizes, distributed_sampling, loader_kwargs)
        return seed_distributed_samplers(samplers, self.seed)
