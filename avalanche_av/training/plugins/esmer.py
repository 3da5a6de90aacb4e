"""ESMER (Sarfraz et al., ICLR 2023, "Error Sensitivity Modulation based Experience Replay")
adapted to self-supervised audio-video pre-training.

ESMER keeps an EMA **semantic memory** of the working model and uses it to damp abrupt
representation drift: current samples on which the semantic memory's loss is far above its
running mean (likely new-task or noisy samples that would cause large, sudden updates) get a
smaller weight and are **not admitted** to the episodic memory, and replayed samples are pulled
toward the semantic memory's representations. Our adaptation (STELLA paper, Sec. 4.1 baselines,
Appendix A and Table 5; ``docs/baselines_replay.md``):

* **error sensitivity**: the semantic memory runs a masked forward on the current clips and gives
  each its per-sample SSL loss ``ℓ_i`` (MAE + InfoNCE). With ``μ`` the running mean loss and
  β the margin, a sample with ``ℓ_i > β·μ`` has its term in the working model's loss scaled by
  ``μ / ℓ_i`` (its effective loss is capped at the running mean) and is refused admission to the
  reservoir; the others keep weight 1 and are offered as usual. The loss becomes
  ``mean_rows(w_i · ℓ^W_i)`` over ``[current; memory]`` (memory rows keep weight 1);
* **running mean**: after each step ``μ ← a·μ + (1 − a)·mean(ℓ)`` over the step's semantic-memory
  losses without the batch's outliers (``ℓ > mean + std_margin·std``, as ESMER's reference
  code), with ``a = min(1 − 1/k, α_l)`` at the k-th update: ``μ`` is the exact average of the
  first batches, then an EMA with momentum α_l = 0.99. Before the first update nothing is
  down-weighted;
* **consistency**: ``γ · (MSE(z_a, ẑ_a) + MSE(z_v, ẑ_v))`` between the working model's pooled
  unimodal embeddings of the memory samples and the semantic memory's (its own masked forward
  on the same clips), γ = 0.15 (Continual-VS) / 0.2 (Continual-AS);
* **semantic memory update**: stochastic EMA after each optimizer step, rate r = 0.2, decay
  α = 0.999 (:class:`~avalanche_av.training.ema.EMAModel`);
* **evaluation** uses the semantic memory (weights swapped in, working weights restored exactly).

ESMER's per-task warm-up epochs are not used: the stream is task-free here, like the reservoir.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..ema import EMAModel, check_unit_interval
from ..losses import embedding_penalty
from ..storage_policy import OnlineReservoirBuffer
from .memory import OnlineMemoryPlugin

__all__ = ["ESMERPlugin", "error_sensitivity_weights"]


def error_sensitivity_weights(
    losses: torch.Tensor, running_mean: float, margin: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ESMER's per-sample weights and admission mask.

    Args:
        losses: ``(B,)`` per-sample losses of the semantic memory on the current samples.
        running_mean: μ, the running mean loss (``> 0``).
        margin: β; a sample is *high-loss* when ``ℓ > β·μ``.

    Returns:
        ``weights (B,)``: ``μ / ℓ`` for high-loss samples, 1 otherwise (a non-finite loss gets
        weight 0); ``admit (B,)`` bool: True for the samples that may enter the memory.
    """
    losses = losses.detach().float()
    finite = torch.isfinite(losses)
    high = (losses > margin * running_mean) | ~finite
    safe = torch.where(finite, losses, torch.ones_like(losses)).clamp_min(1e-12)
    weights = torch.where(high, running_mean / safe, torch.ones_like(losses))
    weights = torch.where(finite, weights, torch.zeros_like(losses))
    return weights, ~high


