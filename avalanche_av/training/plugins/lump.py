"""LUMP (Madaan et al., ICLR 2022, "Representational continuity for unsupervised continual
learning") adapted to self-supervised audio-video pre-training.

LUMP ("Lifelong Unsupervised Mixup") does not replay memory samples next to the current ones:
it **mixes** each current sample with a memory sample, ``x̃ = λ·x + (1 − λ)·x_mem`` with
``λ ~ Beta(α, α)``, and trains the SSL objective **only on the mixed samples**. Our adaptation
(STELLA paper, Appendix A "Baselines": "we integrate the past and current video and audio
respectively with the same ratio"; ``docs/baselines_replay.md``):

* one λ per training step, shared by every row and by **both modalities** (LUMP draws one λ per
  minibatch, as standard mixup does);
* mixing happens in the model's input space: the float fbank and the ImageNet-normalised frames.
  Normalisation is affine, so this equals mixing the [0, 1] frames and normalising afterwards;
* the mixed clips replace the current rows through
  :meth:`~avalanche_av.training.AVPretraining.replace_inputs`; the stored clips stay the loaded
  ones, so the reservoir receives the real current clips after the step;
* when the memory holds fewer clips than the current batch, memory clips are reused cyclically
  (current row ``i`` is mixed with memory row ``i mod m``); with an empty memory (the first
  step) the step trains on the current clips;
* α = 0.1 on Continual-VS and 0.05 on Continual-AS (Table 5).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from ...models.inputs import prepare_audio, prepare_video
from ..storage_policy import OnlineReservoirBuffer
from .memory import OnlineMemoryPlugin

__all__ = ["LUMPPlugin", "mix_clips"]


def mix_clips(x: torch.Tensor, x_mem: torch.Tensor, lam: float) -> torch.Tensor:
    """Mixup ``λ·x + (1 − λ)·x_mem`` of two equally shaped float batches (any shape ``(B, ...)``)."""
    if x.shape != x_mem.shape:
        raise ValueError(f"mix_clips: shapes differ, {tuple(x.shape)} vs {tuple(x_mem.shape)}")
    return lam * x + (1.0 - lam) * x_mem


class LUMPPlugin(OnlineMemoryPlugin):
    """LUMP on the online memory: train on mixups of current and memory clips.

    Args:
        mem_size, batch_size_mem, storage_policy, memory_device, seed: as
            :class:`OnlineMemoryPlugin` (``seed`` also seeds the λ draws).
        alpha: α of ``Beta(α, α)``, ``> 0`` (Table 5: 0.1 on Continual-VS, 0.05 on Continual-AS).

    Attributes:
        last_lambda: the λ of the last mixed step (a float), or None.

    Raises:
        ValueError: ``alpha <= 0`` (the message names it).
    """

    MEMORY_FIELDS = {}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        alpha: float = 0.1,
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha < float("inf")):
            raise ValueError(f"{type(self).__name__}: alpha (the Beta(alpha, alpha) parameter) must be a number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        # numpy's legacy generator: Beta sampling with a state that checkpoints as plain arrays.
        self.rng = np.random.RandomState(seed)
        self.last_lambda: Optional[float] = None

    def draw_lambda(self) -> float:
        """One ``λ ~ Beta(α, α)``."""
        return float(self.rng.beta(self.alpha, self.alpha))

    def replay(self, strategy, mem: Dict[str, torch.Tensor]) -> None:
        """Replace the current rows by ``λ·x + (1 − λ)·x_mem``; no memory row is appended."""
        n = strategy.mb_n_current
        m = mem["audio"].shape[0]
        pair = torch.arange(n, device=strategy.device) % m
        audio_mem = prepare_audio(mem["audio"].to(strategy.device))[pair]
        video_mem = prepare_video(mem["video"].to(strategy.device))[pair]
        lam = self.draw_lambda()
        audio, video = strategy.mb_audio.clone(), strategy.mb_video.clone()
        # Only the leading current rows are mixed; rows another plugin appended before stay as they are.
        audio[:n] = mix_clips(audio[:n], audio_mem, lam)
        video[:n] = mix_clips(video[:n], video_mem, lam)
        strategy.replace_inputs(self, audio, video)
        self.last_lambda = lam

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        return {
            **super().state_dict(),
            "rng": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        name, keys, pos, has_gauss, cached = state["rng"]
        self.rng.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
