"""CLS-ER (Arani et al., ICLR 2022) adapted to self-supervised audio-video pre-training.

CLS-ER ("Learning Fast, Learning Slow") pairs the working model with two EMA copies inspired
by complementary learning systems: a **plastic** model updated often (rate r_P, short-term
memory) and a **stable** model updated rarely (rate r_S, long-term memory). On replayed samples
the working model is pulled toward whichever of the two predicts the sample better. Our
adaptation (STELLA paper, Sec. 4.1 baselines and Appendix A, Table 5; ``docs/baselines_replay.md``):

* **replay** is ER on the shared online reservoir: a memory batch is appended to the current
  batch and the SSL loss (MAE + InfoNCE) runs on ``[current; memory]``;
* **teachers**: each EMA model runs its own masked forward on the memory clips (both see the
  *same* random masking, drawn from the plugin's generator). Classification CLS-ER compares the
  teachers' softmax probability of the true class; here, per memory sample, we compare the
  probability each teacher's InfoNCE gives the true audio-video pair,
  :func:`~avalanche_av.training.losses.pair_probability` (the geometric mean of the a→v and v→a
  diagonal softmax probabilities, i.e. ``exp(-per-sample InfoNCE)``, temperature
  ``model.config.temperature``). The teacher with the higher value (ties: plastic, as in the
  reference code) provides that sample's targets for **both** modalities;
* **consistency**: ``λ · (MSE(z_a, ẑ_a) + MSE(z_v, ẑ_v))`` between the working model's pooled
  unimodal embeddings of the memory samples and the chosen teacher's (λ = 0.1);
* **EMA updates** after every optimizer step, stochastically (see
  :class:`~avalanche_av.training.ema.EMAModel`): plastic r_P = 0.8, α_P = 0.999; stable
  r_S = 0.6, α_S = 0.999 (Table 5);
* **evaluation** uses the stable model: its weights are copied into the working model before
  evaluation and the working weights are restored bit for bit afterwards.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ema import EMAModel, check_unit_interval
from ..losses import embedding_penalty, pair_probability
from ..storage_policy import OnlineReservoirBuffer
from .memory import OnlineMemoryPlugin

__all__ = ["CLSERPlugin"]


class CLSERPlugin(OnlineMemoryPlugin):
    """CLS-ER on the online memory: ER + consistency to the better of a plastic and a stable EMA.

    Args:
        mem_size, batch_size_mem, storage_policy, memory_device, seed: as
            :class:`OnlineMemoryPlugin` (``seed`` also seeds the EMA update draws and the
            teachers' masking).
        consistency_weight: λ of the MSE consistency term (Table 5: 0.1), ``>= 0``.
        plastic_rate, plastic_decay: r_P in (0, 1] and α_P in [0, 1) (0.8, 0.999).
        stable_rate, stable_decay: r_S and α_S (0.6, 0.999).
        ema_warmup: ramp the EMA decay as ``min(1 − 1/(t+1), α)`` (the reference code's
            convention, default) instead of a constant α; see :class:`EMAModel`.

    Attributes:
        plastic, stable: the two :class:`EMAModel` (their ``model`` exists after the first
            ``before_training``).
        last_penalty: ``()`` the consistency term of the last step (before λ), or None.
        last_stable_fraction: ``()`` fraction of memory samples whose teacher was the stable model.

    Raises:
        ValueError: an option out of range (the message names it).
    """

    MEMORY_FIELDS = {}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        consistency_weight: float = 0.1,
        plastic_rate: float = 0.8,
        plastic_decay: float = 0.999,
        stable_rate: float = 0.6,
        stable_decay: float = 0.999,
        ema_warmup: bool = True,
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        name = type(self).__name__
        if isinstance(consistency_weight, bool) or not isinstance(consistency_weight, (int, float)) \
                or not consistency_weight >= 0:
            raise ValueError(f"{name}: consistency_weight must be a number >= 0, got {consistency_weight!r}")
        check_unit_interval(plastic_rate, f"{name}: plastic_rate", low_open=True)
        check_unit_interval(stable_rate, f"{name}: stable_rate", low_open=True)
        check_unit_interval(plastic_decay, f"{name}: plastic_decay", high_open=True)
        check_unit_interval(stable_decay, f"{name}: stable_decay", high_open=True)
        self.consistency_weight = float(consistency_weight)
        self.plastic = EMAModel(plastic_decay, plastic_rate, ema_warmup, seed=seed * 3 + 1, name="plastic")
        self.stable = EMAModel(stable_decay, stable_rate, ema_warmup, seed=seed * 3 + 2, name="stable")
        # Seeds one shared masking per step for both teachers.
        self.mask_generator = torch.Generator(device="cpu").manual_seed(seed * 3 + 3)
        self.last_penalty: Optional[torch.Tensor] = None
        self.last_stable_fraction: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ hooks
    def before_training(self, strategy, **kwargs):
        super().before_training(strategy, **kwargs)
        self.plastic.attach(strategy.model)
        self.stable.attach(strategy.model)

    @torch.no_grad()
    def teacher_outputs(self, strategy, audio: torch.Tensor, video: torch.Tensor):
        """Both teachers' masked forwards on the same masking: ``(plastic_out, stable_out)``.

        ``audio (M, T, F)`` float fbank, ``video (M, n, 3, H, W)`` normalised frames.
        """
        seed = int(torch.randint(0, 2**62, (1,), generator=self.mask_generator))
        outs = []
        for ema in (self.plastic, self.stable):
            gen = torch.Generator(device="cpu").manual_seed(seed)
            with strategy.autocast():
                outs.append(ema.model(audio, video, generator=gen))
        return outs[0], outs[1]

    def before_backward(self, strategy, **kwargs):
        rows = strategy.memory_rows(self)
        if rows is None:
            self.last_penalty = None
            return
        out = strategy.mb_output
        p_out, s_out = self.teacher_outputs(strategy, strategy.mb_audio[rows], strategy.mb_video[rows])
        tau = strategy.model.config.temperature
        use_stable = pair_probability(s_out.emb_a, s_out.emb_v, tau) > pair_probability(p_out.emb_a, p_out.emb_v, tau)
        pick = use_stable.unsqueeze(1)
        target_a = torch.where(pick, s_out.pooled_a.float(), p_out.pooled_a.float())
        target_v = torch.where(pick, s_out.pooled_v.float(), p_out.pooled_v.float())
        pen = embedding_penalty(out.pooled_a[rows], out.pooled_v[rows], target_a, target_v)
        self.last_penalty = pen.detach()
        self.last_stable_fraction = use_stable.float().mean()
        strategy.loss = strategy.loss + self.consistency_weight * pen

    def after_training_iteration(self, strategy, **kwargs):
        super().after_training_iteration(strategy, **kwargs)
        # After the optimizer step, as in CLS-ER; a dropped (non-finite) step changed no weight.
        if not strategy.step_skipped:
            self.plastic.step(strategy.model)
            self.stable.step(strategy.model)

    def before_eval(self, strategy, **kwargs):
        # Evaluate with the stable model (CLS-ER's inference model).
        self.stable.swap_in(strategy.model)

    def after_eval(self, strategy, **kwargs):
        self.stable.restore(strategy.model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "plastic": self.plastic.state_dict(),
            "stable": self.stable.state_dict(),
            "mask_generator": self.mask_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.plastic.load_state_dict(state["plastic"])
        self.stable.load_state_dict(state["stable"])
        self.mask_generator.set_state(state["mask_generator"])
