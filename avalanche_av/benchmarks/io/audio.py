"""Audio decoding: any clip or audio file -> 16 kHz mono float waveform -> fbank.

Backends (``backend=``):

- ``"soundfile"``: libsndfile, for ``.wav``/``.flac``/``.ogg``/``.aiff`` files.
- ``"pyav"``: FFmpeg through PyAV, for containers (mp4, mkv, webm, ...) and mp3.
- ``"decord"``: decord's ``AudioReader`` (x86_64 only, imported lazily). It
  resamples and downmixes inside FFmpeg, so its samples differ slightly from the
  other two backends.
- ``"auto"`` (default): soundfile for the plain audio suffixes above, PyAV for
  everything else. decord is not used automatically: PyAV is always installed,
  decodes audio just as fast, and reports stream problems more precisely.

Multi-channel audio is mixed down by averaging the channels; resampling uses
``torchaudio.functional.resample`` (``torchaudio.load`` is avoided because it now
needs torchcodec).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torchaudio

from avalanche_av.benchmarks.io._common import (
    check_exists,
    decord_message,
    ffmpeg_message,
    import_decord,
    open_container,
    stream_summary,
)
from avalanche_av.benchmarks.io.audio_frontend import SAMPLE_RATE, augment_fbank, waveform_to_fbank
from avalanche_av.benchmarks.io.errors import ClipDecodeError, PathLike

__all__ = ["AUDIO_FILE_SUFFIXES", "AudioBackend", "load_audio", "load_fbank"]

#: Suffixes read with soundfile in ``backend="auto"``.
AUDIO_FILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff"})

AudioBackend = Literal["auto", "soundfile", "pyav", "decord"]


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    """Returns ``(C, S)`` float32 samples and their rate."""
    import soundfile as sf  # noqa: PLC0415

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ClipDecodeError(path, f"corrupt or unreadable audio file ({e})") from e
    return np.ascontiguousarray(data.T), int(sr)


def _read_pyav(path: str) -> tuple[np.ndarray, int]:
    """Returns ``(C, S)`` float32 samples of the first audio stream and their rate."""
    import av  # noqa: PLC0415

    container = open_container(path)
    with container:
        if not container.streams.audio:
            raise ClipDecodeError(path, f"no audio stream ({stream_summary(container)})")
        stream = container.streams.audio[0]
        # Only the sample format is converted (to planar float); layout and rate are
        # kept so that the channel mix and resampling happen in torch for every backend.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        rate = 0
        try:
            for frame in container.decode(stream):
                rate = rate or frame.sample_rate
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except (av.FFmpegError, ValueError) as e:
            raise ClipDecodeError(path, f"audio stream could not be decoded ({ffmpeg_message(e)})") from e
        if not chunks or rate <= 0:
            raise ClipDecodeError(path, "audio stream holds no decodable samples")
        n_ch = min(c.shape[0] for c in chunks)
        data = np.concatenate([c[:n_ch] for c in chunks], axis=1)
        # AAC pads its last frame to 1024 samples; the stream header knows the true length.
        if stream.duration is not None and stream.time_base is not None:
            n_true = int(round(float(stream.duration * stream.time_base) * rate))
            if 0 < n_true < data.shape[1]:
                data = data[:, :n_true]
    return data, rate


def _read_decord(path: str, sample_rate: int) -> tuple[np.ndarray, int]:
    """Returns ``(1, S)`` float32 samples, already resampled by decord."""
    decord = import_decord()
    if decord is None:
        raise ImportError("backend='decord' requested but decord is not installed (x86_64 wheels only)")
    try:
        reader = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=sample_rate, mono=True)
        data = reader[:].asnumpy()
    except Exception as e:  # decord raises DECORDError / RuntimeError for every failure
        msg = decord_message(e)
        if "audio stream" in msg.lower():
            raise ClipDecodeError(path, f"no audio stream (decord: {msg})") from e
        raise ClipDecodeError(path, f"corrupt or unreadable container (decord: {msg})") from e
    return np.asarray(data, dtype=np.float32).reshape(1, -1), sample_rate


def load_audio(
    path: PathLike,
    sample_rate: int = SAMPLE_RATE,
    backend: AudioBackend = "auto",
    min_duration: float = 0.0,
) -> torch.Tensor:
    """Decode the first audio stream of a file into a mono waveform.

    Args:
        path: an audio file (wav, flac, mp3, ...) or a video container with audio.
        sample_rate: output rate in Hz.
        backend: see the module docstring.
        min_duration: clips shorter than this many seconds raise
            :class:`ClipDecodeError` (``"too short"``).

    Returns:
        ``(S,)`` float32 tensor at ``sample_rate``, channels averaged.

    Raises:
        ClipDecodeError: missing file, corrupt container, no audio stream, no
            samples, NaN/Inf samples or too short; the message names the file.
        ValueError: unknown ``backend`` or a non-positive ``sample_rate``.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = check_exists(path)
    if backend == "auto":
        backend = "soundfile" if Path(p).suffix.lower() in AUDIO_FILE_SUFFIXES else "pyav"
    if backend == "soundfile":
        data, sr = _read_soundfile(p)
    elif backend == "pyav":
        data, sr = _read_pyav(p)
    elif backend == "decord":
        data, sr = _read_decord(p, sample_rate)
    else:
        raise ValueError(f"backend must be 'auto', 'soundfile', 'pyav' or 'decord', got {backend!r}")
    if data.size == 0:
        raise ClipDecodeError(p, "audio stream holds no samples")
    wav = torch.from_numpy(data).mean(dim=0)
    if not torch.isfinite(wav).all():
        raise ClipDecodeError(p, "audio contains NaN or Inf samples")
    duration = wav.shape[0] / sr
    if duration < min_duration:
        raise ClipDecodeError(p, f"too short: audio lasts {duration:.3f} s, need at least {min_duration:.3f} s")
    if sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav.contiguous()


def load_fbank(
    path: PathLike,
    target_length: int,
    num_mel_bins: int = 128,
    train: bool = False,
    generator: Optional[torch.Generator] = None,
    backend: AudioBackend = "auto",
    min_duration: float = 0.0,
    noise_std: float = 0.01,
    max_roll: int = 10,
) -> torch.Tensor:
    """Decode a file's audio and turn it into the normalised CAV-MAE fbank.

    ``load_audio`` (16 kHz mono) -> ``waveform_to_fbank`` -> in training only,
    ``augment_fbank`` (additive noise of std ``noise_std`` and a random time roll of
    up to ``max_roll`` frames, drawn from ``generator`` or the global RNG).

    Returns:
        ``(target_length, num_mel_bins)`` float32 tensor.
    """
    if target_length <= 0 or num_mel_bins <= 0:
        raise ValueError(f"target_length and num_mel_bins must be positive, got {target_length}, {num_mel_bins}")
    wav = load_audio(path, SAMPLE_RATE, backend=backend, min_duration=min_duration)
    fbank = waveform_to_fbank(wav, SAMPLE_RATE, target_length, num_mel_bins)
    if train:
        fbank = augment_fbank(fbank, noise_std=noise_std, max_roll=max_roll, generator=generator)
    return fbank

