"""Localization: where STELLA's AVM looks, as numbers and as pictures (SPEC §5).

* :func:`avm_importance` runs the backbone's unmasked joint pass and the AVM on a batch and
  returns per-patch importance for both modalities plus the match logits.
* :func:`importance_share` measures how much of the video importance lies on ground-truth
  sounding patches (the synthetic stream provides them), relative to a uniform spread.
* :func:`avm_match_accuracy` scores matched vs. deranged pairs (held-out clips).
* :func:`plot_attention_map` draws the importance over a clip's frames.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..models.avm import AVMatching, derangement, importance
from ..models.inputs import prepare_audio, prepare_video

__all__ = ["avm_importance", "importance_share", "avm_match_accuracy", "plot_attention_map"]


@torch.no_grad()
def avm_importance(
    model, avm: AVMatching, audio: torch.Tensor, video: torch.Tensor, beta: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Importance of every patch (Eq. 2) and the AVM match logit of true pairs.

    Args:
        audio: ``(B, T, F)`` fbank (any float dtype). video: ``(B, n, 3, H, W)`` uint8 or [0, 1] float.

    Returns:
        ``imp_a (B, Na)``, ``imp_v (B, Nv)`` (each row sums to 1) and ``logit (B,)``.
    """
    fa, fv = model.forward_joint(prepare_audio(audio), prepare_video(video))
    out = avm(fa, fv, return_attn=True)
    return importance(out.attn_logits_va, beta), importance(out.attn_logits_av, beta), out.logit


def importance_share(imp: torch.Tensor, gt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of importance on ground-truth patches, and that share over the uniform one.

    Args:
        imp: ``(B, N)`` non-negative importance.
        gt_mask: ``(B, N)`` bool, True on sounding patches (rows without any are ignored).

    Returns:
        ``share (B',)`` = Σ_gt imp / Σ imp and ``ratio (B',)`` = share / (|gt| / N), over the
        ``B'`` rows with at least one ground-truth patch. A ratio of 1 means no localization.
    """
    if imp.shape != gt_mask.shape:
        raise ValueError(f"imp {tuple(imp.shape)} and gt_mask {tuple(gt_mask.shape)} must have the same shape")
    keep = gt_mask.any(dim=1)
    imp, gt = imp[keep].float(), gt_mask[keep].float()
    share = (imp * gt).sum(1) / imp.sum(1).clamp_min(1e-12)
    uniform = gt.sum(1) / gt.shape[1]
    return share, share / uniform


@torch.no_grad()
def avm_match_accuracy(model, avm: AVMatching, audio: torch.Tensor, video: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> float:
    """Accuracy of the AVM on ``B`` true pairs plus ``B`` deranged pairs (chance = 0.5)."""
    a, v = prepare_audio(audio), prepare_video(video)
    perm = derangement(a.shape[0], generator).to(a.device)
    pos = avm(*model.forward_joint(a, v), return_attn=False).logit
    neg = avm(*model.forward_joint(a, v, video_perm=perm), return_attn=False).logit
    return float(torch.cat([(pos > 0), (neg <= 0)]).float().mean())


def plot_attention_map(
    frames: torch.Tensor, imp_v: torch.Tensor, patch_size: int = 16, title: Optional[str] = None,
    gt_mask: Optional[torch.Tensor] = None,
) -> Figure:
    """Draw video importance over a clip's frames.

    Args:
        frames: ``(n, 3, H, W)`` uint8 (or [0, 1] float) frames of one clip.
        imp_v: ``(n * H/p * W/p,)`` importance of its video patches (frame-major).
        gt_mask: optional ``(n * H/p * W/p,)`` bool ground truth, outlined in white.
    """
    n, _, h, w = frames.shape
    gh, gw = h // patch_size, w // patch_size
    heat = imp_v.detach().float().cpu().view(n, gh, gw)
    img = frames.detach().cpu()
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    fig = Figure(figsize=(2.6 * n, 2.8))
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    vmax = float(heat.max())
    for i, ax in enumerate(axes):
        ax.imshow(img[i].permute(1, 2, 0).numpy())
        up = np.kron(heat[i].numpy(), np.ones((patch_size, patch_size)))
        ax.imshow(up, cmap="inferno", alpha=0.55, vmin=0, vmax=vmax)
        if gt_mask is not None:
            g = gt_mask.view(n, gh, gw)[i]
            for r, c in torch.nonzero(g).tolist():
                ax.add_patch(Rectangle((c * patch_size - 0.5, r * patch_size - 0.5), patch_size, patch_size,
                                       fill=False, edgecolor="white", linewidth=1.5))
        ax.set_title(f"frame {i}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
