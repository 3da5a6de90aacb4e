"""Avalanche's A-GEM on self-supervised audio-video pre-training.

A-GEM (Chaudhry et al., 2019) keeps an episodic memory of past experiences. Before each step it
computes the gradient ``g_ref`` of the loss on a memory sample; after the backward, if the
current gradient ``g`` conflicts with it (``g · g_ref < 0``) it is projected to
``g - (g · g_ref / g_ref · g_ref) g_ref``, so the step does not increase the memory loss to first
order. See ``docs/baselines_avalanche.md``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from avalanche.training.plugins import AGEMPlugin

from ..template import require_av_template
from .clip_batches import clip_fields
from .seeded_loaders import SeededGroupBalancedInfiniteDataLoader

__all__ = ["SSLAGEMPlugin"]


class SSLAGEMPlugin(AGEMPlugin):
    """Avalanche's A-GEM whose memory loss is our SSL loss.

    Kept from Avalanche: the per-experience memory (after each experience, a random subset of
    ``patterns_per_experience`` of its clips, held as a subset of the experience's dataset), the
    sampling (``GroupBalancedInfiniteDataLoader``: ``sample_size // n_experiences`` clips from
    each past experience) and the projection in ``after_backward``.

    Adapted parts.

    * :meth:`before_training_iteration`: the memory sample arrives in our batch layout
      ``[audio, video, target, clip_id, task]``; its fields are named
      (:func:`~avalanche_av.training.plugins.clip_batches.clip_fields`) and the reference gradient
      is that of the model's SSL loss ``ℓ_r + λ·ℓ_c`` on the memory clips (labels and task labels
      unused). A reference gradient that is not finite is replaced by zeros, so that step is not
      projected. A memory sample needs at least two clips (the contrastive term needs a negative).
    * :meth:`update_memory` draws the subset with the plugin's own seeded generator and records the
      chosen indices per experience (``memory_indices``), so a checkpoint can rebuild the memory
      from the stream (``state_dict``).
    * The memory size may be given as a total: with ``mem_size`` (the registry passes the run's
      ``--mem-size``) and no ``patterns_per_experience``, each experience keeps
      ``mem_size // n_experiences`` clips, ``n_experiences`` being the length of the training
      stream the experience comes from, so the memory ends at ``mem_size`` clips like the other
      replay methods'.

    Under torchrun the memory is global (``memory_scope="global"`` in the registry): every rank
    draws the same subset of the whole experience (the generator is seeded alike on every rank)
    and Avalanche's distributed sampler gives each rank a disjoint part of it per memory
    sample (:class:`~avalanche_av.training.plugins.seeded_loaders.SeededGroupBalancedInfiniteDataLoader`:
    the samplers start from ``seed`` and the number of experiences in memory, not from
    Avalanche's fixed seed 0, so the split follows the run); the projection uses the rank's own
    ``g_ref`` before the gradients are averaged. A checkpoint therefore resumes on any number of
    ranks.

    Args:
        patterns_per_experience: clips kept per experience (``>= 1``); ``None`` derives it from
            ``mem_size``.
        sample_size: clips in a memory sample (``>= 2``); ``None`` uses ``batch_size_mem``.
            Avalanche gives no defaults, nor does the paper (no A-GEM row in its Table 5).
        mem_size: total memory in clips (see above).
        batch_size_mem: the default ``sample_size`` (the registry passes the current batch size).
        seed: seed of the memory subset draws and, under torchrun, of the memory sampler's split
            between the ranks. ``avalanche-av run`` passes the run's ``--seed`` unless the option
            is set (see :func:`~avalanche_av.training.make_plugins`).

    Raises:
        ValueError: an option out of range, or neither ``patterns_per_experience`` nor
            ``mem_size`` given.
    """

    #: checked for torchrun: a global memory, the same on every rank
    supports_distributed = True

    def __init__(
        self,
        patterns_per_experience: Optional[int] = None,
        sample_size: Optional[int] = None,
        mem_size: Optional[int] = None,
        batch_size_mem: Optional[int] = None,
        seed: int = 0,
    ):
        who = type(self).__name__

        def check_int(value, option: str, low: int) -> None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{who}: {option} must be an int >= {low}, got {value!r}")

        check_int(patterns_per_experience, "patterns_per_experience", 1)
        check_int(mem_size, "mem_size", 1)
        check_int(sample_size, "sample_size", 2)
        check_int(batch_size_mem, "batch_size_mem", 2)
        if patterns_per_experience is None and mem_size is None:
            raise ValueError(f"{who} needs patterns_per_experience or mem_size (>= 1)")
        sample = sample_size if sample_size is not None else batch_size_mem
        if sample is None:
            raise ValueError(f"{who} needs sample_size (or batch_size_mem), an int >= 2")
        super().__init__(patterns_per_experience or 0, sample)
        self.fixed_patterns = patterns_per_experience
        self.total_mem_size = mem_size
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        #: per memorised experience: (its index in the origin stream, the dataset indices kept)
        self.memory_indices: List[tuple] = []
        self._pending_state: Optional[dict] = None
        #: the last reference gradient's dot product with the step's gradient, before projection
        self.last_dot: Optional[float] = None

    # ------------------------------------------------------------------ hooks
    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        super().before_training(strategy, **kwargs)

    def before_training_exp(self, strategy, **kwargs):
        # A resumed run rebuilds the memory from the stream of the experience it now trains on.
        if self._pending_state is not None:
            self._rebuild(strategy.experience, self._pending_state)
            self._pending_state = None
        super().before_training_exp(strategy, **kwargs)

    def before_training_iteration(self, strategy, **kwargs):
        """Reference gradient ``g_ref``: the SSL loss's gradient on a memory sample, flattened."""
        if len(self.buffers) == 0:
            return
        model = strategy.model
        model.train()
        strategy.optimizer.zero_grad()
        mem = clip_fields(self.sample_from_memory(), strategy.device, who=type(self).__name__)
        model(mem["audio"], mem["video"]).loss.backward()
        ref = torch.cat([
            p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=strategy.device)
            for p in model.parameters()
        ])
        if not torch.isfinite(ref).all():
            ref = torch.zeros_like(ref)
        self.reference_gradients = ref
        strategy.optimizer.zero_grad()

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        if len(self.buffers) > 0 and self.reference_gradients.numel():
            g = torch.cat([
                p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=strategy.device)
                for p in strategy.model.parameters()
            ])
            self.last_dot = float(torch.dot(g, self.reference_gradients))
        super().after_backward(strategy, **kwargs)

    # ------------------------------------------------------------------ memory
    def _per_experience(self, dataset, experience=None) -> int:
        if self.fixed_patterns is not None:
            return self.fixed_patterns
        stream = getattr(experience, "origin_stream", None)
        n_exp = len(stream) if stream is not None else 1
        return max(1, self.total_mem_size // max(n_exp, 1))

    def after_training_exp(self, strategy, **kwargs):
        self.update_memory(strategy.experience.dataset, experience=strategy.experience, **kwargs)

    @torch.no_grad()
    def update_memory(self, dataset, num_workers=0, experience=None, **kwargs):
        """Keep a random subset of ``dataset`` (our seeded draw) and rebuild the memory sampler."""
        k = self._per_experience(dataset, experience)
        n = len(dataset)
        idx = torch.randperm(n, generator=self.generator)[: min(k, n)].sort().values.tolist()
        exp_id = int(getattr(experience, "current_experience", len(self.memory_indices)))
        self.memory_indices.append((exp_id, idx))
        self.buffers.append(dataset.subset(idx))
        self._make_loader(num_workers)

    def _make_loader(self, num_workers: int = 0) -> None:
        per_group = self.sample_size // len(self.buffers)
        if per_group < 1:
            raise ValueError(
                f"{type(self).__name__}: sample_size={self.sample_size} is smaller than the {len(self.buffers)} "
                "experiences in memory; raise sample_size"
            )
        # A new sampler seed per memory rebuild: each experience's memory is split anew.
        self.buffer_dataloader = SeededGroupBalancedInfiniteDataLoader(
            self.buffers, batch_size=per_group, num_workers=num_workers, pin_memory=False,
            persistent_workers=num_workers > 0, seed=self.seed * 100_003 + len(self.buffers),
        )
        self.buffer_dliter = iter(self.buffer_dataloader)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        if self._pending_state is not None:
            return self._pending_state
        return {
            "memory_indices": [[e, list(i)] for e, i in self.memory_indices],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffers, self.memory_indices = [], []
        self.generator.set_state(state["generator"])
        self._pending_state = state

    def _rebuild(self, experience, state: dict) -> None:
        stream = getattr(experience, "origin_stream", None)
        if state["memory_indices"] and stream is None:
            raise ValueError(f"{type(self).__name__}: cannot rebuild the memory: the experience has no origin_stream")
        self.buffers, self.memory_indices = [], []
        for exp_id, idx in state["memory_indices"]:
            self.memory_indices.append((int(exp_id), list(idx)))
            self.buffers.append(stream[int(exp_id)].dataset.subset(list(idx)))
        if self.buffers:
            self._make_loader()
