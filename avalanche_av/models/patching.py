"""Pure patch and positional-embedding functions for audio (fbank) and video inputs.

Layouts (these fix every index used elsewhere in the package):

* Audio: a fbank ``(B, T, F)`` is cut into ``p x p`` patches **time-major**:
  patch index ``= t * n_freq + f`` with ``n_time = T // p`` and ``n_freq = F // p``.
  The patch vector is ``(p_time, p_freq)`` flattened, length ``p*p``.
* Video: frames ``(B, n_frames, 3, H, W)`` are cut per frame (no tubelets):
  patch index ``= frame * (h * w) + row * w + col``; the patch vector is
  ``(p_row, p_col, channel)`` flattened, length ``3*p*p`` (the MAE convention).
"""
from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

__all__ = [
    "patchify_audio",
    "unpatchify_audio",
    "patchify_video",
    "unpatchify_video",
    "sincos_pos_embed_2d",
    "sincos_pos_embed_1d",
    "gather_patches",
]


def patchify_audio(fbank: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, T, F)`` -> ``(B, n_time * n_freq, p*p)``, time-major."""
    if fbank.dim() != 3:
        raise ValueError(f"audio must be (B, T, F), got shape {tuple(fbank.shape)}")
    _, t, f = fbank.shape
    if t % patch_size or f % patch_size:
        raise ValueError(f"audio (T={t}, F={f}) is not divisible by patch size {patch_size}")
    return rearrange(fbank, "b (t p) (f q) -> b (t f) (p q)", p=patch_size, q=patch_size)


def unpatchify_audio(patches: torch.Tensor, n_time: int, n_freq: int, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify_audio`: ``(B, n_time*n_freq, p*p)`` -> ``(B, T, F)``."""
    return rearrange(
        patches, "b (t f) (p q) -> b (t p) (f q)", t=n_time, f=n_freq, p=patch_size, q=patch_size
    )


def patchify_video(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, n_frames, C, H, W)`` -> ``(B, n_frames * h * w, p*p*C)``."""
    if frames.dim() != 5:
        raise ValueError(f"video must be (B, n_frames, C, H, W), got shape {tuple(frames.shape)}")
    _, _, _, h, w = frames.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"video frames ({h}x{w}) are not divisible by patch size {patch_size}")
    return rearrange(frames, "b n c (h p) (w q) -> b (n h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify_video(
    patches: torch.Tensor, n_frames: int, grid: int, patch_size: int, channels: int = 3
) -> torch.Tensor:
    """Inverse of :func:`patchify_video` for square frames of ``grid x grid`` patches."""
    return rearrange(
        patches,
        "b (n h w) (p q c) -> b n c (h p) (w q)",
        n=n_frames,
        h=grid,
        w=grid,
        p=patch_size,
        q=patch_size,
        c=channels,
    )


def sincos_pos_embed_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Fixed sin-cos embedding of ``positions (M,)`` -> ``(M, dim)``; ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, rows: int, cols: int, first: str = "row") -> torch.Tensor:
    """2-D sin-cos embedding for a ``rows x cols`` grid, row-major -> ``(rows*cols, dim)`` float32.

    Half of the channels encode the row, half the column. ``first`` says which coordinate fills
    the first half. MAE (and CAV-MAE's video table) puts the column first; CAV-MAE's audio table,
    built on the (freq, time) image, puts time first, which is our *row* in the time-major layout.
    Matching both keeps released weights' fixed tables identical to ours.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    if first not in ("row", "col"):
        raise ValueError(f"first must be 'row' or 'col', got {first!r}")
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    halves = [sincos_pos_embed_1d(dim // 2, r.reshape(-1)), sincos_pos_embed_1d(dim // 2, c.reshape(-1))]
    if first == "col":
        halves.reverse()
    return torch.from_numpy(np.concatenate(halves, axis=1)).float()


def gather_patches(patches: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select per-sample patches: ``(B, N, P)`` and ``(B, K)`` -> ``(B, K, P)``."""
    if idx.dim() != 2 or idx.shape[0] != patches.shape[0]:
        raise ValueError(
            f"patch indices must be (B, K) with B={patches.shape[0]}, got {tuple(idx.shape)}"
        )
    return torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
