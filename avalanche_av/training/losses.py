"""Loss terms shared by several continual-learning methods.

The backbone's own objective (masked reconstruction + InfoNCE) lives in the model
(:class:`~avalanche_av.models.AVMAE`); this module holds the extra terms that methods add on top,
so that no plugin imports another plugin for a function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["embedding_penalty"]


def embedding_penalty(
    pooled_a: torch.Tensor, pooled_v: torch.Tensor, stored_a: torch.Tensor, stored_v: torch.Tensor
) -> torch.Tensor:
    """DER-style penalty ``MSE(z_a, ẑ_a) + MSE(z_v, ẑ_v)`` on pooled unimodal embeddings.

    DER++ and STELLA (paper Sec. 3.3, the ``α·ℓ_p`` term) both use it on memory samples: ``ẑ`` are
    the embeddings stored when the sample entered the memory, ``z`` the current model's.

    Args:
        pooled_a, pooled_v: ``(M, D)`` current pooled embeddings of the memory samples.
        stored_a, stored_v: ``(M, D)`` the ones stored at insertion (any float dtype).

    Returns:
        ``()`` the sum of the two mean squared errors, in float32.
    """
    if pooled_a.shape != stored_a.shape or pooled_v.shape != stored_v.shape:
        raise ValueError(
            f"embedding_penalty: current {tuple(pooled_a.shape)}/{tuple(pooled_v.shape)} and stored "
            f"{tuple(stored_a.shape)}/{tuple(stored_v.shape)} embeddings must have the same shapes (M, D)"
        )
    return F.mse_loss(pooled_a.float(), stored_a.float()) + F.mse_loss(pooled_v.float(), stored_v.float())
