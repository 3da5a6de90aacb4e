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

Multi-channel audio (any channel count up to :data:`MAX_AUDIO_CHANNELS`, e.g. stereo,
5.1, 7.1) is mixed down by averaging the channels; resampling uses
``torchaudio.functional.resample`` (``torchaudio.load`` is avoided because it now
needs torchcodec).

Before PyAV decodes a stream, :func:`check_audio_stream` reads its header and refuses,
with a :class:`ClipDecodeError` naming the file, what FFmpeg or PyAV cannot handle
(see ``docs/reliability.md``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional

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

__all__ = [
    "AUDIO_FILE_SUFFIXES",
    "AudioBackend",
    "MAX_AUDIO_CHANNELS",
    "MAX_SAMPLE_RATE",
    "check_audio_stream",
    "load_audio",
    "load_fbank",
]

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


#: Most audio channels accepted. FFmpeg's resampler handles at most 64 (``SWR_CH_MAX``) and
#: fails on more; refusing them from the header gives a clearer error.
MAX_AUDIO_CHANNELS = 64
#: Highest sample rate accepted (Hz); anything above is a corrupt header, not real audio.
MAX_SAMPLE_RATE = 768_000


def check_audio_stream(path: str, stream: Any) -> dict[str, Any]:
    """Header probe of a PyAV audio stream: reject what cannot be decoded safely.

    Reads only the stream header (no packet is decoded): channel count, channel layout,
    sample rate, duration and codec.

    Returns:
        ``{"channels", "layout", "sample_rate", "duration", "codec"}``; ``duration`` in
        seconds (NaN when the header has none).

    Raises:
        ClipDecodeError: ``"unsupported audio stream: ..."`` naming the problem: no channels
            or more than :data:`MAX_AUDIO_CHANNELS`, a layout whose channel count disagrees
            with the stream's, a sample rate outside ``1..MAX_SAMPLE_RATE``, or no decoder.
    """
    cc = stream.codec_context
    channels = int(getattr(cc, "channels", 0) or 0)
    layout = getattr(cc, "layout", None)
    layout_channels = len(layout.channels) if layout is not None else channels
    rate = int(getattr(stream, "rate", 0) or getattr(cc, "sample_rate", 0) or 0)
    codec = getattr(getattr(cc, "codec", None), "name", None)
    duration = math.nan
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    info = {"channels": channels, "layout": getattr(layout, "name", ""), "sample_rate": rate,
            "duration": duration, "codec": codec or ""}
    if not codec:
        raise ClipDecodeError(path, "unsupported audio stream: no decoder for its codec")
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise ClipDecodeError(path, f"unsupported audio stream: {channels} channels "
                                    f"(supported: 1..{MAX_AUDIO_CHANNELS})")
    if layout_channels != channels:
        raise ClipDecodeError(path, f"unsupported audio stream: channel layout '{info['layout']}' has "
                                    f"{layout_channels} channels but the stream has {channels}")
    if not 1 <= rate <= MAX_SAMPLE_RATE:
        raise ClipDecodeError(path, f"unsupported audio stream: sample rate {rate} Hz "
                                    f"(supported: 1..{MAX_SAMPLE_RATE})")
    return info


def _packed_to_channels(out: Any) -> np.ndarray:
    """A packed (interleaved) float frame -> ``(C, S)`` float32 samples."""
    n_ch = len(out.layout.channels)
    # to_ndarray of a packed frame is (1, S * C), samples interleaved channel by channel.
    return out.to_ndarray().reshape(-1, n_ch).T


def _read_pyav(path: str) -> tuple[np.ndarray, int]:
    """Returns ``(C, S)`` float32 samples of the first audio stream and their rate."""
    import av  # noqa: PLC0415

    container = open_container(path)
    with container:
        if not container.streams.audio:
            raise ClipDecodeError(path, f"no audio stream ({stream_summary(container)})")
        stream = container.streams.audio[0]
        check_audio_stream(path, stream)
        # Only the sample format is converted, to *packed* float: layout and rate are kept so
        # that the channel mix and resampling happen in torch for every backend. Planar
        # "fltp" must not be used: PyAV 18 miscounts the planes of a planar frame with 8 or
        # more channels (9 for 8) and to_ndarray() then reads past the frame and segfaults.
        # A packed frame has one plane whatever the channel count.
        resampler = av.AudioResampler(format="flt")
        chunks: list[np.ndarray] = []
        rate = 0
        try:
            for frame in container.decode(stream):
                rate = rate or frame.sample_rate
                for out in resampler.resample(frame):
                    chunks.append(_packed_to_channels(out))
            for out in resampler.resample(None):
                chunks.append(_packed_to_channels(out))
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

