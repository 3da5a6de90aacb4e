"""Throughput of real-data loading: decoded clips per second with N DataLoader workers.

Builds a fake dataset of VGGSound-like clips (default 10 s, 25 fps, 480x360 H.264 with a
keyframe every 2 s and moving noise texture so that decoding does real work, AAC audio),
then times a DataLoader over :class:`~avalanche_av.benchmarks.real.RealClipDataset` in
training mode (random window, multi-scale crop, fbank noise/roll) for three sources:

- ``raw``: the mp4 files (decord for video where installed, PyAV otherwise; PyAV for audio);
- ``cache-wav``: the ``prepare`` cache (JPEG frames at 1 fps + 16 kHz wav);
- ``cache-fbank``: the ``prepare`` cache with the raw fbank stored as ``.npy``.

Also times ``prepare`` itself (clips/s with the same worker counts). Output shapes follow a
model preset (default ``base``: 4 frames of 224², fbank 1024 x 128).

Run from the repository root::

    python benchmarks_av/bench_decode.py [--clips 48] [--workers 0,1,2] [--preset base]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avalanche_av.benchmarks.io.writer import write_av_clip  # noqa: E402
from avalanche_av.benchmarks.prepare import prepare  # noqa: E402
from avalanche_av.benchmarks.real import RealClipDataset  # noqa: E402
from avalanche_av.models import get_config  # noqa: E402


def textured_clip(seed: int, seconds: float, fps: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Moving noise texture plus a drifting bright square: ``(T, H, W, 3)`` uint8 and a 16 kHz tone."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    tex = rng.integers(0, 256, size=(height + n * 2, width + n * 2, 3), dtype=np.uint8)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        frames[t] = tex[2 * t: 2 * t + height, t: t + width]
        y, x = (20 + 3 * t) % (height - 40), (30 + 5 * t) % (width - 40)
        frames[t, y:y + 40, x:x + 40] = 255
    s = int(seconds * 16000)
    f0 = 200.0 + 40.0 * (seed % 10)
    audio = (0.3 * np.sin(2 * np.pi * f0 * np.arange(s) / 16000) + 0.02 * rng.standard_normal(s)).astype(np.float32)
    return frames, audio


def make_clips(folder: Path, n: int, distinct: int, seconds: float, fps: float, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, sources = [], []
    for i in range(n):
        p = folder / f"clip{i:05d}_000000.mp4"
        if i < distinct:
            frames, audio = textured_clip(i, seconds, fps, width, height)
            # A keyframe every 2 s, as on typical YouTube uploads; crf 23 is x264's default quality.
            write_av_clip(p, frames, fps, audio, 16000, crf=23, video_options={"g": str(int(2 * fps))})
            sources.append(p)
        else:
            shutil.copyfile(sources[i % distinct], p)
        paths.append(p)
    return paths


def time_loader(ds: RealClipDataset, workers: int, batch_size: int, n_samples: int) -> float:
    """Clips per second over ``n_samples`` clips drawn at random, timed after a first (warm-up) batch."""
    sampler = RandomSampler(ds, replacement=True, num_samples=n_samples + batch_size,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)  # starts the workers and fills their prefetch queues
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += batch[0].shape[0]
    return n / max(time.perf_counter() - t0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--distinct", type=int, default=4, help="clips actually encoded; the rest are copies")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--samples", type=int, default=96, help="clips loaded per timing (after one warm-up batch)")
    ap.add_argument("--preset", default="base", help="model preset giving the decoded shapes")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]
    mc = get_config(args.preset)
    shape = dict(n_frames=mc.n_frames, image_size=mc.image_size, target_length=mc.audio_length,
                 num_mel_bins=mc.num_mel_bins)

    print("command: python benchmarks_av/bench_decode.py " + " ".join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs visible, torch {torch.__version__}, threads per process 1")
    print(f"clips: {args.clips} x {args.seconds:g} s, {args.width}x{args.height} @ {args.fps:g} fps, H.264 (g={int(2 * args.fps)}) "
          f"+ AAC; output per clip: video {mc.n_frames}x3x{mc.image_size}x{mc.image_size} uint8, fbank "
          f"{mc.audio_length}x{mc.num_mel_bins} ({args.preset} preset), training mode")
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_decode_"))
    try:
        t0 = time.perf_counter()
        raw = make_clips(tmp / "video", args.clips, args.distinct, args.seconds, args.fps, args.width, args.height)
        print(f"wrote the clips in {time.perf_counter() - t0:.1f} s\n")

        rows = []
        for w in workers:
            cache = tmp / f"prepared_w{w}"
            res = prepare(tmp / "video", cache, num_workers=w, progress=False, image_size=mc.image_size, fps=1.0)
            rows.append(("prepare (wav cache)", w, res.n_ok / res.seconds))
            shutil.rmtree(cache)
        wav_cache, fb_cache = tmp / "prepared", tmp / "prepared_fbank"
        prepare(tmp / "video", wav_cache, num_workers=max(workers), progress=False, image_size=mc.image_size, fps=1.0)
        prepare(tmp / "video", fb_cache, num_workers=max(workers), progress=False, image_size=mc.image_size, fps=1.0,
                audio="fbank", num_mel_bins=mc.num_mel_bins)
        stems = [p.stem for p in raw]
        sources = {
            "raw mp4": [{"video_path": str(p), "audio_path": str(p)} for p in raw],
            "cache-wav": [{"video_path": str(wav_cache / "frames" / s), "audio_path": str(wav_cache / "audio" / f"{s}.wav")}
                          for s in stems],
            "cache-fbank": [{"video_path": str(fb_cache / "frames" / s), "audio_path": str(fb_cache / "audio" / f"{s}.npy")}
                            for s in stems],
        }
        for name, entries in sources.items():
            ds = RealClipDataset(entries, train=True, audio_dtype=torch.float16, **shape)
            for w in workers:
                rows.append((f"load {name}", w, time_loader(ds, w, args.batch_size, args.samples)))
        print(f"{'what':<24}{'workers':>8}{'clips/s':>10}")
        for what, w, v in rows:
            print(f"{what:<24}{w:>8}{v:>10.1f}")
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
