"""Heads trained on frozen features, the segmentation decoder, and the training loop they share.

Every head is selected on the validation split: :func:`fit_head` trains for at most
``max_epochs``, scores the validation split after each epoch, stops after ``patience`` epochs
without improvement, and returns the head with the best validation score. The test split is
never seen during training or selection.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Standardize",
    "make_head",
    "SegmentationDecoder",
    "dice_loss",
    "bce_dice_loss",
    "FitResult",
    "fit_head",
]


class Standardize(nn.Module):
    """Fixed per-feature standardisation ``(x - mean) / std`` with training-split statistics.

    ``mean``/``std`` are buffers (saved with the head, never trained).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone().clamp_min(eps))

    @staticmethod
    def fit(x: torch.Tensor) -> "Standardize":
        """From training features ``(N, ..., D)``: statistics over every axis but the last."""
        flat = x.reshape(-1, x.shape[-1]).float()
        return Standardize(flat.mean(0), flat.std(0) if flat.shape[0] > 1 else torch.ones(flat.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def make_head(kind: str, in_dim: int, n_out: int, norm: Optional[Standardize] = None, hidden: int = 512,
              dropout: float = 0.1) -> nn.Module:
    """A linear probe or a one-hidden-layer MLP, acting on the last axis (``(..., in_dim)`` -> ``(..., n_out)``).

    Args:
        kind: ``"linear"`` or ``"mlp"`` (Linear, GELU, dropout, Linear).
        norm: optional :class:`Standardize` applied first.
    """
    if kind == "linear":
        body: nn.Module = nn.Linear(in_dim, n_out)
    elif kind == "mlp":
        body = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))
    else:
        raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")
    return nn.Sequential(norm, body) if norm is not None else body


class SegmentationDecoder(nn.Module):
    """A light audio-conditioned decoder from multi-level ViT video tokens to per-frame mask logits.

    Each level's tokens are projected to ``width`` channels and summed on the patch grid (one
    shared resolution: a ViT has no pyramid, so depth plays the part of scale). The frame's
    audio vector (segment-pooled joint audio tokens), projected to ``width``, is broadcast over
    the grid and concatenated, so the decoder can tell which object sounds in *this* frame. Two
    3x3 conv stages follow with a 2x upsampling between them, then a 1x1 conv to one logit map,
    bilinearly resized to the mask size.

    Args:
        n_levels: ``L``.
        dim: token width ``D``.
        audio_dim: width of the per-frame audio vector (``0``: no audio input).
        width: decoder channels.

    ``forward(levels (B, L, g, g, D), audio (B, audio_dim), out_size (H, W)) -> (B, H, W)`` logits;
    ``B`` counts frames (clips x frames flattened).
    """

    def __init__(self, n_levels: int, dim: int, audio_dim: int = 0, width: int = 64) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width)) for _ in range(n_levels))
        self.audio = nn.Sequential(nn.LayerNorm(audio_dim), nn.Linear(audio_dim, width)) if audio_dim else None
        cin = 2 * width if audio_dim else width
        self.stage1 = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1), nn.GroupNorm(8, width // 2), nn.GELU())
        self.out = nn.Conv2d(width // 2, 1, 1)

    def forward(self, levels: torch.Tensor, audio: Optional[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        if levels.dim() != 5 or levels.shape[1] != len(self.proj):
            raise ValueError(f"levels must be (B, {len(self.proj)}, g, g, D), got {tuple(levels.shape)}")
        x = sum(p(levels[:, i].float()) for i, p in enumerate(self.proj))  # (B, g, g, W)
        if self.audio is not None:
            if audio is None:
                raise ValueError("this decoder was built with audio_dim > 0 and needs the audio vector")
            a = self.audio(audio.float())[:, None, None, :].expand_as(x)
            x = torch.cat([x, a], dim=-1)
        x = self.stage1(x.permute(0, 3, 1, 2))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.out(self.stage2(x))
        return F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)[:, 0]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per mask, averaged: ``1 - (2 Σ p g + eps) / (Σ p + Σ g + eps)`` over ``(B, H, W)``.

    The ``eps = 1`` smoothing makes an empty target with an empty prediction cost ~0.
    """
    p = torch.sigmoid(logits).flatten(1)
    g = target.float().flatten(1)
    return (1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (per pixel) plus :func:`dice_loss` (per mask), the usual AVS objective."""
    return F.binary_cross_entropy_with_logits(logits, target.float()) + dice_loss(logits, target)


@dataclass
class FitResult:
    """History of :func:`fit_head`.

    Attributes:
        best_epoch: epoch (1-based) whose validation score was the best; its weights are kept.
        best_val: that score.
        epochs_run: epochs trained before stopping.
        train_loss, val_score: per epoch.
    """

    best_epoch: int
    best_val: float
    epochs_run: int
    train_loss: list = field(default_factory=list)
    val_score: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_val": self.best_val, "epochs_run": self.epochs_run,
                "train_loss": [round(float(x), 5) for x in self.train_loss],
                "val_score": [round(float(x), 5) for x in self.val_score]}


def fit_head(
    head: nn.Module,
    n_train: int,
    train_step_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    val_score: Callable[[nn.Module], float],
    max_epochs: int = 100,
    patience: int = 10,
    min_epochs: int = 0,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "head",
) -> FitResult:
    """Train ``head`` with AdamW and early stopping on a validation score (higher is better).

    Args:
        head: the module to train (modified in place; ends with the best weights).
        n_train: number of training items; minibatches are index tensors into ``range(n_train)``.
        train_step_loss: ``(head, idx (b,) int64) -> scalar loss`` of a training minibatch.
        val_score: ``head -> float`` on the validation split (called in eval mode, no grad).
        max_epochs, patience: stop after ``patience`` epochs without a better validation score.
        min_epochs: never stop before this epoch (a decoder's first epochs often sit on a trivial
            answer, e.g. "no mask", whose score a plateau of patience would otherwise lock in).
        seed: minibatch order.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    if n_train < 1:
        raise ValueError("fit_head needs at least one training item")
    if min_epochs < 0:
        raise ValueError(f"min_epochs must be >= 0, got {min_epochs}")
    if max_epochs < 1 or patience < 1 or batch_size < 1:
        raise ValueError(f"max_epochs, patience and batch_size must be >= 1, got {max_epochs}, {patience}, {batch_size}")
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    best_state = copy.deepcopy(head.state_dict())
    best, best_epoch, since = -math.inf, 0, 0
    res = FitResult(best_epoch=0, best_val=float("nan"), epochs_run=0)
    bar = tqdm(range(1, max_epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        head.train()
        order = torch.randperm(n_train, generator=g)
        total, count = 0.0, 0
        for lo in range(0, n_train, batch_size):
            idx = order[lo:lo + batch_size]
            loss = train_step_loss(head, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        head.eval()
        with torch.no_grad():
            score = float(val_score(head))
        res.train_loss.append(total / count)
        res.val_score.append(score)
        res.epochs_run = epoch
        if score > best:
            best, best_epoch, since = score, epoch, 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            since += 1
        bar.set_postfix(loss=f"{total / count:.3f}", val=f"{score:.3f}", best=f"{best:.3f}")
        if since >= patience and epoch >= min_epochs:
            break
    head.load_state_dict(best_state)
    head.eval()
    res.best_epoch, res.best_val = best_epoch, best
    return res
