"""The CAV-MAE audio front end: waveform -> normalised Kaldi fbank.

Kept identical to CAV-MAE's preprocessing so that released weights stay usable
(docs/datasets.md): 16 kHz mono, mean removal, ``torchaudio.compliance.kaldi.fbank`` with
``htk_compat=True, use_energy=False, window_type='hanning', dither=0,
frame_shift=10``, pad/crop to ``target_length`` frames, then
``(x - FBANK_MEAN) / FBANK_STD``.
"""
from __future__ import annotations

import torch
import torchaudio

__all__ = [
    "SAMPLE_RATE",
    "FBANK_MEAN",
    "FBANK_STD",
    "waveform_to_fbank",
    "augment_fbank",
]

SAMPLE_RATE = 16000
#: Dataset statistics used by CAV-MAE for AudioSet/VGGSound; x_norm = (x - MEAN) / STD.
FBANK_MEAN = -5.081
FBANK_STD = 4.4849


def waveform_to_fbank(
    waveform: torch.Tensor,
    sample_rate: int,
    target_length: int,
    num_mel_bins: int = 128,
    normalize: bool = True,
) -> torch.Tensor:
    """Turn a waveform into a (normalised) log-mel filterbank.

    Args:
        waveform: ``(S,)`` mono or ``(C, S)`` multi-channel samples, any float dtype.
        sample_rate: rate of ``waveform`` in Hz; resampled to 16 kHz if different.
        target_length: number of 10 ms frames to pad (with zeros, before
            normalisation) or crop to.
        num_mel_bins: mel bins F (128 for the base config).
        normalize: apply ``(x - FBANK_MEAN) / FBANK_STD``.

    Returns:
        ``(target_length, num_mel_bins)`` float32 tensor.
    """
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2 or waveform.shape[-1] == 0:
        raise ValueError(f"waveform must be (S,) or (C, S) with S > 0, got {tuple(waveform.shape)}")
    wav = waveform.float().mean(dim=0, keepdim=True)
    if sample_rate != SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, sample_rate, SAMPLE_RATE)
    if not torch.isfinite(wav).all():
        raise ValueError("waveform contains NaN or Inf")
    wav = wav - wav.mean()
    # Kaldi needs at least one 25 ms window.
    if wav.shape[-1] < 400:
        wav = torch.nn.functional.pad(wav, (0, 400 - wav.shape[-1]))
    fbank = torchaudio.compliance.kaldi.fbank(
        wav,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    n = fbank.shape[0]
    if n < target_length:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_length - n))
    elif n > target_length:
        fbank = fbank[:target_length]
    if normalize:
        fbank = (fbank - FBANK_MEAN) / FBANK_STD
    return fbank


def augment_fbank(
    fbank: torch.Tensor,
    noise_std: float = 0.01,
    max_roll: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training-only augmentation of CAV-MAE: small additive noise and a random time roll.

    Args:
        fbank: ``(T, F)`` or ``(B, T, F)`` normalised fbank.
        noise_std: std of the additive Gaussian noise (CAV-MAE uses ``rand * 0.1`` scaled noise;
            we use a Gaussian of this std).
        max_roll: the time roll is drawn uniformly in ``[-max_roll, max_roll]`` frames,
            independently per sample.

    Returns:
        Tensor with the shape and dtype of ``fbank``.
    """
    squeeze = fbank.dim() == 2
    x = fbank.unsqueeze(0) if squeeze else fbank
    b, t, _ = x.shape
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    out = x.float() + noise_std * noise
    if max_roll > 0:
        shift = torch.randint(-max_roll, max_roll + 1, (b,), generator=generator).to(x.device)
        idx = (torch.arange(t, device=x.device).unsqueeze(0) - shift.unsqueeze(1)) % t
        out = torch.gather(out, 1, idx.unsqueeze(-1).expand_as(out))
    out = out.to(fbank.dtype)
    return out.squeeze(0) if squeeze else out
