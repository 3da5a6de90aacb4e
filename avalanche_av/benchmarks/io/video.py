"""Video decoding: a clip (mp4 file or frame folder) -> ``n_frames`` RGB uint8 frames.

Frame choice (:func:`sample_frame_indices`): ``n_frames`` frames evenly spaced
with an integer stride; in training the window starts at a random frame, in
evaluation it is centred on the clip.

Spatial processing (same for every frame of a clip):

- training: a multi-scale random crop (:func:`multiscale_crop_box`), then a
  resize to ``image_size x image_size``;
- evaluation: a plain resize of the whole frame to ``image_size x image_size``
  (the aspect ratio is not kept; no crop).

Resizing is bilinear with antialiasing, done in torch on the whole clip at once.

Backends: decord first (random access through its keyframe index), PyAV where
decord is missing or fails on the file. PyAV demuxes forward and decodes only
the groups of pictures that hold a wanted frame, up to that frame (see
``_pyav_grab``); only the chosen frames are converted to RGB.
"""
from __future__ import annotations

import math
import os
import re
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avalanche_av.benchmarks.io._common import (
    check_exists,
    decord_message,
    ffmpeg_message,
    import_decord,
    open_container,
    stream_summary,
)
from avalanche_av.benchmarks.io.errors import ClipDecodeError, PathLike

__all__ = [
    "IMAGE_SUFFIXES",
    "MULTISCALE_SCALES",
    "VideoBackend",
    "sample_frame_indices",
    "multiscale_crop_box",
    "resize_frames",
    "crop_resize_frames",
    "list_frame_files",
    "decode_frames",
    "load_video_frames",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Crop sides, as fractions of the frame's shorter side, of the multi-scale crop.
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)

VideoBackend = Literal["auto", "decord", "pyav"]


