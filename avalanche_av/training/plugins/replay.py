"""Task-free replay baselines on an online reservoir (SPEC §4): ER and DER++.

Both keep an :class:`~avalanche_av.training.storage_policy.OnlineReservoirBuffer` updated after
**every** training iteration (not per experience, unlike Avalanche's ``ReplayPlugin``), draw a
memory batch the size of the current batch (or ``batch_size_mem``) before each forward, and
concatenate it to the minibatch, so the SSL loss (MAE + InfoNCE) runs on ``[current; memory]``.
DER++ adds ``α · (MSE(z_a, ẑ_a) + MSE(z_v, ẑ_v))`` between the memory samples' stored pooled
unimodal embeddings ``ẑ`` (DER "logits", written at insertion) and their current ones ``z``.

Memory batches are ``min(batch_size_mem, len(memory))`` samples: while the memory is smaller
than a batch, all of it is replayed.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from avalanche.training.plugins import SupervisedPlugin

from ...models.inputs import to_uint8_frames
from ..storage_policy import OnlineReservoirBuffer

__all__ = ["OnlineReplayPlugin", "DERPlugin", "embedding_penalty"]


def embedding_penalty(
    pooled_a: torch.Tensor, pooled_v: torch.Tensor, stored_a: torch.Tensor, stored_v: torch.Tensor
) -> torch.Tensor:
    """DER-style penalty ``MSE(z_a, ẑ_a) + MSE(z_v, ẑ_v)`` on pooled unimodal embeddings.

    Args:
        pooled_a, pooled_v: ``(M, D)`` current pooled embeddings of the memory samples.
        stored_a, stored_v: ``(M, D)`` the ones stored at insertion (any float dtype).
    """
    return F.mse_loss(pooled_a.float(), stored_a.float()) + F.mse_loss(pooled_v.float(), stored_v.float())


class OnlineReplayPlugin(SupervisedPlugin):
    """Experience replay (ER) with a reservoir updated every iteration.

    Args:
        mem_size: memory size in clips (``>= 1``).
        batch_size_mem: memory batch size; default: the current batch size.
        memory_device: where the memory lives (CPU by default).
        seed: seed of the memory's own sampling generator.
    """

    #: extra per-sample fields this method stores, with their storage dtypes
    EXTRA_FIELDS: dict = {}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(mem_size, int) or mem_size < 1:
            raise ValueError(f"mem_size must be an int >= 1, got {mem_size!r}")
        if batch_size_mem is not None and batch_size_mem < 1:
            raise ValueError(f"batch_size_mem must be >= 1 or None, got {batch_size_mem}")
        self.mem_size = mem_size
        self.batch_size_mem = batch_size_mem
        self.storage = OnlineReservoirBuffer(mem_size, self.EXTRA_FIELDS, memory_device)
        self.storage.seed(seed)
        self.n_current = 0
        self.mem_batch: Optional[dict] = None

    def before_forward(self, strategy, **kwargs):
        mb = strategy.mbatch
        self.n_current = mb[0].shape[0]
        self.mem_batch = None
        if len(self.storage) == 0:
            return
        _, mem = self.storage.sample(self.batch_size_mem or self.n_current, device=strategy.device)
        self.mem_batch = mem
        m = mem["audio"].shape[0]
        task = mb[-1][:1].expand(m)
        strategy.mbatch = [
            torch.cat([mb[0], mem["audio"].to(mb[0].dtype)]),
            torch.cat([mb[1], mem["video"] if mb[1].dtype == torch.uint8 else mem["video"].float() / 255.0]),
            torch.cat([mb[2], mem["target"]]),
            torch.cat([mb[3], mem["clip_id"]]),
            *mb[4:-1],
            torch.cat([mb[-1], task]),
        ]

    def _insert_fields(self, strategy) -> dict:
        mb, n = strategy.mbatch, self.n_current
        return {
            "audio": mb[0][:n],
            "video": to_uint8_frames(mb[1][:n]),
            "target": mb[2][:n],
            "clip_id": mb[3][:n],
        }

    def after_training_iteration(self, strategy, **kwargs):
        self.storage.add(self._insert_fields(strategy))
        self.mem_batch = None

    def state_dict(self) -> dict:
        return {"storage": self.storage.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.storage.load_state_dict(state["storage"])


class DERPlugin(OnlineReplayPlugin):
    """DER++ adapted to SSL pre-training: ER plus ``α·MSE`` on stored pooled embeddings.

    Args:
        alpha: weight of the embedding penalty (0.5, as STELLA's α, by default).
        other arguments: as :class:`OnlineReplayPlugin`.
    """

    EXTRA_FIELDS = {"pooled_a": torch.float16, "pooled_v": torch.float16}

    def __init__(self, mem_size: int = 2000, batch_size_mem: Optional[int] = None, alpha: float = 0.5,
                 memory_device: str = "cpu", seed: int = 0):
        super().__init__(mem_size, batch_size_mem, memory_device, seed)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.last_penalty: Optional[torch.Tensor] = None

    def before_backward(self, strategy, **kwargs):
        if self.mem_batch is None:
            return
        out, n = strategy.mb_output, self.n_current
        pen = embedding_penalty(out.pooled_a[n:], out.pooled_v[n:], self.mem_batch["pooled_a"], self.mem_batch["pooled_v"])
        self.last_penalty = pen.detach()  # a tensor: no device sync on the hot path
        strategy.loss = strategy.loss + self.alpha * pen

    def _insert_fields(self, strategy) -> dict:
        out, n = strategy.mb_output, self.n_current
        return {
            **super()._insert_fields(strategy),
            "pooled_a": out.pooled_a[:n].detach(),
            "pooled_v": out.pooled_v[:n].detach(),
        }
