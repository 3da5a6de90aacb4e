"""Input conventions shared by the template and the plugins.

Samples stay compact until they reach the device: ``audio`` may be fp16 and ``video`` uint8.
:func:`prepare_audio` and :func:`prepare_video` turn them into what the model expects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "prepare_audio",
    "prepare_video",
    "normalize_video_patches",
    "to_uint8_frames",
    "PatchBatch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prepare_audio(audio: torch.Tensor) -> torch.Tensor:
    """``(B, T, F)`` normalised fbank in any float dtype -> float32.

    Non-finite values are not checked here (that would sync the device every step); the
    template instead skips a step whose loss is not finite and counts it.
    """
    if not audio.is_floating_point():
        raise ValueError(f"audio must be a floating-point fbank, got dtype {audio.dtype}")
    return audio.float()


def prepare_video(video: torch.Tensor) -> torch.Tensor:
    """``(B, n, 3, H, W)`` uint8 RGB (or float already in [0, 1]) -> ImageNet-normalised float32.

    Float input is assumed to be in ``[0, 1]``; this is the only other accepted convention.
    """
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be (B, n_frames, 3, H, W), got {tuple(video.shape)}")
    x = video.float()
    if video.dtype == torch.uint8:
        x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class PatchBatch:
    """A minibatch rewritten into per-sample patch subsets (what STELLA trains on).

    ``audio_patches (B, Ka, Pa)`` and ``video_patches (B, Kv, Pv)`` are raw patches (fbank values /
    normalised pixels); ``audio_idx (B, Ka)`` and ``video_idx (B, Kv)`` their original indices.
    A plugin sets ``strategy.mb_patches`` to one of these in ``before_forward``; the template then
    calls ``model.forward_patches`` on it instead of the full clips.
    """

    audio_patches: torch.Tensor
    audio_idx: torch.Tensor
    video_patches: torch.Tensor
    video_idx: torch.Tensor

    def __len__(self) -> int:
        return self.audio_patches.shape[0]

    @staticmethod
    def cat(parts: "list[PatchBatch]") -> "PatchBatch":
        """Concatenate along the batch; all parts must have the same ``Ka`` and ``Kv``."""
        return PatchBatch(
            torch.cat([p.audio_patches for p in parts]),
            torch.cat([p.audio_idx for p in parts]),
            torch.cat([p.video_patches for p in parts]),
            torch.cat([p.video_idx for p in parts]),
        )


def normalize_video_patches(patches: torch.Tensor) -> torch.Tensor:
    """Raw video patches ``(B, K, p*p*3)`` (uint8, or float in [0, 1]; channel last, the
    :func:`~avalanche_av.models.patching.patchify_video` layout) -> ImageNet-normalised float32."""
    x = patches.float()
    if patches.dtype == torch.uint8:
        x = x / 255.0
    b, k, pdim = x.shape
    x = x.view(b, k, pdim // 3, 3)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)
    std = torch.tensor(IMAGENET_STD, device=x.device)
    return ((x - mean) / std).view(b, k, pdim)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Frames as stored in memories: uint8 stays, float in [0, 1] is quantised to uint8."""
    if video.dtype == torch.uint8:
        return video
    return (video.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
