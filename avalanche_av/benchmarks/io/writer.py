"""Writing clips to disk: mp4 (H.264 yuv420p + AAC) via PyAV, and wav via soundfile.

Used by the synthetic stream's disk mode, so that the real decode path is
exercised end to end, and by the tests.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch

from avalanche_av.benchmarks.io.errors import PathLike

__all__ = ["write_av_clip", "write_wav"]

ArrayLike = Union[np.ndarray, torch.Tensor]

# Encoders tried in order; PyPI's PyAV wheels ship libx264, other builds may not.
_H264_ENCODERS = ("libx264", "libopenh264", "h264")


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _audio_1d(audio: ArrayLike, name: str = "audio") -> np.ndarray:
    a = _to_numpy(audio)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (S,), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be float in [-1, 1], got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    # Out-of-range samples would wrap or distort in the encoder; clip them instead.
    return np.clip(a, -1.0, 1.0)


def _audio_channels(audio: ArrayLike, name: str = "audio") -> np.ndarray:
    """``(S,)`` or ``(C, S)`` float audio -> ``(C, S)`` float32 clipped to ``[-1, 1]``."""
    a = _to_numpy(audio)
    if a.ndim == 1:
        return _audio_1d(a, name)[None, :]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] == 0:
        raise ValueError(f"{name} must be (S,) or (C, S) with C >= 1 and S >= 1, got shape {a.shape}")
    return np.stack([_audio_1d(ch, f"{name} channel {i}") for i, ch in enumerate(a)])


def _audio_layout(n_channels: int) -> str:
    # AAC's channel configurations for the counts it has a standard layout for.
    return {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}.get(
        n_channels, f"{n_channels}c")


def _pick_h264_encoder() -> str:
    import av  # noqa: PLC0415

    for name in _H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # av.codec.codec.UnknownCodecError and friends
            continue
    raise RuntimeError("this PyAV/FFmpeg build has no H.264 encoder (tried " + ", ".join(_H264_ENCODERS) + ")")


def write_av_clip(
    path: PathLike,
    frames: ArrayLike,
    fps: float,
    audio: Optional[ArrayLike] = None,
    sample_rate: int = 16000,
    crf: int = 18,
    audio_bitrate: int = 128_000,
    video_options: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write a clip as an mp4 with H.264 (yuv420p) video and, optionally, AAC audio.

    Args:
        path: output file (parent folders are created); normally ``*.mp4``.
        frames: ``(T, H, W, 3)`` uint8 RGB, numpy or torch. ``H`` and ``W`` must be
            even (yuv420p subsamples chroma by 2).
        fps: frame rate; frame ``t`` is shown at ``t / fps`` seconds.
        audio: ``(S,)`` float mono samples, or ``(C, S)`` for ``C`` channels (AAC layouts:
            2 stereo, 6 = 5.1, 8 = 7.1, ...), in ``[-1, 1]`` (values outside are clipped);
            ``None`` for a video-only file.
        sample_rate: rate of ``audio`` in Hz.
        crf: x264 constant rate factor (lower is better quality; 18 is visually
            lossless for natural video).
        audio_bitrate: AAC bit rate in bit/s.
        video_options: extra encoder options, e.g. ``{"g": "12", "bframes": "2"}``
            (keyframe interval, B-frames); they override ``crf``.

    Returns:
        The written path.

    Note:
        AAC pads the last frame to 1024 samples; the container records the true
        length and :func:`~avalanche_av.benchmarks.io.audio.load_audio` trims to it.
    """
    import av  # noqa: PLC0415

    f = _to_numpy(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got shape {f.shape}")
    if f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got dtype {f.dtype}")
    t, h, w, _ = f.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {h}x{w}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    a = _audio_channels(audio) if audio is not None else None
    if a is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    f = np.ascontiguousarray(f)
    with av.open(os.fspath(out), mode="w", format="mp4") as container:
        vstream = container.add_stream(_pick_h264_encoder(), rate=rate)
        vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
        vstream.options = {"crf": str(crf), **{str(k): str(v) for k, v in (video_options or {}).items()}}
        astream = None
        if a is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = _audio_layout(a.shape[0])
            astream.bit_rate = audio_bitrate
        for i in range(t):
            vf = av.VideoFrame.from_ndarray(f[i], format="rgb24")
            vf.pts = i
            container.mux(vstream.encode(vf))
        container.mux(vstream.encode(None))
        if astream is not None:
            # Packed (interleaved) samples: PyAV's planar path mishandles 8+ channels.
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(a.T).reshape(1, -1), format="flt",
                                            layout=_audio_layout(a.shape[0]))
            af.sample_rate = sample_rate
            af.pts = 0
            # PyAV re-chunks the frame to the encoder's frame size (1024 for AAC).
            container.mux(astream.encode(af))
            container.mux(astream.encode(None))
    return out


def write_wav(path: PathLike, audio: ArrayLike, sample_rate: int = 16000, subtype: str = "PCM_16") -> Path:
    """Write ``(S,)`` mono float audio in ``[-1, 1]`` (clipped) as a wav file.

    Args:
        subtype: soundfile subtype, e.g. ``"PCM_16"`` or ``"FLOAT"``.
    """
    import soundfile as sf  # noqa: PLC0415

    a = _audio_1d(audio)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fspath(out), a, sample_rate, subtype=subtype)
    return out
