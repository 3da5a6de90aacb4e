"""Loss terms shared by several continual-learning methods.

The backbone's own objective (masked reconstruction + InfoNCE) lives in the model
(:class:`~avalanche_av.models.AVMAE`); this module holds the extra terms that methods add on top,
so that no plugin imports another plugin for a function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["embedding_penalty", "pair_probability"]


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


def pair_probability(emb_a: torch.Tensor, emb_v: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probability the InfoNCE softmax gives each row's true audio-video pair: ``(B,)``.

    With ``s = emb_a @ emb_v.T / τ``, ``p_a2v[i] = softmax(s[i])[i]`` (the audio retrieves its
    video among the batch) and ``p_v2a[i] = softmax(s.T[i])[i]``. The two directions are combined
    by their **geometric mean** ``sqrt(p_a2v · p_v2a)``, which equals ``exp(-ℓ_c,i)`` for the
    bidirectional per-sample InfoNCE ``ℓ_c,i = (CE_a2v + CE_v2a)/2`` of the backbone: a higher
    value is exactly a lower contrastive loss. CLS-ER uses it to pick, per sample, the teacher
    whose prediction is more confident on the true pair (its classification analogue is the
    softmax probability of the true class; ``docs/baselines_replay.md``).

    Args:
        emb_a, emb_v: ``(B, D)`` L2-normalised embeddings; row ``i`` of each is a positive pair.
        temperature: τ of the InfoNCE (``model.config.temperature``).

    Returns:
        ``(B,)`` float32 in (0, 1].
    """
    if emb_a.dim() != 2 or emb_a.shape != emb_v.shape:
        raise ValueError(
            f"pair_probability: emb_a {tuple(emb_a.shape)} and emb_v {tuple(emb_v.shape)} must both be (B, D)"
        )
    if not temperature > 0:
        raise ValueError(f"pair_probability: temperature must be > 0, got {temperature}")
    logits = emb_a.float() @ emb_v.float().t() / temperature
    log_a2v = torch.log_softmax(logits, dim=1).diagonal()
    log_v2a = torch.log_softmax(logits, dim=0).diagonal()  # column softmax = rows of s.T
    return torch.exp(0.5 * (log_a2v + log_v2a))
