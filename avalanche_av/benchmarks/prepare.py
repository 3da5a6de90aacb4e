"""``avalanche-av prepare``: decode a folder of raw videos once into a training cache.

For every video file under ``src`` (recursively; ``.mp4``, ``.mkv``, ``.webm``, ...) the
cache ``out`` gets::

    out/frames/<stem>/frame_0000.jpg ...   frames at a fixed rate (``fps``), resized
    out/audio/<stem>.wav                   16 kHz mono PCM (or .flac, or .npy raw fbank)
    out/manifest.json                      CAV-MAE-style manifest of the finished clips
    out/prepare_report.csv                 the bad clips: video_id, path, category, reason
    out/prepare_log.jsonl                  one line per processed clip (the resume state)
    out/prepare_config.json                the settings the cache was made with

Frames: ``n = clamp(floor(duration * fps), 1, max_frames)`` frames evenly spaced over the
clip (the centred integer-stride choice of
:func:`~avalanche_av.benchmarks.io.video.sample_frame_indices`, i.e. one frame every
``native_fps / fps`` frames), resized so that the shorter side is ``image_size`` (or to a
square with ``square=True``), JPEG quality ``jpeg_quality``.

Bad clips are reported, never fatal: ``unreadable`` (missing, corrupt or undecodable),
``no_audio`` (no audio stream, with ``require_audio``), ``no_video``, ``too_short``
(shorter than ``min_duration``), ``unsupported`` (an audio header the decoder refuses, e.g.
more than 64 channels), ``crashed`` (the decoder died: a native crash such as SIGSEGV),
``timeout`` (a clip ran past ``clip_timeout``), ``other``.

Native crashes are contained: with ``num_workers >= 1`` every clip is decoded in a worker
process of a :class:`~avalanche_av.benchmarks.io.isolation.ContainedPool`; a worker that
dies or hangs is replaced, only its clip is recorded as bad, and the run goes on. Each clip
is logged as *attempted* (``"status": "started"``) before it is decoded, so even with
``num_workers=0`` (decoding in this process, where a crash does end the run) the next run
records the clip that killed the process as ``crashed`` and moves on instead of dying on
it again.

Resumable: each clip's outputs are written to temporary names and renamed when complete,
then the clip is appended to the log. A later run skips every clip the log lists as done
(whose outputs still exist) or as bad (unless ``retry_bad``), so running twice does no
work the second time. ``manifest.json`` and ``prepare_report.csv`` are replaced
atomically (written to a temporary name, then renamed) at the start, every
``manifest_interval`` seconds and at the end, so a run killed at any moment, even with
SIGKILL, leaves a valid manifest of the clips finished until shortly before. Settings are
checked against ``prepare_config.json``; a cache made with other settings is refused
unless ``overwrite=True``. See ``docs/reliability.md``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from avalanche_av.benchmarks.io.errors import BAD_CATEGORIES, ClipDecodeError, PathLike, categorise_reason
from avalanche_av.benchmarks.io.isolation import ContainedPool, JobOutcome
from avalanche_av.benchmarks.real.readers import VIDEO_SUFFIXES

__all__ = [
    "PrepareConfig",
    "PrepareResult",
    "BAD_CATEGORIES",
    "prepare",
    "prepare_clip",
    "find_videos",
    "categorise_reason",
    "resize_short_side",
]

AudioFormat = Literal["wav", "flac", "fbank"]
_LOG, _CONFIG, _MANIFEST, _REPORT = "prepare_log.jsonl", "prepare_config.json", "manifest.json", "prepare_report.csv"


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of a cache (stored in ``prepare_config.json``).

    Attributes:
        fps: frames kept per second of video.
        image_size: target side (the shorter side, or both with ``square``).
        square: resize to ``image_size x image_size`` (aspect not kept) instead.
        max_frames: most frames kept per clip.
        audio: ``"wav"`` (16-bit PCM), ``"flac"`` (lossless, smaller) or ``"fbank"`` (the raw
            log-mel filterbank ``(T, num_mel_bins)`` as float16 ``.npy``, before padding and
            normalisation; decoding then skips the audio front end).
        num_mel_bins: mel bins of the cached fbank (``audio="fbank"`` only).
        min_duration: clips shorter than this (seconds) are ``too_short``.
        require_audio: clips without an audio stream are ``no_audio``.
        jpeg_quality: 1-95.
    """

    fps: float = 1.0
    image_size: int = 224
    square: bool = False
    max_frames: int = 32
    audio: AudioFormat = "wav"
    num_mel_bins: int = 128
    min_duration: float = 1.0
    require_audio: bool = True
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        for name in ("image_size", "max_frames", "num_mel_bins"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.audio not in ("wav", "flac", "fbank"):
            raise ValueError(f"audio must be 'wav', 'flac' or 'fbank', got {self.audio!r}")
        if self.min_duration < 0:
            raise ValueError(f"min_duration must be >= 0, got {self.min_duration}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PrepareResult:
    """What a :func:`prepare` run did.

    Attributes:
        out_dir: the cache.
        n_total: clips found under ``src`` (after ``only``).
        n_processed: clips decoded in this run (ok + bad).
        n_ok: clips of this run that were cached.
        n_bad: clips of this run found bad.
        n_skipped: clips skipped because an earlier run finished them (ok or bad).
        report: every bad clip in the cache (this and earlier runs): ``video_id, path,
            category, reason``.
        manifest_path, report_path: the written files.
        seconds: wall time of this run.
        n_cached: clips in the cache's manifest after this run.
        n_crashed: clips of this run whose decoder crashed or timed out (their workers were
            replaced; they are among ``n_bad``).
        n_died_earlier: clips an earlier run was decoding in its own process when that
            process died; recorded as ``crashed`` now instead of being decoded again.
    """

    out_dir: Path
    n_total: int
    n_processed: int
    n_ok: int
    n_bad: int
    n_skipped: int
    report: pd.DataFrame
    manifest_path: Path
    report_path: Path
    seconds: float = 0.0
    n_cached: int = 0
    n_crashed: int = 0
    n_died_earlier: int = 0

    def summary(self) -> str:
        lines = [
            f"prepare: {self.n_total} clips, {self.n_processed} processed in this run "
            f"({self.n_ok} ok, {self.n_bad} bad), {self.n_skipped} already done; "
            f"{self.n_cached} clips in the cache, {len(self.report)} bad in total; {self.seconds:.1f} s",
        ]
        if self.n_crashed:
            lines.append(f"{self.n_crashed} clip(s) crashed or hung the decoder; their workers were replaced")
        if self.n_died_earlier:
            lines.append(f"{self.n_died_earlier} clip(s) killed an earlier run while being decoded; recorded as "
                         f"crashed, not retried (--retry-bad retries them)")
        if len(self.report):
            counts = self.report["category"].value_counts()
            lines.append("bad clips: " + ", ".join(f"{k}: {int(v)}" for k, v in counts.items()))
            for _, r in self.report.head(5).iterrows():
                lines.append(f"  {r['video_id']} ({r['category']}): {r['reason']}")
            if len(self.report) > 5:
                lines.append(f"  ... {len(self.report) - 5} more in {self.report_path}")
        lines.append(f"manifest: {self.manifest_path}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- pure helpers
def resize_short_side(frames: torch.Tensor, size: int, square: bool = False) -> torch.Tensor:
    """Resize ``(T, 3, H, W)`` uint8 so that the shorter side is ``size`` (or to ``size x size``).

    Bilinear with antialiasing. Returns ``(T, 3, H', W')`` uint8.
    """
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (T, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if square:
        oh = ow = size
    else:
        s = size / min(h, w)
        oh, ow = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (oh, ow) == (h, w):
        return frames
    return F.interpolate(frames, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)


def find_videos(src: PathLike, suffixes: Iterable[str] = VIDEO_SUFFIXES, exclude: Sequence[PathLike] = ()) -> list[Path]:
    """Video files under ``src`` (recursive, sorted), skipping folders in ``exclude``.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ValueError: two files share a stem (the cache is keyed by stem).
    """
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    sufs = {s.lower() for s in suffixes}
    skip = {os.path.abspath(p) for p in exclude}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) not in skip)
        found += [Path(dirpath) / f for f in sorted(filenames) if os.path.splitext(f)[1].lower() in sufs]
    stems: dict[str, Path] = {}
    dups = []
    for p in found:
        if p.stem in stems:
            dups.append((stems[p.stem], p))
        stems.setdefault(p.stem, p)
    if dups:
        ex = "; ".join(f"{a} and {b}" for a, b in dups[:3])
        raise ValueError(f"{len(dups)} video files share a file stem with another ({ex}); the cache is keyed by stem")
    return found


# --------------------------------------------------------------------------- one clip
def _frame_count(duration: float, cfg: PrepareConfig) -> int:
    if not math.isfinite(duration) or duration <= 0:
        return cfg.max_frames
    return int(min(cfg.max_frames, max(1, math.floor(duration * cfg.fps + 1e-6))))


def prepare_clip(path: PathLike, out_dir: PathLike, cfg: PrepareConfig) -> dict[str, Any]:
    """Decode one clip into the cache (the per-worker job).

    Returns:
        ``{"video_id", "source", "status": "ok"|"bad", "category", "reason", "n_frames",
        "duration", "video_path", "wav"}`` with cache-relative output paths.
    """
    from PIL import Image  # noqa: PLC0415

    from avalanche_av.benchmarks.io.audio import load_audio  # noqa: PLC0415
    from avalanche_av.benchmarks.io.audio_frontend import SAMPLE_RATE, waveform_to_fbank  # noqa: PLC0415
    from avalanche_av.benchmarks.io.dataset import probe_clip  # noqa: PLC0415
    from avalanche_av.benchmarks.io.video import decode_frames  # noqa: PLC0415
    from avalanche_av.benchmarks.io.writer import write_wav  # noqa: PLC0415

    src, out = Path(path), Path(out_dir)
    stem = src.stem
    rec: dict[str, Any] = {"video_id": stem, "source": os.fspath(src), "status": "bad", "category": "", "reason": "",
                           "n_frames": 0, "duration": float("nan"), "video_path": "", "wav": ""}
    tmp_tag = f".tmp-{uuid.uuid4().hex[:8]}"
    frame_dir = out / "frames" / stem
    tmp_dir = out / "frames" / f"{stem}{tmp_tag}"
    suffix = {"wav": ".wav", "flac": ".flac", "fbank": ".npy"}[cfg.audio]
    audio_path = out / "audio" / f"{stem}{suffix}"
    tmp_audio = out / "audio" / f"{stem}{tmp_tag}{suffix}"
    try:
        probe = probe_clip(src, min_duration=cfg.min_duration, require_audio=cfg.require_audio)
        rec["duration"] = float(probe["duration"])
        if not probe["ok"]:
            raise ClipDecodeError(src, probe["reason"])
        wav = load_audio(src, SAMPLE_RATE, min_duration=cfg.min_duration) if cfg.require_audio or probe["has_audio"] else None
        n = _frame_count(rec["duration"], cfg)
        arr = decode_frames(src, n, train=False, min_duration=cfg.min_duration)
        frames = resize_short_side(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2), cfg.image_size,
                                   cfg.square)
        frames_np = frames.permute(0, 2, 3, 1).contiguous().numpy()
        tmp_dir.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames_np):
            Image.fromarray(f).save(tmp_dir / f"frame_{i:04d}.jpg", quality=cfg.jpeg_quality)
        if wav is not None:
            tmp_audio.parent.mkdir(parents=True, exist_ok=True)
            if cfg.audio == "fbank":
                n_fb = max(1, 1 + (wav.shape[0] - 400) // 160)
                fb = waveform_to_fbank(wav, SAMPLE_RATE, n_fb, cfg.num_mel_bins, normalize=False)
                with open(tmp_audio, "wb") as fh:
                    np.save(fh, fb.numpy().astype(np.float16))
            elif cfg.audio == "flac":
                import soundfile as sf  # noqa: PLC0415

                sf.write(os.fspath(tmp_audio), wav.clamp(-1, 1).numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            else:
                write_wav(tmp_audio, wav, SAMPLE_RATE)
            os.replace(tmp_audio, audio_path)
            rec["wav"] = f"audio/{stem}{suffix}"
        if frame_dir.exists():
            shutil.rmtree(frame_dir)
        os.replace(tmp_dir, frame_dir)
        rec.update(status="ok", n_frames=int(len(frames_np)), video_path=f"frames/{stem}")
    except ClipDecodeError as e:
        reason = e.reason or str(e)
        rec.update(category=categorise_reason(reason), reason=reason)
    except Exception as e:  # one odd file must never stop a long run
        rec.update(category="other", reason=f"{type(e).__name__}: {e}")
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if tmp_audio.exists():
            tmp_audio.unlink()
    return rec


ClipFn = Callable[[PathLike, PathLike, PrepareConfig], dict]


def _worker_init() -> None:
    # Each worker decodes one clip at a time; torch's intra-op threads would only oversubscribe.
    torch.set_num_threads(1)


def _work(clip_fn: ClipFn, args: tuple[str, str, dict]) -> dict[str, Any]:
    path, out, cfg = args
    return clip_fn(path, out, PrepareConfig(**cfg))


def _run_jobs(
    jobs: list[tuple[int, tuple[str, str, dict]]],
    num_workers: int,
    clip_fn: ClipFn,
    on_start: Callable[[int], None],
    start_method: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Iterator[JobOutcome]:
    """Run ``(key, job)`` pairs in this process (``num_workers=0``) or in a :class:`ContainedPool`.

    ``on_start(key)`` runs before each job starts (the log's "attempted" record).
    """
    fn = functools.partial(_work, clip_fn)
    if num_workers == 0:
        for key, job in jobs:
            on_start(key)
            try:
                yield JobOutcome(key, True, fn(job))
            except Exception as e:  # noqa: BLE001  (prepare_clip catches its own; a custom clip_fn may not)
                yield JobOutcome(key, False, None, f"{type(e).__name__}: {e}")
        return
    # fork (as torch's DataLoader does on Linux) starts workers at once; spawn would re-import
    # the package and Avalanche in every worker (~7 s each).
    with ContainedPool(fn, min(num_workers, max(1, len(jobs))), timeout=timeout, start_method=start_method,
                       initializer=_worker_init) as pool:
        yield from pool.imap(jobs, on_start=on_start)


# --------------------------------------------------------------------------- the pipeline
def _read_log(path: Path) -> dict[str, dict]:
    """Last record per ``video_id`` of the log (a torn last line from a crash is ignored).

    Statuses: ``ok``, ``bad`` (final), ``started`` (attempted: decoding began and no final
    record followed, so the run died meanwhile) and ``cancelled`` (interrupted cleanly).
    """
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[r["video_id"]] = r
    return records


def _outputs_exist(out: Path, r: dict) -> bool:
    return bool(r.get("video_path")) and (out / r["video_path"]).is_dir() and (not r.get("wav") or (out / r["wav"]).is_file())


def _write_outputs(out: Path, records: dict[str, dict]) -> tuple[Path, Path, pd.DataFrame, int]:
    from avalanche_av.benchmarks.io.manifest import write_manifest  # noqa: PLC0415

    ok = [r for r in records.values() if r["status"] == "ok" and _outputs_exist(out, r)]
    ok.sort(key=lambda r: r["video_id"])
    entries = [{"video_id": r["video_id"], "wav": r["wav"], "video_path": r["video_path"], "labels": "",
                "n_frames": r["n_frames"], "duration": None if not math.isfinite(r["duration"]) else r["duration"],
                "source": r["source"]} for r in ok]
    manifest = out / _MANIFEST
    # A unique temporary name, renamed over the old file: readers (and a run killed meanwhile)
    # only ever see a complete manifest.
    tmp = out / f"{_MANIFEST}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if entries:
            write_manifest(tmp, entries)
        else:
            tmp.write_text(json.dumps({"data": []}))
        os.replace(tmp, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    bad = sorted((r for r in records.values() if r["status"] == "bad"), key=lambda r: r["video_id"])
    report = pd.DataFrame({"video_id": [r["video_id"] for r in bad], "path": [r["source"] for r in bad],
                           "category": [r["category"] for r in bad], "reason": [r["reason"] for r in bad]})
    report_path = out / _REPORT
    tmp_report = out / f"{_REPORT}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        report.to_csv(tmp_report, index=False)
        os.replace(tmp_report, report_path)
    finally:
        tmp_report.unlink(missing_ok=True)
    return manifest, report_path, report, len(ok)


def _bad_record(path: Path, reason: str) -> dict[str, Any]:
    return {"video_id": path.stem, "source": os.fspath(path), "status": "bad", "category": categorise_reason(reason),
            "reason": reason, "n_frames": 0, "duration": float("nan"), "video_path": "", "wav": ""}


#: Reason recorded for a clip that an earlier run was decoding in its own process when it died.
DIED_EARLIER_REASON = ("decoder crashed (the process died while decoding this clip in an earlier run, "
                       "with num_workers=0; --retry-bad tries it again)")


def prepare(
    src: PathLike,
    out: PathLike,
    config: Optional[PrepareConfig] = None,
    *,
    num_workers: int = 4,
    progress: bool = True,
    retry_bad: bool = False,
    overwrite: bool = False,
    only: Optional[Iterable[str]] = None,
    files: Optional[Sequence[PathLike]] = None,
    start_method: Optional[str] = None,
    clip_timeout: Optional[float] = 600.0,
    manifest_interval: float = 10.0,
    clip_fn: Optional[ClipFn] = None,
    **overrides: Any,
) -> PrepareResult:
    """Decode every video under ``src`` into the cache ``out`` (see the module docstring).

    Args:
        src: folder of raw videos (searched recursively; ``out`` is skipped if inside it).
        out: cache folder (created).
        config: settings; keyword ``overrides`` replace single fields (``fps=2``, ...).
        num_workers: worker processes, each clip decoded in one where a native crash is
            contained; ``0`` decodes in this process (a crash then ends the run, and the next
            run records the clip as ``crashed`` instead of retrying it).
        progress: show a tqdm progress bar.
        retry_bad: decode again the clips an earlier run found bad (crashed ones included).
        overwrite: accept a cache made with other settings (its clips are redone).
        only: restrict to these file stems (e.g. the clips a benchmark uses).
        files: explicit video files instead of searching ``src``.
        start_method: multiprocessing start method of the workers (default ``"fork"`` where
            available, else ``"spawn"``).
        clip_timeout: seconds one clip may take in a worker before the worker is killed and
            the clip recorded as ``timeout`` (``None``: no limit; not applied with
            ``num_workers=0``).
        manifest_interval: seconds between atomic rewrites of ``manifest.json`` and the report
            during the run (``0``: after every clip).
        clip_fn: the per-clip job, called as ``clip_fn(path, out_dir, config)`` and returning
            :func:`prepare_clip`'s record (default :func:`prepare_clip`; with ``"spawn"`` it
            must be importable). Meant for tests and custom pipelines.

    Returns:
        A :class:`PrepareResult`; its ``summary()`` is what the CLI prints.

    Raises:
        ValueError: the cache was made with other settings (and not ``overwrite``), bad
            settings, or duplicate stems.
    """
    t0 = time.time()
    base = config if config is not None else PrepareConfig()
    if overrides:
        known = {f.name for f in dataclasses.fields(PrepareConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown prepare option(s) {bad}; allowed: {sorted(known)}")
        base = dataclasses.replace(base, **overrides)
    cfg = base
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if clip_timeout is not None and not clip_timeout > 0:
        raise ValueError(f"clip_timeout must be > 0 seconds or None, got {clip_timeout}")
    if not manifest_interval >= 0:
        raise ValueError(f"manifest_interval must be >= 0 seconds, got {manifest_interval}")
    clip_fn = prepare_clip if clip_fn is None else clip_fn
    out_dir = Path(out)
    videos = [Path(f) for f in files] if files is not None else find_videos(src, exclude=[out_dir])
    if only is not None:
        wanted = set(only)
        videos = [v for v in videos if v.stem in wanted]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "frames").mkdir(exist_ok=True)
    (out_dir / "audio").mkdir(exist_ok=True)

    cfg_path, log_path = out_dir / _CONFIG, out_dir / _LOG
    if cfg_path.is_file():
        have = json.loads(cfg_path.read_text())
        if have != cfg.to_json():
            if not overwrite:
                diff = {k: (have.get(k), v) for k, v in cfg.to_json().items() if have.get(k) != v}
                raise ValueError(f"cache {out_dir} was made with other settings {diff} (cached, requested); "
                                 f"pass overwrite=True (--overwrite) to redo it, or choose another folder")
            log_path.unlink(missing_ok=True)
    cfg_path.write_text(json.dumps(cfg.to_json(), indent=1))
    # Half-written outputs of clips whose worker (or run) died keep their temporary names.
    for d in (out_dir / "frames", out_dir / "audio"):
        for e in os.scandir(d):
            if ".tmp-" in e.name:
                shutil.rmtree(e.path, ignore_errors=True) if e.is_dir() else os.unlink(e.path)

    records = _read_log(log_path)
    # A clip whose last record is "started" was being decoded when its run died. Decoded in
    # the run's own process, it is the prime suspect: record it as crashed so that this run
    # does not die on it again. Decoded in a worker, the worker's death would have been
    # caught; the run itself was killed (Ctrl-C, SIGKILL), so the clip is simply redone.
    died = [r for r in records.values() if r["status"] == "started" and r.get("in_process")]
    todo: list[Path] = []
    n_skipped = 0
    with open(log_path, "a", encoding="utf-8") as log:

        def append(rec: dict) -> None:
            log.write(json.dumps(rec) + "\n")
            log.flush()  # on disk before the next clip: a crash loses at most this line

        for r in died:
            rec = _bad_record(Path(r["source"]), DIED_EARLIER_REASON)
            rec["video_id"] = r["video_id"]
            append(rec)
            records[r["video_id"]] = rec
        died_ids = {r["video_id"] for r in died}
        for v in videos:
            r = records.get(v.stem)
            done = r is not None and (
                (r["status"] == "ok" and _outputs_exist(out_dir, r)) or (r["status"] == "bad" and not retry_bad))
            if done or (v.stem in died_ids and not retry_bad):
                n_skipped += 1
            else:
                todo.append(v)
        n_died_earlier = sum(1 for v in videos if v.stem in died_ids)

        n_ok = n_bad = n_crashed = 0
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(todo), desc="prepare", unit="clip", disable=not progress or not todo)
        in_process = num_workers == 0
        in_flight: set[int] = set()

        def on_start(key: int) -> None:
            v = todo[key]
            append({"video_id": v.stem, "source": os.fspath(v), "status": "started", "in_process": in_process})
            in_flight.add(key)

        # The manifest of what is already done exists from the start, and is rewritten
        # atomically as the run goes, so that a run killed at any point leaves a usable cache.
        _write_outputs(out_dir, records)
        last_write = time.monotonic()
        try:
            jobs = [(i, (os.fspath(v), os.fspath(out_dir), cfg.to_json())) for i, v in enumerate(todo)]
            for res in _run_jobs(jobs, num_workers, clip_fn, on_start, start_method, clip_timeout):
                in_flight.discard(res.key)
                v = todo[res.key]
                if res.ok:
                    rec = res.result
                else:
                    rec = _bad_record(v, res.error)
                    n_crashed += res.crashed or res.timed_out
                append(rec)
                records[rec["video_id"]] = rec
                if rec["status"] == "ok":
                    n_ok += 1
                else:
                    n_bad += 1
                bar.update(1)
                if time.monotonic() - last_write >= manifest_interval:
                    _write_outputs(out_dir, records)
                    last_write = time.monotonic()
        finally:
            bar.close()
            # Interrupted cleanly (Ctrl-C, an exception): the clips in flight are not to blame.
            for key in sorted(in_flight):
                append({"video_id": todo[key].stem, "source": os.fspath(todo[key]), "status": "cancelled"})
            manifest, report_path, report, n_cached = _write_outputs(out_dir, records)
    return PrepareResult(
        out_dir=out_dir, n_total=len(videos), n_processed=n_ok + n_bad, n_ok=n_ok, n_bad=n_bad, n_skipped=n_skipped,
        report=report, manifest_path=manifest, report_path=report_path, seconds=time.time() - t0, n_cached=n_cached,
        n_crashed=n_crashed, n_died_earlier=n_died_earlier,
    )
