"""The clip dataset the real benchmarks use: :class:`AVClipDataset` plus cached fbank files.

``avalanche-av prepare --audio fbank`` stores each clip's log-mel filterbank (before
padding and normalisation, float16, ``(T, F)``) as ``<stem>.npy``. Reading it skips audio
decoding and the fbank computation; the result equals the normal path up to float16
rounding of the stored values.
"""
from __future__ import annotations

import numpy as np
import torch

from avalanche_av.benchmarks.io.audio_frontend import FBANK_MEAN, FBANK_STD, augment_fbank
from avalanche_av.benchmarks.io.dataset import AVClipDataset
from avalanche_av.benchmarks.io.errors import ClipDecodeError
from avalanche_av.benchmarks.io.video import load_video_frames

__all__ = ["RealClipDataset", "fbank_from_npy", "pad_normalise_fbank"]


def pad_normalise_fbank(raw: torch.Tensor, target_length: int) -> torch.Tensor:
    """Raw log-mel ``(T, F)`` -> zero-pad or crop to ``(target_length, F)``, then normalise.

    Same order as :func:`~avalanche_av.benchmarks.io.audio_frontend.waveform_to_fbank`
    (padding happens before normalisation, so padded frames hold ``-FBANK_MEAN/FBANK_STD``).
    """
    raw = raw.float()
    n = raw.shape[0]
    if n < target_length:
        raw = torch.nn.functional.pad(raw, (0, 0, 0, target_length - n))
    elif n > target_length:
        raw = raw[:target_length]
    return (raw - FBANK_MEAN) / FBANK_STD


def fbank_from_npy(path: str, target_length: int, num_mel_bins: int) -> torch.Tensor:
    """Load a cached raw fbank ``.npy`` and return the normalised ``(target_length, num_mel_bins)`` fbank."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ClipDecodeError(path, f"corrupt or unreadable fbank file ({e})") from e
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ClipDecodeError(path, f"fbank file must hold a (T, F) array, got shape {arr.shape}")
    if arr.shape[1] != num_mel_bins:
        raise ClipDecodeError(
            path, f"cached fbank has {arr.shape[1]} mel bins but {num_mel_bins} are needed; re-run prepare with "
            f"--num-mel-bins {num_mel_bins} or --audio wav"
        )
    return pad_normalise_fbank(torch.from_numpy(arr.astype(np.float32)), target_length)


class RealClipDataset(AVClipDataset):
    """:class:`AVClipDataset` that also reads cached fbank ``.npy`` files as audio.

    Same arguments, attributes and sample tuple ``(audio (T, F), video (n_frames, 3, S, S)
    uint8, target, clip_id)``; construction does no file I/O.
    """

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        apath = self.audio_paths[index]
        if not apath.lower().endswith(".npy"):
            return super().load(index)
        video = load_video_frames(
            self.video_paths[index], self.n_frames, self.image_size, train=self.train,
            backend=self.video_backend, video_id=self.video_ids[index], min_duration=self.min_duration,
        )
        audio = fbank_from_npy(apath, self.target_length, self.num_mel_bins)
        if self.train:
            audio = augment_fbank(audio)
        return audio.to(self.audio_dtype), video, self._targets[index].clone(), self._clip_ids[index].clone()

