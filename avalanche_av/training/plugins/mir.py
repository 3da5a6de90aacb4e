"""MIR: maximally interfered retrieval, adapted to self-supervised audio-video pre-training.

MIR (Aljundi et al., NeurIPS 2019, "Online Continual Learning with Maximal Interfered
Retrieval") is one of the STELLA paper's baselines (Sec. 5.1 and Appendix A; Table 5: C = 5).
Instead of replaying a uniform memory batch, it replays the stored samples that the coming update
would hurt most. Each training iteration:

1. draw ``C × batch_size_mem`` distinct candidates from the online reservoir (all stored samples
   when the memory holds fewer);
2. take a *virtual* SGD step on the current batch's SSL loss, ``θ' = θ − η·∇θ ℓ(current; θ)``,
   with the optimizer's current learning rate (:mod:`avalanche_av.training.virtual_step`);
3. score every candidate by its per-sample SSL-loss increase ``ℓ_i(θ') − ℓ_i(θ)`` (MAE
   reconstruction + λ·InfoNCE, ``AVMAEOutput.per_sample_loss``), both forwards on the *same*
   random masks;
4. replay the ``batch_size_mem`` highest-scoring candidates exactly as ER does: appended to the
   minibatch, so the MAE + InfoNCE loss runs on ``[current; memory]``.

The real parameters, their ``.grad`` and the optimizer state are never touched (the virtual step
is computed with ``torch.func.functional_call`` on a parameter dictionary): after the scoring the
model is bit-identical to before it.

Self-supervised adaptation (``docs/baselines_replay.md``): the classification loss of the original
becomes our per-sample SSL loss. Its InfoNCE part couples samples, so the candidates are scored
in one batch and serve as each other's negatives; the same set is used before and after the
virtual step, so the difference measures the effect of the update only.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch.profiler import record_function

from ...models.inputs import prepare_audio, prepare_video
from ..storage_policy import OnlineReservoirBuffer
from ..virtual_step import check_virtual_lr, forward_with, masking_generator, next_seed, virtual_sgd_step
from .memory import OnlineMemoryPlugin

__all__ = ["MIRPlugin"]


class MIRPlugin(OnlineMemoryPlugin):
    """MIR on the shared online memory (task-free reservoir updated every iteration).

    Stores the clip only, as ER (65,552 bytes per sample on ``tiny``).

    Args:
        mem_size, batch_size_mem, storage_policy, memory_device, seed: as
            :class:`~avalanche_av.training.plugins.OnlineMemoryPlugin`. ``seed`` also seeds the
            masking generator of the scoring forwards.
        candidate_factor: ``C``: ``C × batch_size_mem`` candidates are scored each step (paper
            Table 5: 5). ``1`` scores exactly the replayed batch, which is ER.
        virtual_lr: learning rate of the virtual SGD step; ``None`` (default) uses each parameter
            group's current ``lr``. An option beyond the paper, for optimizers whose learning
            rate is far from an SGD step size (Adam's 1e-4 moves an SGD step very little).

    Attributes:
        last_candidate_slots: ``(K,)`` memory slots of the last scored candidates (``None`` when
            the memory held no more than one memory batch, so nothing needed scoring).
        last_scores: ``(K,)`` float32 loss increase of each candidate.
        mem_slots: ``(batch_size_mem,)`` slots replayed this step (highest score first).

    Raises:
        ValueError: a bad ``candidate_factor`` or ``virtual_lr`` (and the base class's checks).
    """

    MEMORY_FIELDS: Dict[str, torch.dtype] = {}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        candidate_factor: int = 5,
        virtual_lr: Optional[float] = None,
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        if isinstance(candidate_factor, bool) or not isinstance(candidate_factor, int) or candidate_factor < 1:
            raise ValueError(f"MIRPlugin: candidate_factor must be an int >= 1, got {candidate_factor!r}")
        self.candidate_factor = candidate_factor
        self.virtual_lr = check_virtual_lr(virtual_lr, "MIRPlugin")
        #: the masking generator's seed source; its state is checkpointed
        self.mask_generator = torch.Generator(device="cpu").manual_seed(seed)
        self.last_candidate_slots: Optional[torch.Tensor] = None
        self.last_scores: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ retrieval
    def draw_memory(self, strategy) -> Optional[Dict[str, torch.Tensor]]:
        """Draw ``C × m`` candidates, score them, keep the ``m`` most interfered (``m`` =
        ``batch_size_mem`` or the current batch size)."""
        if len(self.storage) == 0:
            return None
        m = self.batch_size_mem or strategy.mb_n_current
        if len(self.storage) <= m:
            # Every stored sample is replayed anyway: scoring would change nothing.
            self.last_candidate_slots = self.last_scores = None
            return super().draw_memory(strategy)
        with record_function("mir.candidates"):
            slots, cand = self.storage.sample(self.candidate_factor * m, device=strategy.device)
        with record_function("mir.score"):
            scores = self.interference_scores(strategy, cand)
        top = torch.topk(scores, min(m, scores.shape[0])).indices
        self.last_candidate_slots, self.last_scores = slots, scores.detach()
        self.mem_slots = slots[top.to(slots.device)]
        return {k: v[top.to(v.device)] for k, v in cand.items()}

    def interference_scores(self, strategy, cand: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-candidate SSL-loss increase caused by a virtual SGD step on the current batch.

        Args:
            strategy: the :class:`~avalanche_av.training.AVPretraining` (current rows are the
                first ``mb_n_current`` of ``mb_audio`` / ``mb_video``).
            cand: stored fields of the ``K`` candidates (``audio (K, T, F)`` fp16, ``video
                (K, n, 3, H, W)`` uint8) on the strategy's device.

        Returns:
            ``(K,)`` float32 ``ℓ_i(θ') − ℓ_i(θ)``; the model is unchanged.
        """
        n = strategy.mb_n_current
        model = strategy.model
        seed = next_seed(self.mask_generator)
        theta = virtual_sgd_step(
            model, strategy.optimizer, strategy.mb_audio[:n], strategy.mb_video[:n],
            generator=masking_generator(seed), lr=self.virtual_lr, autocast=strategy.autocast,
        )
        audio, video = prepare_audio(cand["audio"]), prepare_video(cand["video"])
        with torch.no_grad(), strategy.autocast():
            # Same seed -> same masks before and after: the difference is the update's effect only.
            before = forward_with(model, None, audio, video, masking_generator(seed + 1)).per_sample_loss
            after = forward_with(model, theta, audio, video, masking_generator(seed + 1)).per_sample_loss
        return after.float() - before.float()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask_generator": self.mask_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mask_generator.set_state(state["mask_generator"])