class ESMERPlugin(OnlineMemoryPlugin):
    """ESMER on the online memory: ER + error-sensitive weighting, loss-filtered admission and
    consistency to an EMA semantic memory.

    Args:
        mem_size, batch_size_mem, storage_policy, memory_device, seed: as
            :class:`OnlineMemoryPlugin` (``seed`` also seeds the EMA draws and its masking).
        consistency_weight: γ, weight of the MSE consistency on memory samples (Table 5: 0.15
            on Continual-VS, 0.2 on Continual-AS), ``>= 0``.
        loss_margin: β, ``> 0`` (1.0).
        loss_alpha: α_l in [0, 1), momentum of the running mean loss (0.99).
        std_margin: outlier cut for the running-mean update, in batch standard deviations,
            ``> 0`` (1.0, ESMER's reference code; not in Table 5).
        ema_decay: α in [0, 1) (0.999). ema_rate: r in (0, 1] (0.2).
        ema_warmup: ramp the EMA decay as ``min(1 − 1/(t+1), α)``; see :class:`EMAModel`.

    Attributes:
        ema: the semantic memory (:class:`EMAModel`).
        running_loss: μ (float); ``loss_updates`` how many batches it has seen.
        last_ema_loss, last_weights, last_admit: ``(B,)`` of the last step.
        last_penalty: ``()`` the consistency term of the last step (before γ), or None.

    Raises:
        ValueError: an option out of range (the message names it).
    """

    MEMORY_FIELDS = {}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        consistency_weight: float = 0.15,
        loss_margin: float = 1.0,
        loss_alpha: float = 0.99,
        std_margin: float = 1.0,
        ema_decay: float = 0.999,
        ema_rate: float = 0.2,
        ema_warmup: bool = True,
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        name = type(self).__name__
        for opt, value, strict in (("consistency_weight", consistency_weight, False),
                                   ("loss_margin", loss_margin, True), ("std_margin", std_margin, True)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value < float("inf")
            if not ok or not (value > 0 if strict else value >= 0):
                raise ValueError(f"{name}: {opt} must be a number {'>' if strict else '>='} 0, got {value!r}")
        check_unit_interval(loss_alpha, f"{name}: loss_alpha", high_open=True)
        check_unit_interval(ema_decay, f"{name}: ema_decay", high_open=True)
        check_unit_interval(ema_rate, f"{name}: ema_rate", low_open=True)
        self.consistency_weight = float(consistency_weight)
        self.loss_margin = float(loss_margin)
        self.loss_alpha = float(loss_alpha)
        self.std_margin = float(std_margin)
        self.ema = EMAModel(ema_decay, ema_rate, ema_warmup, seed=seed * 2 + 1, name="semantic memory")
        self.mask_generator = torch.Generator(device="cpu").manual_seed(seed * 2 + 2)
        self.running_loss = 0.0
        self.loss_updates = 0
        self.last_ema_loss: Optional[torch.Tensor] = None
        self.last_weights: Optional[torch.Tensor] = None
        self.last_admit: Optional[torch.Tensor] = None
        self.last_penalty: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ hooks
    def before_training(self, strategy, **kwargs):
        super().before_training(strategy, **kwargs)
        self.ema.attach(strategy.model)

    @torch.no_grad()
    def ema_output(self, strategy, audio: torch.Tensor, video: torch.Tensor):
        """The semantic memory's masked forward on ``audio (K, T, F)``, ``video (K, n, 3, H, W)``."""
        gen = torch.Generator(device="cpu").manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=self.mask_generator))
        )
        with strategy.autocast():
            return self.ema.model(audio, video, generator=gen)

    def before_backward(self, strategy, **kwargs):
        n = strategy.mb_n_current
        out = strategy.mb_output
        ema_loss = self.ema_output(strategy, strategy.mb_audio[:n], strategy.mb_video[:n]).per_sample_loss.float()
        if self.loss_updates > 0:
            weights, admit = error_sensitivity_weights(ema_loss, self.running_loss, self.loss_margin)
        else:
            weights = torch.ones_like(ema_loss)
            admit = torch.ones_like(ema_loss, dtype=torch.bool)
        self.last_ema_loss, self.last_weights, self.last_admit = ema_loss, weights, admit
        # The template's loss is mean_rows(ℓ); adding mean_rows((w - 1)·ℓ) makes it mean_rows(w·ℓ)
        # while keeping any term other plugins already added.
        per = out.per_sample_loss
        strategy.loss = strategy.loss + ((weights - 1.0) * per[:n].float()).sum() / per.shape[0]

        rows = strategy.memory_rows(self)
        self.last_penalty = None
        if rows is not None and self.consistency_weight > 0:
            target = self.ema_output(strategy, strategy.mb_audio[rows], strategy.mb_video[rows])
            pen = embedding_penalty(out.pooled_a[rows], out.pooled_v[rows], target.pooled_a, target.pooled_v)
            self.last_penalty = pen.detach()
            strategy.loss = strategy.loss + self.consistency_weight * pen

    def insert_fields(self, strategy) -> Dict[str, torch.Tensor]:
        """Only the current clips below the loss margin are offered to the reservoir."""
        clips = super().insert_fields(strategy)
        if self.last_admit is None:
            return clips
        return {k: v[self.last_admit.to(v.device)] for k, v in clips.items()}

    def after_training_iteration(self, strategy, **kwargs):
        super().after_training_iteration(strategy, **kwargs)
        if not strategy.step_skipped:
            self.ema.step(strategy.model)
            if self.last_ema_loss is not None:
                self.update_running_loss(self.last_ema_loss)
        self.last_admit = None

    def update_running_loss(self, losses: torch.Tensor) -> None:
        """Fold one batch of semantic-memory losses ``(B,)`` into μ (outliers and non-finite values left out)."""
        x = losses.detach().float()
        x = x[torch.isfinite(x)]
        if x.numel() > 1:
            x = x[x <= x.mean() + self.std_margin * x.std()]
        if x.numel() == 0:
            return
        self.loss_updates += 1
        a = min(1.0 - 1.0 / self.loss_updates, self.loss_alpha)
        self.running_loss = a * self.running_loss + (1.0 - a) * float(x.mean())

    def before_eval(self, strategy, **kwargs):
        # ESMER infers with the semantic memory.
        self.ema.swap_in(strategy.model)

    def after_eval(self, strategy, **kwargs):
        self.ema.restore(strategy.model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "ema": self.ema.state_dict(),
            "mask_generator": self.mask_generator.get_state(),
            "running_loss": float(self.running_loss),
            "loss_updates": int(self.loss_updates),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ema.load_state_dict(state["ema"])
        self.mask_generator.set_state(state["mask_generator"])
        self.running_loss = float(state["running_loss"])
        self.loss_updates = int(state["loss_updates"])
