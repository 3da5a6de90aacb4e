"""A map-style dataset of real audio-video clips, and a parallel clip scanner.

:class:`AVClipDataset` decodes one clip per ``__getitem__`` and returns the shared
data contract tuple ``(audio, video, target, clip_id)``:

- ``audio``: ``(target_length, num_mel_bins)`` normalised fbank, ``audio_dtype``;
- ``video``: ``(n_frames, 3, image_size, image_size)`` uint8 RGB;
- ``target``: int64 0-d class index (``-1`` unknown);
- ``clip_id``: int64 0-d unique id.

:func:`scan_clips` probes many files cheaply (container headers only, optionally
the first frame of each stream) in a thread pool, to find unusable clips before
training.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from avalanche_av.benchmarks.io._common import open_container
from avalanche_av.benchmarks.io.audio import AudioBackend, check_audio_stream, load_fbank
from avalanche_av.benchmarks.io.errors import ClipDecodeError, PathLike
from avalanche_av.benchmarks.io.video import VideoBackend, list_frame_files, load_video_frames

__all__ = ["AVClipDataset", "probe_clip", "scan_clips"]

Entries = Union[pd.DataFrame, Sequence[Mapping[str, Any]]]
OnError = Literal["raise", "skip"]


def _column(df: pd.DataFrame, name: str) -> Optional[list]:
    return df[name].tolist() if name in df.columns else None


class AVClipDataset(Dataset):
    """Audio-video clips decoded from disk, one per index.

    Args:
        entries: DataFrame or sequence of mappings, one per clip, with
            ``video_path`` (video file or frame folder; required) and optionally
            ``audio_path`` (alias ``wav``; empty or absent = the video file),
            ``target`` (default ``-1``), ``clip_id`` (default the row position) and
            ``video_id`` (for CAV-MAE ``frame_k/{video_id}.jpg`` folders). Other
            columns are ignored. :func:`~avalanche_av.benchmarks.io.manifest.manifest_to_entries`
            builds such a table from a manifest.
        n_frames: video frames per clip.
        image_size: output frame side.
        target_length: fbank frames (10 ms each).
        num_mel_bins: fbank mel bins.
        train: training-mode randomness (frame window start, multi-scale crop,
            fbank noise and roll), drawn from torch's global RNG (DataLoader seeds
            it per worker).
        on_error: ``"raise"`` a :class:`ClipDecodeError` naming the file, or
            ``"skip"``: replace a bad clip by the next readable one (index + 1,
            + 2, ... wrapping around, at most ``max_skip`` tries), warn once per bad
            file and count the replacement.
        audio_dtype: dtype of the returned fbank (float16 halves host memory and
            transfer; the model casts).
        video_backend, audio_backend: decoder choice, see ``load_video_frames`` /
            ``load_audio``.
        min_duration: clips whose audio or video is shorter (seconds) are bad.
        max_skip: replacement attempts before giving up with an error.

    Attributes:
        skipped: number of replacements made **in this process**. With a
            DataLoader using ``num_workers > 0``, each worker holds its own copy of
            the dataset, so this counter (and :attr:`bad_clips`) stays at 0 in the
            main process; the warnings still appear. Run :func:`scan_clips` first,
            or iterate with ``num_workers=0``, for an exact count.
        bad_clips: ``{path: reason}`` of clips found unreadable in this process;
            they are not decoded again.

    Construction does no file I/O (cheap with many clips, picklable for workers).
    """

    def __init__(
        self,
        entries: Entries,
        n_frames: int = 4,
        image_size: int = 224,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        train: bool = False,
        on_error: OnError = "raise",
        audio_dtype: torch.dtype = torch.float32,
        video_backend: VideoBackend = "auto",
        audio_backend: AudioBackend = "auto",
        min_duration: float = 0.0,
        max_skip: int = 16,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if audio_dtype not in (torch.float16, torch.float32, torch.bfloat16):
            raise ValueError(f"audio_dtype must be torch.float16, torch.bfloat16 or torch.float32, got {audio_dtype}")
        for name, v in (("n_frames", n_frames), ("image_size", image_size), ("target_length", target_length),
                        ("num_mel_bins", num_mel_bins)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if max_skip < 0:
            raise ValueError(f"max_skip must be >= 0, got {max_skip}")
        df = entries if isinstance(entries, pd.DataFrame) else pd.DataFrame.from_records(list(entries))
        if "video_path" not in df.columns:
            raise ValueError(f"entries need a 'video_path' column; have {list(df.columns)}")
        n = len(df)
        bad = [i for i, p in enumerate(df["video_path"]) if not isinstance(p, (str, os.PathLike)) or not os.fspath(p)]
        if bad:
            raise ValueError(f"{len(bad)} entries have no valid 'video_path' (first at row {bad[0]}: "
                             f"{df['video_path'].iloc[bad[0]]!r})")
        self.video_paths: list[str] = [os.fspath(p) for p in df["video_path"]]
        audio = _column(df, "audio_path") or _column(df, "wav") or [None] * n
        self.audio_paths: list[str] = [
            os.fspath(a) if isinstance(a, (str, os.PathLike)) and os.fspath(a) else v
            for a, v in zip(audio, self.video_paths)
        ]
        vid = _column(df, "video_id")
        self.video_ids: list[Optional[str]] = [str(v) for v in vid] if vid is not None else [None] * n
        tgt = _column(df, "target")
        self._targets = torch.as_tensor(np.asarray(tgt if tgt is not None else [-1] * n, dtype=np.int64))
        cid = _column(df, "clip_id")
        self._clip_ids = torch.as_tensor(np.asarray(cid if cid is not None else np.arange(n), dtype=np.int64))
        if cid is not None and len(torch.unique(self._clip_ids)) != n:
            raise ValueError("entries' 'clip_id' values must be unique")

        self.n_frames, self.image_size = int(n_frames), int(image_size)
        self.target_length, self.num_mel_bins = int(target_length), int(num_mel_bins)
        self.train, self.on_error, self.audio_dtype = bool(train), on_error, audio_dtype
        self.video_backend, self.audio_backend = video_backend, audio_backend
        self.min_duration, self.max_skip = float(min_duration), int(max_skip)
        self.skipped = 0
        self.bad_clips: dict[str, str] = {}

    # ------------------------------------------------------------------ Avalanche data attributes
    @property
    def targets(self) -> torch.Tensor:
        """``(N,)`` int64 class index of each clip (``-1`` unknown)."""
        return self._targets

    @property
    def clip_ids(self) -> torch.Tensor:
        """``(N,)`` int64 unique clip ids."""
        return self._clip_ids

    def __len__(self) -> int:
        return len(self.video_paths)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (f"AVClipDataset({len(self)} clips, {mode}, {self.n_frames}x{self.image_size}^2 frames, "
                f"fbank {self.target_length}x{self.num_mel_bins}, on_error={self.on_error!r})")

    # ------------------------------------------------------------------ decoding
    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode clip ``index`` with no error handling (raises :class:`ClipDecodeError`)."""
        video = load_video_frames(
            self.video_paths[index], self.n_frames, self.image_size, train=self.train,
            backend=self.video_backend, video_id=self.video_ids[index], min_duration=self.min_duration,
        )
        audio = load_fbank(
            self.audio_paths[index], self.target_length, self.num_mel_bins, train=self.train,
            backend=self.audio_backend, min_duration=self.min_duration,
        )
        return audio.to(self.audio_dtype), video, self._targets[index].clone(), self._clip_ids[index].clone()

    def _bad_key(self, index: int) -> str:
        return f"{self.video_paths[index]} | {self.audio_paths[index]}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} clips")
        index %= n
        if self.on_error == "raise":
            return self.load(index)
        errors: list[str] = []
        for step in range(min(self.max_skip, n - 1) + 1):
            j = (index + step) % n
            key = self._bad_key(j)
            if key in self.bad_clips:
                errors.append(self.bad_clips[key])
                continue
            try:
                sample = self.load(j)
            except ClipDecodeError as e:
                self.bad_clips[key] = str(e)
                errors.append(str(e))
                warnings.warn(f"AVClipDataset: skipping unreadable clip {e}", RuntimeWarning, stacklevel=2)
                continue
            if step:
                self.skipped += 1
            return sample
        raise ClipDecodeError(
            self.video_paths[index],
            f"no readable clip among indices {index}..{(index + len(errors) - 1) % n} "
            f"(on_error='skip', max_skip={self.max_skip}); last error: {errors[-1]}",
        )


