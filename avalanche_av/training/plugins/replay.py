"""Task-free replay baselines on the online memory (paper Sec. 5.1 baselines): ER and DER++.

Both use :class:`~avalanche_av.training.plugins.OnlineMemoryPlugin`: a reservoir updated after
**every** training iteration (not per experience, unlike Avalanche's ``ReplayPlugin``), a memory
batch the size of the current batch (or ``batch_size_mem``) drawn before each forward and
appended to the minibatch, so the SSL loss (MAE + InfoNCE) runs on ``[current; memory]``.
DER++ adds ``α · (MSE(z_a, ẑ_a) + MSE(z_v, ẑ_v))`` between the memory samples' stored pooled
unimodal embeddings ``ẑ`` (DER "logits", written at insertion) and their current ones ``z``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..losses import embedding_penalty
from ..storage_policy import OnlineReservoirBuffer
from .memory import OnlineMemoryPlugin

__all__ = ["OnlineReplayPlugin", "ERPlugin", "DERPlugin"]


class OnlineReplayPlugin(OnlineMemoryPlugin):
    """Experience replay (ER) with a reservoir updated every iteration.

    Stores the clip only (``audio`` fp16, ``video`` uint8, ``target``, ``clip_id``: 65,552 bytes
    per sample on ``tiny``). Arguments as :class:`OnlineMemoryPlugin`.
    """

    MEMORY_FIELDS: Dict[str, torch.dtype] = {}


#: The name Avalanche users look for.
ERPlugin = OnlineReplayPlugin


class DERPlugin(OnlineMemoryPlugin):
    """DER++ adapted to SSL pre-training: ER plus ``α·MSE`` on stored pooled embeddings.

    Args:
        mem_size, batch_size_mem, storage_policy, memory_device, seed: as
            :class:`OnlineMemoryPlugin`.
        alpha: weight of the embedding penalty (0.5, as STELLA's α, by default).
    """

    #: ``pooled_a`` / ``pooled_v`` ``(D,)`` fp16: the masked view's mean-pooled unimodal
    #: embeddings at insertion (DER "logits"); 2·D·2 bytes (512 on tiny, 3,072 on base).
    MEMORY_FIELDS = {"pooled_a": torch.float16, "pooled_v": torch.float16}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        alpha: float = 0.5,
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        if not alpha >= 0:
            raise ValueError(f"DERPlugin: alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.last_penalty: Optional[torch.Tensor] = None

    def insert_fields(self, strategy) -> Dict[str, torch.Tensor]:
        out, n = strategy.mb_output, strategy.mb_n_current
        return {
            **super().insert_fields(strategy),
            "pooled_a": out.pooled_a[:n].detach(),
            "pooled_v": out.pooled_v[:n].detach(),
        }

    def before_backward(self, strategy, **kwargs):
        rows = strategy.memory_rows(self)
        if rows is None:
            return
        out, mem = strategy.mb_output, self.mem_batch
        pen = embedding_penalty(out.pooled_a[rows], out.pooled_v[rows], mem["pooled_a"], mem["pooled_v"])
        self.last_penalty = pen.detach()  # a tensor: no device sync on the hot path
        strategy.loss = strategy.loss + self.alpha * pen