# --------------------------------------------------------------------------- pure functions
def sample_frame_indices(
    num_frames_total: int,
    n_frames: int,
    train: bool,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Choose ``n_frames`` evenly spaced frame indices of a clip with ``N`` frames.

    With ``N >= n_frames``: stride ``s = N // n_frames``; the window covers
    ``span = (n_frames - 1) * s + 1`` frames and leaves ``slack = N - span`` frames
    unused. Indices are ``start + s * arange(n_frames)`` with

    - evaluation: ``start = slack // 2`` (the window is centred on the clip),
    - training: ``start`` uniform in ``{0, ..., slack}`` (from ``generator``).

    With ``N < n_frames`` frames repeat: ``floor(arange(n_frames) * N / n_frames)``
    in both modes.

    Examples: ``N=10, n=4`` eval -> ``[1, 3, 5, 7]`` (train: start in 0..3);
    ``N=8, n=4`` eval -> ``[0, 2, 4, 6]``; ``N=10, n=1`` eval -> ``[4]``;
    ``N=3, n=4`` -> ``[0, 0, 1, 2]``.

    Returns:
        ``(n_frames,)`` int64 tensor, non-decreasing, values in ``[0, N)``.
    """
    if num_frames_total < 1:
        raise ValueError(f"num_frames_total must be >= 1, got {num_frames_total}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    steps = torch.arange(n_frames, dtype=torch.int64)
    if num_frames_total < n_frames:
        return (steps * num_frames_total) // n_frames
    stride = num_frames_total // n_frames
    slack = num_frames_total - ((n_frames - 1) * stride + 1)
    if train:
        start = int(torch.randint(0, slack + 1, (1,), generator=generator))
    else:
        start = slack // 2
    return start + stride * steps


def multiscale_crop_box(
    height: int,
    width: int,
    generator: Optional[torch.Generator] = None,
    scales: Sequence[float] = MULTISCALE_SCALES,
    max_distort: int = 1,
) -> tuple[int, int, int, int]:
    """Draw a multi-scale crop box ``(top, left, crop_h, crop_w)`` for a ``height x width`` frame.

    Crop height and width are each a scale from ``scales`` times the shorter
    side; their scale positions in ``scales`` differ by at most ``max_distort``
    (so aspect distortion stays mild). The pair is uniform among the allowed pairs
    and the position is uniform over the frame.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    base = min(height, width)
    sides = [max(1, int(base * s)) for s in scales]
    pairs = [(i, j) for i in range(len(sides)) for j in range(len(sides)) if abs(i - j) <= max_distort]
    k = int(torch.randint(0, len(pairs), (1,), generator=generator))
    ch, cw = sides[pairs[k][0]], sides[pairs[k][1]]
    top = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
    return top, left, ch, cw


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a clip ``(T, 3, H, W)`` uint8 to ``(T, 3, size, size)`` uint8 (bilinear, antialiased)."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[-2:] == (size, size):
        return frames
    # torch resizes uint8 directly (fastest on a channels-last layout, which a
    # permuted (T, H, W, 3) decode already is), rounding to the nearest integer.
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_resize_frames(frames: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop every frame of ``(T, 3, H, W)`` to ``box = (top, left, h, w)``, then resize to ``size``."""
    top, left, h, w = box
    return resize_frames(frames[:, :, top : top + h, left : left + w], size)


def _natural_key(name: str) -> list:
    # "frame_10" must sort after "frame_9".
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_frame_files(path: PathLike, video_id: Optional[str] = None) -> list[str]:
    """List the frame images of a pre-extracted clip, in temporal order.

    Two layouts are accepted:

    - a folder of images (``.jpg``, ``.png``, ...) for one clip, in natural name
      order (``frame_2`` before ``frame_10``);
    - CAV-MAE's layout, a root folder with sub-folders ``frame_0/``, ``frame_1/``,
      ... each holding ``{video_id}.jpg``; needs ``video_id``.
    """
    root = check_exists(path, "frame folder")
    if not os.path.isdir(root):
        raise ClipDecodeError(root, "not a directory of frames")
    names = os.listdir(root)
    if video_id is not None:
        subdirs = sorted((n for n in names if n.startswith("frame_") and os.path.isdir(os.path.join(root, n))), key=_natural_key)
        if subdirs:
            files = []
            for d in subdirs:
                for suf in IMAGE_SUFFIXES:
                    f = os.path.join(root, d, f"{video_id}{suf}")
                    if os.path.isfile(f):
                        files.append(f)
                        break
            if not files:
                raise ClipDecodeError(root, f"no frame images for video_id '{video_id}' under frame_*/ sub-folders")
            return files
    files = sorted((n for n in names if n.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
    if not files:
        raise ClipDecodeError(root, "frame folder holds no images (" + "/".join(IMAGE_SUFFIXES) + ")")
    return [os.path.join(root, n) for n in files]


# --------------------------------------------------------------------------- decoders
def _check_duration(path: str, n_total: int, fps: float, min_duration: float) -> None:
    if min_duration > 0 and fps > 0 and n_total / fps < min_duration:
        raise ClipDecodeError(
            path,
            f"too short: video lasts {n_total / fps:.3f} s ({n_total} frame(s) at {fps:.3g} fps), "
            f"need at least {min_duration:.3f} s",
        )


def _decode_decord(
    path: str, n_frames: int, train: bool, generator: Optional[torch.Generator], min_duration: float
) -> np.ndarray:
    decord = import_decord()
    if decord is None:
        raise ImportError("backend='decord' requested but decord is not installed (x86_64 wheels only)")
    try:
        # One thread per reader: data loaders already run one reader per worker process.
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        total, fps = len(reader), float(reader.get_avg_fps())
    except Exception as e:  # decord raises DECORDError / RuntimeError for every failure
        msg = decord_message(e)
        if "video stream" in msg.lower():
            raise ClipDecodeError(path, f"no video stream, or corrupt container (decord: {msg})") from e
        raise ClipDecodeError(path, f"corrupt or unreadable container (decord: {msg})") from e
    if total < 1:
        raise ClipDecodeError(path, "video stream holds no frames")
    _check_duration(path, total, fps, min_duration)
    idx = sample_frame_indices(total, n_frames, train, generator)
    try:
        return reader.get_batch(idx.tolist()).asnumpy()
    except Exception as e:
        raise ClipDecodeError(path, f"video frames could not be decoded (decord: {decord_message(e)})") from e


def _decode_pyav(
    path: str, n_frames: int, train: bool, generator: Optional[torch.Generator], min_duration: float
) -> np.ndarray:
    import av  # noqa: PLC0415

    container = open_container(path)
    with container:
        if not container.streams.video:
            raise ClipDecodeError(path, f"no video stream ({stream_summary(container)})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        total = int(stream.frames or 0)
        if total <= 0 and fps > 0:
            # Some containers (webm, mkv) do not store a frame count; estimate it from the duration.
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
            total = int(round(seconds * fps))
        if total <= 0 or fps <= 0:
            return _pyav_decode_all(path, container, stream, n_frames, train, generator)
        _check_duration(path, total, fps, min_duration)
        idx = sample_frame_indices(total, n_frames, train, generator)
        try:
            picked = _pyav_grab(container, stream, sorted(set(idx.tolist())), fps)
        except _NoTimestamps:
            container.seek(0)
            return _pyav_decode_all(path, container, stream, n_frames, train, generator)
        except av.FFmpegError as e:
            raise ClipDecodeError(path, f"video stream could not be decoded ({ffmpeg_message(e)})") from e
        if picked is None:
            raise ClipDecodeError(path, "video stream holds no decodable frames")
        return np.stack([picked[i] for i in idx.tolist()])


def _pyav_decode_all(path: str, container, stream, n_frames: int, train: bool,
                     generator: Optional[torch.Generator]) -> np.ndarray:
    """Fallback for streams without frame count, rate or timestamps: decode every frame once."""
    import av  # noqa: PLC0415

    try:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.FFmpegError as e:
        raise ClipDecodeError(path, f"video stream could not be decoded ({ffmpeg_message(e)})") from e
    if not frames:
        raise ClipDecodeError(path, "video stream holds no decodable frames")
    idx = sample_frame_indices(len(frames), n_frames, train, generator)
    return np.stack([frames[i] for i in idx.tolist()])


def _pyav_grab(container, stream, wanted: list[int], fps: float) -> Optional[dict[int, np.ndarray]]:
    """Decode the frames at indices ``wanted`` (sorted, unique); returns ``{index: (H, W, 3)}``.

    Frame ``i`` is the first frame whose timestamp reaches ``start + i / fps``
    minus half a frame period; indices past the stream's end (frame count
    over-estimated by the header) get the last frame. Returns ``None`` when no
    frame could be decoded.

    Cost: packets are demuxed in order (cheap, no decoding) until the last wanted
    frame; a group of pictures (keyframe to keyframe) is only sent to the decoder
    once a packet in it reaches the next wanted timestamp, and feeding pauses once
    that frame is out. Unlike seeking, this never decodes a stretch twice when
    keyframes are sparse (ffmpeg's x264 default puts one keyframe per 10 s).
    """
    tb = float(stream.time_base)
    period = 1.0 / (fps * tb)  # one frame, in pts units
    start = stream.start_time or 0
    thresholds = [start + (i - 0.5) * period for i in wanted]
    codec = stream.codec_context
    out: dict[int, np.ndarray] = {}
    state = {"j": 0, "last": None, "floor": -math.inf}

    def consume(frames) -> None:
        for frame in frames:
            if frame.pts is None or frame.pts < state["floor"]:
                # Leading frames of an open GOP reference the skipped previous GOP.
                continue
            state["last"] = frame
            rgb = None
            while state["j"] < len(wanted) and frame.pts >= thresholds[state["j"]]:
                rgb = frame.to_ndarray(format="rgb24") if rgb is None else rgb
                out[wanted[state["j"]]] = rgb
                state["j"] += 1

    pending: list = []  # packets of the current GOP not yet sent to the decoder
    active = False  # the decoder holds state of the current GOP
    max_pts = -math.inf  # largest pts among the current GOP's packets
    for packet in container.demux(stream):
        if packet.size == 0:  # end-of-stream marker
            continue
        if packet.pts is None:
            raise _NoTimestamps
        if packet.is_keyframe and (pending or active):
            if active:
                if state["j"] < len(wanted) and thresholds[state["j"]] < packet.pts:
                    consume(f for p in pending for f in codec.decode(p))
                    consume(codec.decode(None))
                codec.flush_buffers()
            pending, active, max_pts = [], False, -math.inf
            if state["j"] >= len(wanted):
                break
        if not pending and not active:
            state["floor"] = packet.pts if packet.is_keyframe else -math.inf
        pending.append(packet)
        max_pts = max(max_pts, packet.pts)
        if max_pts >= thresholds[state["j"]]:
            consume(f for p in pending for f in codec.decode(p))
            pending, active = [], True
            if state["j"] >= len(wanted):
                break
    if state["j"] < len(wanted):
        consume(f for p in pending for f in codec.decode(p))
        consume(codec.decode(None))
    if state["last"] is None:
        return None
    if state["j"] < len(wanted):
        rgb = state["last"].to_ndarray(format="rgb24")
        for i in wanted[state["j"] :]:
            out[i] = rgb
    return out


class _NoTimestamps(Exception):
    """Packets without pts: fall back to decoding every frame."""


def _decode_folder(
    path: str, n_frames: int, train: bool, generator: Optional[torch.Generator], video_id: Optional[str]
) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    files = list_frame_files(path, video_id)
    idx = sample_frame_indices(len(files), n_frames, train, generator)
    cache: dict[int, np.ndarray] = {}
    for i in idx.tolist():
        if i not in cache:
            try:
                with Image.open(files[i]) as im:
                    cache[i] = np.asarray(im.convert("RGB"))
            except OSError as e:
                raise ClipDecodeError(files[i], f"corrupt or unreadable frame image ({e})") from e
    shapes = {a.shape for a in cache.values()}
    if len(shapes) > 1:
        raise ClipDecodeError(path, f"frame images differ in size: {sorted(shapes)}")
    return np.stack([cache[i] for i in idx.tolist()])


def decode_frames(
    path: PathLike,
    n_frames: int,
    train: bool = False,
    backend: VideoBackend = "auto",
    generator: Optional[torch.Generator] = None,
    video_id: Optional[str] = None,
    min_duration: float = 0.0,
) -> np.ndarray:
    """Decode the ``n_frames`` chosen by :func:`sample_frame_indices`, at full resolution.

    ``path`` is a video file or a frame folder (see :func:`list_frame_files`; the
    ``min_duration`` check does not apply to folders, whose frame rate is unknown).

    Returns:
        ``(n_frames, H, W, 3)`` uint8 numpy array (RGB).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    p = check_exists(path)
    if os.path.isdir(p):
        return _decode_folder(p, n_frames, train, generator, video_id)
    if backend == "pyav":
        return _decode_pyav(p, n_frames, train, generator, min_duration)
    if backend == "decord":
        return _decode_decord(p, n_frames, train, generator, min_duration)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    if import_decord() is None:
        return _decode_pyav(p, n_frames, train, generator, min_duration)
    # The training window start is drawn again by the fallback; keep the generator
    # state so that both backends would draw the same window.
    state = generator.get_state() if generator is not None else None
    try:
        return _decode_decord(p, n_frames, train, generator, min_duration)
    except ClipDecodeError as e:
        if e.reason.startswith("too short"):
            raise
        if generator is not None:
            generator.set_state(state)
        try:
            return _decode_pyav(p, n_frames, train, generator, min_duration)
        except ClipDecodeError as e2:
            # PyAV's diagnosis is the more precise one; keep decord's for context.
            raise ClipDecodeError(p, f"{e2.reason}; decord also failed: {e.reason}") from e2


def load_video_frames(
    path: PathLike,
    n_frames: int,
    image_size: int,
    train: bool = False,
    backend: VideoBackend = "auto",
    generator: Optional[torch.Generator] = None,
    video_id: Optional[str] = None,
    min_duration: float = 0.0,
) -> torch.Tensor:
    """Load ``n_frames`` frames of a clip as the model's uint8 video input.

    Args:
        path: an mp4 (or any FFmpeg-readable) file, or a frame folder.
        n_frames: frames to return, chosen by :func:`sample_frame_indices`.
        image_size: output side S.
        train: random window start and multi-scale random crop (one box for the
            whole clip) then resize; otherwise centred window and plain resize.
        backend: ``"auto"`` (decord, then PyAV on failure or where decord is
            missing), ``"decord"`` or ``"pyav"``.
        generator: RNG for the training randomness (global RNG when ``None``).
        video_id: for CAV-MAE frame folder layouts (``frame_k/{video_id}.jpg``).
        min_duration: shorter videos raise :class:`ClipDecodeError` (``"too short"``).

    Returns:
        ``(n_frames, 3, image_size, image_size)`` uint8 RGB tensor, not normalised.

    Raises:
        ClipDecodeError: missing file, corrupt container, no video stream, no
            decodable frame or too short; the message names the file.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    arr = decode_frames(path, n_frames, train, backend, generator, video_id, min_duration)
    frames = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    if train:
        box = multiscale_crop_box(frames.shape[-2], frames.shape[-1], generator)
        return crop_resize_frames(frames, box, image_size).contiguous()
    return resize_frames(frames, image_size).contiguous()