# ---------------------------------------------------------------------------- scanning
def probe_clip(
    path: PathLike,
    min_duration: float = 0.0,
    require_audio: bool = True,
    decode: bool = False,
) -> dict[str, Any]:
    """Probe one clip cheaply: container headers only, plus one frame per stream if ``decode``.

    With ``require_audio``, the audio stream's header goes through
    :func:`~avalanche_av.benchmarks.io.audio.check_audio_stream` (channel count, layout,
    sample rate), so a clip the audio decoder would refuse is found here already.

    A frame folder counts as ok when it holds images (its duration is unknown,
    ``has_audio`` is False, and ``require_audio`` does not apply since its audio
    lives in a separate file).

    Returns:
        ``{"path", "ok", "reason", "duration", "has_audio", "has_video"}``;
        ``reason`` is ``""`` when ok, ``duration`` in seconds (NaN when unknown).
    """
    p = os.fspath(path)
    rec: dict[str, Any] = {"path": p, "ok": False, "reason": "", "duration": math.nan,
                           "has_audio": False, "has_video": False}
    try:
        if os.path.isdir(p):
            list_frame_files(p)
            rec.update(ok=True, has_video=True)
            return rec
        container = open_container(p)
        with container:
            vs, aus = container.streams.video, container.streams.audio
            rec["has_video"], rec["has_audio"] = bool(vs), bool(aus)
            durations = [float(s.duration * s.time_base) for s in (*vs[:1], *aus[:1])
                         if s.duration is not None and s.time_base is not None]
            if durations:
                rec["duration"] = max(durations)
            elif container.duration is not None:
                rec["duration"] = container.duration / 1e6
            if not vs:
                raise ClipDecodeError(p, "no video stream")
            if require_audio and not aus:
                raise ClipDecodeError(p, "no audio stream")
            if aus and require_audio:
                # Refuses what the audio decoder cannot handle (e.g. > 64 channels) from the header.
                # (Without require_audio the clip's audio comes from another file.)
                check_audio_stream(p, aus[0])
            if min_duration > 0 and not math.isnan(rec["duration"]) and rec["duration"] < min_duration:
                raise ClipDecodeError(p, f"too short: lasts {rec['duration']:.3f} s, need at least {min_duration:.3f} s")
            if decode:
                for s in (vs[0], *aus[:1]):
                    container.seek(0)
                    if next(iter(container.decode(s)), None) is None:
                        raise ClipDecodeError(p, f"{s.type} stream holds no decodable frame")
        rec["ok"] = True
    except ClipDecodeError as e:
        rec["reason"] = e.reason or str(e)
    except Exception as e:  # a scan must never stop on one odd file
        rec["reason"] = f"{type(e).__name__}: {e}"
    return rec


def scan_clips(
    paths: Sequence[PathLike],
    num_workers: int = 4,
    min_duration: float = 0.0,
    require_audio: bool = True,
    decode: bool = False,
) -> pd.DataFrame:
    """Probe many clips in parallel threads (FFmpeg releases the GIL while probing).

    Args:
        paths: video files or frame folders.
        num_workers: threads; ``<= 1`` probes sequentially.
        min_duration, require_audio, decode: see :func:`probe_clip`.

    Returns:
        DataFrame with columns ``path, ok, reason, duration, has_audio,
        has_video``, one row per input path, in input order.
    """
    paths = list(paths)
    if num_workers <= 1 or len(paths) <= 1:
        rows = [probe_clip(p, min_duration, require_audio, decode) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            rows = list(pool.map(lambda p: probe_clip(p, min_duration, require_audio, decode), paths))
    cols = ["path", "ok", "reason", "duration", "has_audio", "has_video"]
    return pd.DataFrame(rows, columns=cols)
