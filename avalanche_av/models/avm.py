"""Audio-Video Matching (AVM) module of STELLA, its importance readout and pair/loss helpers.

The AVM is a light cross-attention block that sits on top of the backbone's
shared (fusion) blocks. It is trained to tell whether an audio clip and a video
clip belong together; its cross-attention logits are what STELLA turns into
patch importance (:func:`importance`, paper Eq. 1-2), and its queries/keys feed
the replay-guided correlation (paper Sec. 4.2, Eq. 3-4).

Layout (paper Sec. 4.1 and Appendix D, Eq. 10-11; Fig. 8):

* inputs: joint fusion outputs ``fa (B, Na, D)`` and ``fv (B, Nv, D)``, taken
  before the final norm, computed by the caller **without gradients**;
* a LayerNorm per modality, then bias-free q/k/v projections per modality with
  ``H`` heads of size ``d = D / H`` and no output projection;
* audio queries attend to video keys/values and video queries attend to audio
  keys/values; the attended values are mean-pooled over the query tokens per
  modality and concatenated to ``(B, 2D)``;
* a head ``Linear(2D, 2D) -> tanh -> Linear(2D, 1)`` gives the match logit.

The pooling is per head, as Appendix D describes ("average the values head-wise
and patch-wise"). The authors' released code flattens ``(B, H, L, d)`` to
``(B, L, H·d)`` without moving the head axis first, so its token mean mixes heads
with strided token subsets; we keep the described pooling (docs/deviations.md).

Pure helpers: :func:`importance`, :func:`derangement`, :func:`make_avm_pairs`,
:func:`avm_loss`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import use_fused_attn
from torch import Tensor, nn

__all__ = [
    "AVMOutput",
    "AVMatching",
    "importance",
    "derangement",
    "make_avm_pairs",
    "avm_loss",
]


class AVMOutput(NamedTuple):
    """What :meth:`AVMatching.forward` returns.

    Attributes:
        logit: ``(B,)`` match logit (carries gradients to the AVM parameters).
        attn_logits_av: ``(B, H, Na, Nv)`` audio-query -> video-key logits
            ``q_a·k_v / sqrt(d)``, before softmax and without temperature, so that
            importance can apply its own temperature β. ``None`` when the
            forward was called with ``return_attn=False``.
        attn_logits_va: ``(B, H, Nv, Na)`` video-query -> audio-key logits,
            same convention. ``None`` when ``return_attn=False``.
        q_a: ``(B, H, Na, d)`` audio queries.
        k_a: ``(B, H, Na, d)`` audio keys.
        q_v: ``(B, H, Nv, d)`` video queries.
        k_v: ``(B, H, Nv, d)`` video keys.

    The attention logits and the q/k tensors are **detached**: they only drive
    the (non-differentiable) patch selection and the memory's stored queries, and
    keeping them out of the autograd graph saves the ``(B, H, Na, Nv)`` maps'
    memory during the backward pass.
    """

    logit: Tensor
    attn_logits_av: Optional[Tensor]
    attn_logits_va: Optional[Tensor]
    q_a: Tensor
    k_a: Tensor
    q_v: Tensor
    k_v: Tensor


class AVMatching(nn.Module):
    """Cross-attention audio-video matching head (paper Sec. 4.1, Appendix D).

    Args:
        dim: token width ``D`` of the backbone's fusion outputs.
        num_heads: ``H``; must divide ``dim``.

    Attributes:
        fused_attn: timm-style kernel switch for the differentiable
            cross-attention that feeds the match logit. ``True`` (the default,
            following timm's ``use_fused_attn()``, i.e. ``TIMM_FUSED_ATTN``)
            uses ``torch.nn.functional.scaled_dot_product_attention``;
            ``False`` uses the explicit ``softmax(q·kᵀ/√d)·v`` kernel, which
            materialises (and, under autograd, saves) the attention
            probabilities. Both give the same outputs up to float rounding. Set
            it like timm's ``Attention.fused_attn``, e.g. to measure the
            explicit kernel's activation memory.

    Memory note: with the base shapes (Na=512, Nv=784, H=12) the two
    attention-logit maps are ``B·12·512·784`` elements each (about 19 MB per
    sample per map in float32). The fused path may avoid materialising them.
    The maps returned with ``return_attn=True`` are computed separately without
    autograd, whatever the kernel, so they never enter the backward graph. Pass
    ``return_attn=False`` when only the logit is needed.
    """

    def __init__(self, dim: int = 768, num_heads: int = 12) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(
                f"AVMatching: dim ({dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.fused_attn = use_fused_attn()
        self.norm_a = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        # Fused bias-free q/k/v per modality; split into three D-wide blocks.
        self.qkv_a = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_v = nn.Linear(dim, 3 * dim, bias=False)
        self.head = nn.Sequential(
            nn.Linear(2 * dim, 2 * dim),
            nn.Tanh(),
            nn.Linear(2 * dim, 1),
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # ViT-style init, the same family as the backbone's projections.
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _split_qkv(self, x: Tensor, proj: nn.Linear) -> Tuple[Tensor, Tensor, Tensor]:
        """``(B, N, D)`` -> three ``(B, H, N, d)`` tensors (q, k, v)."""
        b, n, _ = x.shape
        qkv = proj(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Cross-attention ``softmax(q·kᵀ/√d)·v``.

        ``q (B, H, Nq, d)``, ``k, v (B, H, Nk, d)`` -> ``(B, H, Nq, d)``.
        """
        if self.fused_attn:
            # Default SDPA scale is 1/sqrt(d), the same as the explicit kernel and the returned logits.
            return F.scaled_dot_product_attention(q, k, v)
        probs = torch.matmul(q * self.head_dim**-0.5, k.transpose(-2, -1)).softmax(dim=-1)
        return torch.matmul(probs, v)

    def forward(self, fa: Tensor, fv: Tensor, return_attn: bool = True) -> AVMOutput:
        """Score audio-video pairs.

        Args:
            fa: ``(B, Na, D)`` audio tokens from the shared blocks (joint pass).
            fv: ``(B, Nv, D)`` video tokens from the shared blocks (joint pass),
                row ``i`` paired with ``fa[i]``.
            return_attn: also return the two detached attention-logit maps.

        Returns:
            :class:`AVMOutput`.
        """
        if fa.dim() != 3 or fv.dim() != 3:
            raise ValueError(
                f"AVMatching: fa and fv must be (B, N, D); got {tuple(fa.shape)} and {tuple(fv.shape)}"
            )
        if fa.shape[0] != fv.shape[0]:
            raise ValueError(
                f"AVMatching: batch sizes differ (fa {fa.shape[0]}, fv {fv.shape[0]})"
            )
        if fa.shape[-1] != self.dim or fv.shape[-1] != self.dim:
            raise ValueError(
                f"AVMatching: last dim must be {self.dim}; got {fa.shape[-1]} and {fv.shape[-1]}"
            )
        b = fa.shape[0]
        q_a, k_a, v_a = self._split_qkv(self.norm_a(fa), self.qkv_a)
        q_v, k_v, v_v = self._split_qkv(self.norm_v(fv), self.qkv_v)

        att_a = self._attend(q_a, k_v, v_v)  # (B, H, Na, d)
        att_v = self._attend(q_v, k_a, v_a)  # (B, H, Nv, d)
        # Per-head mean over the query tokens, then heads side by side: (B, H, d) -> (B, D).
        pooled_a = att_a.mean(dim=2).reshape(b, self.dim)
        pooled_v = att_v.mean(dim=2).reshape(b, self.dim)
        logit = self.head(torch.cat([pooled_a, pooled_v], dim=-1)).squeeze(-1)

        q_a, k_a, q_v, k_v = q_a.detach(), k_a.detach(), q_v.detach(), k_v.detach()
        logits_av = logits_va = None
        if return_attn:
            scale = 1.0 / math.sqrt(self.head_dim)
            with torch.no_grad():
                logits_av = torch.matmul(q_a, k_v.transpose(-1, -2)) * scale
                logits_va = torch.matmul(q_v, k_a.transpose(-1, -2)) * scale
        return AVMOutput(logit, logits_av, logits_va, q_a, k_a, q_v, k_v)


def importance(attn_logits: Tensor, beta: float = 0.4) -> Tensor:
    """Patch importance, the readout of the AVM's cross-attention (paper Eq. 1-2).

    ``I[b, j] = mean_{h, i} softmax_j(attn_logits[b, h, i, :] / beta)``.

    Video importance takes the audio-query -> video-key logits
    (:attr:`AVMOutput.attn_logits_av`); audio importance takes the video-query ->
    audio-key logits (:attr:`AVMOutput.attn_logits_va`).

    Args:
        attn_logits: ``(B, H, Nq, Nk)`` logits ``q·k / sqrt(d)`` (the 1/√d scale
            already applied, no temperature).
        beta: softmax temperature β > 0 (0.4 in the paper); lower is sharper.

    Returns:
        ``(B, Nk)`` float32 importance; each row sums to 1.
    """
    if attn_logits.dim() != 4:
        raise ValueError(f"importance: attn_logits must be (B, H, Nq, Nk), got {tuple(attn_logits.shape)}")
    if not beta > 0:
        raise ValueError(f"importance: beta must be > 0, got {beta}")
    b, h, nq, nk = attn_logits.shape
    out = torch.zeros(b, nk, device=attn_logits.device, dtype=torch.float32)
    # One head at a time: the float32 softmax of a full base-size map would be
    # another B·H·Nq·Nk buffer.
    for head in range(h):
        out += torch.softmax(attn_logits[:, head].float() / beta, dim=-1).sum(dim=1)
    return out / (h * nq)


def derangement(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed point.

    Uses rejection sampling (a random permutation is a derangement with
    probability ≈ 1/e); after 64 failed tries, which has probability below
    1e-12, it falls back to a random ``n``-cycle, which is always a derangement.

    Args:
        n: size, at least 2 (no derangement exists for n < 2).
        generator: CPU ``torch.Generator`` for reproducibility (or ``None``).

    Returns:
        ``(n,)`` int64 CPU tensor ``p`` with ``p[i] != i`` for every ``i``.
    """
    if n < 2:
        raise ValueError(f"derangement: n must be >= 2 (a derangement of {n} elements does not exist)")
    ar = torch.arange(n)
    for _ in range(64):
        p = torch.randperm(n, generator=generator)
        if not bool((p == ar).any()):
            return p
    # Random n-cycle: sigma[i] -> sigma[i+1] never maps an element to itself.
    sigma = torch.randperm(n, generator=generator)
    p = torch.empty(n, dtype=torch.long)
    p[sigma] = sigma.roll(-1)
    return p


def make_avm_pairs(
    batch_size: int, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor]:
    """Build the AVM's matched / mismatched pairs for a batch (paper Appendix D).

    A random subset of the batch is made negative by deranging the video among
    those samples, so sample ``i`` is paired with ``video[perm[i]]`` and a
    negative is never paired with its own video. The caller applies ``perm``
    to the video **before** the shared blocks, so mismatched pairs go through
    fusion jointly.

    Negative count: ``ceil(B / 2)`` for ``B >= 3``, as in the authors' code
    (``B // 2`` positives, the rest negative; e.g. 3 of 5, 4 of 7, 24 of 48).
    With ``B = 2`` both samples are negatives (a derangement needs two); the
    authors' code makes no negative for ``B <= 2`` (docs/deviations.md).
    ``B = 1`` cannot produce a negative: the identity is returned with
    ``is_match = [1.]`` (the loss is then positives-only for that batch;
    callers may also skip it).

    Args:
        batch_size: ``B >= 1``.
        generator: CPU ``torch.Generator`` (or ``None``).

    Returns:
        ``perm`` ``(B,)`` int64 video index per sample and ``is_match`` ``(B,)``
        float32, 1 for matched pairs and 0 for deranged ones (both on CPU).
    """
    if batch_size < 1:
        raise ValueError(f"make_avm_pairs: batch_size must be >= 1, got {batch_size}")
    perm = torch.arange(batch_size)
    is_match = torch.ones(batch_size, dtype=torch.float32)
    if batch_size < 2:
        return perm, is_match
    n_neg = max(2, (batch_size + 1) // 2)  # ceil(B/2), at least the 2 a derangement needs
    neg = torch.randperm(batch_size, generator=generator)[:n_neg]
    perm[neg] = neg[derangement(n_neg, generator)]
    is_match[neg] = 0.0
    return perm, is_match


def avm_loss(logit: Tensor, is_match: Tensor) -> Tensor:
    """Binary cross-entropy (with logits) of the AVM match prediction.

    Args:
        logit: ``(B,)`` match logits.
        is_match: ``(B,)`` targets in {0, 1} (any float/bool/int dtype).

    Returns:
        Scalar mean loss, computed in float32.
    """
    if logit.shape != is_match.shape or logit.dim() != 1 or logit.numel() == 0:
        raise ValueError(
            f"avm_loss: logit and is_match must both be non-empty (B,); got "
            f"{tuple(logit.shape)} and {tuple(is_match.shape)}"
        )
    return F.binary_cross_entropy_with_logits(
        logit.float(), is_match.to(device=logit.device, dtype=torch.float32)
    )
