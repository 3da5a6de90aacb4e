"""Command-line pieces for the real benchmarks (``avalanche-av prepare`` / ``stats`` / ``run --benchmark``).

``avalanche_av/cli.py`` registers the subcommands with :func:`add_prepare_parser` and
:func:`add_stats_parser` and dispatches to :func:`run_prepare` / :func:`run_stats`;
``avalanche_av.experiment.build_benchmark`` calls :func:`benchmark_from_run_config`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = [
    "REAL_BENCHMARKS",
    "parse_benchmark_name",
    "add_prepare_parser",
    "run_prepare",
    "add_stats_parser",
    "run_stats",
    "build_real_benchmark",
    "benchmark_from_run_config",
]

#: Benchmark names accepted by ``--benchmark`` (``-shuffled``: the task order of paper Table 7).
REAL_BENCHMARKS = ("continual-vs", "continual-vs-shuffled", "continual-as", "continual-as-shuffled")


def parse_benchmark_name(name: str) -> tuple[str, bool]:
    """``"continual-vs-shuffled"`` -> ``("continual_vs", True)``; ``ValueError`` for unknown names."""
    if name not in REAL_BENCHMARKS:
        raise ValueError(f"unknown real benchmark {name!r}; allowed: {list(REAL_BENCHMARKS)}")
    shuffled = name.endswith("-shuffled")
    base = name[: -len("-shuffled")] if shuffled else name
    return base.replace("-", "_"), shuffled


def build_real_benchmark(
    benchmark: str,
    data_root: str,
    model: str = "base",
    **kwargs: Any,
):
    """Build a real benchmark whose decoding parameters match the model preset ``model``.

    ``n_frames``, ``image_size``, ``target_length`` (= the preset's ``audio_length``) and
    ``num_mel_bins`` come from the preset; ``kwargs`` go to :func:`continual_vs` /
    :func:`continual_as`.
    """
    from avalanche_av.models import get_config  # noqa: PLC0415

    from .continual import continual_as, continual_vs  # noqa: PLC0415

    if not data_root:
        raise ValueError(f"--benchmark {benchmark} needs --data-root PATH (the local dataset copy)")
    name, shuffled = parse_benchmark_name(benchmark)
    mc = get_config(model)
    decode = dict(n_frames=mc.n_frames, image_size=mc.image_size, target_length=mc.audio_length,
                  num_mel_bins=mc.num_mel_bins)
    gen = continual_vs if name == "continual_vs" else continual_as
    return gen(data_root, shuffled=shuffled, **decode, **kwargs)


def benchmark_from_run_config(cfg: Any):
    """The real benchmark a :class:`~avalanche_av.experiment.RunConfig` names.

    The size flags shared with the synthetic stream (``n_tasks``, ``classes_per_task``,
    ``train_clips_per_class``, ``eval_clips_per_class``) override the task definition only
    when they differ from their ``RunConfig`` defaults; otherwise the paper's values apply
    (Continual-VS: 8 tasks, 20 classes, 400 training and 5 retrieval clips per class).
    """
    from avalanche_av.experiment import RunConfig  # noqa: PLC0415

    d = RunConfig()
    kw: dict[str, Any] = {}
    if cfg.n_tasks != d.n_tasks:
        kw["n_tasks"] = cfg.n_tasks
    if cfg.classes_per_task != d.classes_per_task:
        kw["classes_per_task"] = cfg.classes_per_task
    if cfg.train_clips_per_class != d.train_clips_per_class:
        kw["max_train_clips_per_class"] = cfg.train_clips_per_class
    if cfg.eval_clips_per_class != d.eval_clips_per_class:
        kw["retrieval_clips_per_class"] = cfg.eval_clips_per_class
    return build_real_benchmark(cfg.benchmark, cfg.data_root, cfg.model, seed=cfg.seed, **kw)


# --------------------------------------------------------------------------- prepare
def add_prepare_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``avalanche-av prepare``."""
    from avalanche_av.benchmarks.prepare import PrepareConfig  # noqa: PLC0415

    d = PrepareConfig()
    p = sub.add_parser(
        "prepare", help="decode a folder of raw videos into a cache of frames + 16 kHz audio (resumable)",
        description="Decode every video under SRC into OUT: frames at a fixed fps (resized), 16 kHz mono audio "
                    "(wav/flac, or the raw fbank), a manifest.json and a bad-clip report (prepare_report.csv). "
                    "Clips finished by an earlier run are skipped.",
    )
    p.add_argument("src", help="folder of raw videos (searched recursively)")
    p.add_argument("out", help="cache folder, e.g. DATA_ROOT/prepared (found there automatically by the benchmarks)")
    p.add_argument("--fps", type=float, default=d.fps, help="frames kept per second (default %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="shorter side after resizing (default %(default)s)")
    p.add_argument("--square", action="store_true", help="resize to IMAGE_SIZE x IMAGE_SIZE instead")
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="most frames per clip (default %(default)s)")
    p.add_argument("--audio", choices=["wav", "flac", "fbank"], default=d.audio, help="audio cache format")
    p.add_argument("--num-mel-bins", type=int, default=d.num_mel_bins, help="mel bins with --audio fbank")
    p.add_argument("--min-duration", type=float, default=d.min_duration, help="shorter clips are bad (seconds)")
    p.add_argument("--allow-no-audio", action="store_true",
                   help="keep clips without an audio stream (frames only; their manifest wav is empty)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    p.add_argument("--num-workers", type=int, default=4, help="worker processes (0: none; default %(default)s)")
    p.add_argument("--only", default=None, metavar="FILE", help="text file of clip stems to prepare (one per line)")
    p.add_argument("--retry-bad", action="store_true", help="decode again the clips an earlier run found bad")
    p.add_argument("--overwrite", action="store_true", help="accept a cache made with other settings (redo it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def run_prepare(args: argparse.Namespace) -> int:
    """Handler of ``avalanche-av prepare``: runs :func:`prepare` and prints its summary."""
    from avalanche_av.benchmarks.prepare import PrepareConfig, prepare  # noqa: PLC0415

    cfg = PrepareConfig(fps=args.fps, image_size=args.image_size, square=args.square, max_frames=args.max_frames,
                        audio=args.audio, num_mel_bins=args.num_mel_bins, min_duration=args.min_duration,
                        require_audio=not args.allow_no_audio, jpeg_quality=args.jpeg_quality)
    only = None
    if args.only is not None:
        only = [s.strip() for s in Path(args.only).read_text().splitlines() if s.strip()]
    res = prepare(args.src, args.out, cfg, num_workers=args.num_workers, progress=args.progress,
                  retry_bad=args.retry_bad, overwrite=args.overwrite, only=only)
    print(res.summary())
    return 0


# --------------------------------------------------------------------------- stats
def add_stats_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``avalanche-av stats``."""
    p = sub.add_parser("stats", help="per-task and per-class statistics of Continual-VS / Continual-AS on local data")
    p.add_argument("--benchmark", required=True, choices=list(REAL_BENCHMARKS))
    p.add_argument("--data-root", required=True, help="dataset root (see docs/datasets.md)")
    p.add_argument("--n-tasks", type=int, default=None, help="only the first N tasks")
    p.add_argument("--classes-per-task", type=int, default=None, help="override the definition's class count")
    p.add_argument("--max-train-clips-per-class", type=int, default=None, help="override the training cap")
    p.add_argument("--retrieval-clips-per-class", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan", action="store_true", help="probe the chosen clips' headers to find bad files")
    p.add_argument("--min-duration", type=float, default=1.0)
    p.add_argument("--no-per-class", dest="per_class", action="store_false", help="only the per-task table")
    p.add_argument("--csv-dir", default=None, help="also write task_stats.csv, class_stats.csv, bad_clips.csv here")
    return p


def run_stats(args: argparse.Namespace) -> int:
    """Handler of ``avalanche-av stats``: builds the benchmark (no decoding) and prints its tables."""
    import warnings  # noqa: PLC0415

    from .continual import format_stats  # noqa: PLC0415

    kw: dict[str, Any] = dict(retrieval_clips_per_class=args.retrieval_clips_per_class, seed=args.seed,
                              scan=args.scan, min_duration=args.min_duration)
    if args.n_tasks is not None:
        kw["n_tasks"] = args.n_tasks
    if args.classes_per_task is not None:
        kw["classes_per_task"] = args.classes_per_task
    if args.max_train_clips_per_class is not None:
        kw["max_train_clips_per_class"] = args.max_train_clips_per_class
    with warnings.catch_warnings():
        # The same information is in the printed summary.
        warnings.simplefilter("ignore", RuntimeWarning)
        bm = build_real_benchmark(args.benchmark, args.data_root, "base", **kw)
    print(format_stats(bm, per_class=args.per_class))
    if len(bm.bad_clips):
        print(f"\nbad clips ({len(bm.bad_clips)}):")
        print(bm.bad_clips[["video_id", "reason"]].to_string(index=False))
    if args.csv_dir:
        out = Path(args.csv_dir)
        out.mkdir(parents=True, exist_ok=True)
        bm.task_table.to_csv(out / "task_stats.csv", index=False)
        bm.class_table.to_csv(out / "class_stats.csv", index=False)
        bm.bad_clips.to_csv(out / "bad_clips.csv", index=False)
        print(f"\nwrote {out}/task_stats.csv, class_stats.csv, bad_clips.csv")
    return 0

