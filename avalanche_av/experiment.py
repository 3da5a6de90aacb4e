"""The main job: continual pre-training on a stream, evaluated by zero-shot retrieval.

:func:`run_experiment` is what ``avalanche-av run`` calls. It builds the benchmark, the model
and the strategy, trains experience by experience, evaluates the whole test stream after each
one, checkpoints after each one (so ``resume=True`` continues where a run stopped), and writes:

* ``results.json``: the run config, the task names, the data report (missing, bad, replaced,
  duplicated, leaked clips and skipped steps), per-task R@k in both directions, A, F
  (textbook) and F_paper, the accuracy matrices and the modality gap, and the timings;
* ``results.csv``: the final per-task table;
* ``accuracy_matrix_{a2v,v2a}.png``: heatmaps of R@5 after each experience;
* ``csv_logs/``: Avalanche's CSV logs (continued, not truncated, by a resumed run);
* ``checkpoint.pt``: the latest run state and the run config (loads with ``weights_only=True``).

A resumed run refuses a checkpoint made with settings that change the experiment: see
:data:`SAFE_TO_CHANGE_ON_RESUME` and ``docs/reliability.md``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from avalanche.logging import CSVLogger

from .benchmarks import AVBenchmark, DataReport
from .benchmarks.real import REAL_BENCHMARKS

__all__ = [
    "RunConfig",
    "SAFE_TO_CHANGE_ON_RESUME",
    "settings_diff",
    "BENCHMARKS",
    "run_experiment",
    "results_table",
    "build_benchmark",
    "check_device",
    "check_resume_config",
    "ResumableCSVLogger",
]

#: ``--benchmark`` values.
BENCHMARKS = ("synthetic", *REAL_BENCHMARKS)

#: Settings that ``--resume`` lets differ from the checkpoint's: where and how fast the run
#: goes and what it prints, never what it computes. Everything else is refused.
SAFE_TO_CHANGE_ON_RESUME = (
    "device", "num_workers", "progress", "out_dir", "resume", "eval_batch_size", "csv_log", "tensorboard",
    # A permission to read cache files outside the data root, not a setting of the experiment.
    "allow_outside_root",
)

#: What a setting missing from an older run's stored config stands for: the behaviour before the
#: setting existed. Such a checkpoint still resumes, and ``compare`` still reads its run back.
ABSENT_MEANS: dict = {"synthetic_options": {}}

_AMP_CHOICES = ("auto", "bf16", "fp16", "off", None)

#: ``--lr-schedule`` values: the paper's constant rate, or warm-up + cosine per experience.
LR_SCHEDULES = ("constant", "warmup-cosine")


@dataclass
class RunConfig:
    """Everything a run depends on. Field names match the ``avalanche-av run`` flags."""

    strategy: str = "stella"
    model: str = "tiny"
    benchmark: str = "synthetic"
    data_root: Optional[str] = None
    #: read ``prepare``-cache manifest entries that resolve outside ``data_root`` (refused by default)
    allow_outside_root: bool = False
    seed: int = 0
    epochs: int = 12
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 1e-3
    #: ``constant`` (the paper) or ``warmup-cosine`` (an option beyond the paper, restarted at
    #: every experience; see :class:`~avalanche_av.training.plugins.schedule.WarmupCosinePlugin`).
    #: The synthetic default is ``warmup-cosine`` with batch 16, chosen on a validation split of
    #: the training clips (``benchmarks_av/tune_main_job.py``), and 12 epochs: the most that keeps
    #: the main job under 5 minutes on the slowest 2-core VM measured, no worse than 15 on that
    #: split (RESULTS.md §1). The Continual-VS/AS presets keep the paper's constant rate.
    lr_schedule: str = "warmup-cosine"
    mem_size: int = 64
    n_tasks: int = 4
    classes_per_task: int = 4
    train_clips_per_class: int = 128
    eval_clips_per_class: int = 16
    device: Optional[str] = None
    amp: Optional[str] = "auto"
    num_workers: int = 0
    out_dir: str = "av_runs/latest"
    resume: bool = False
    ks: tuple = (1, 5, 10)
    csv_log: bool = True
    tensorboard: bool = False
    progress: bool = True
    strategy_options: dict = field(default_factory=dict)
    #: ``benchmark="synthetic"`` only: fields of
    #: :class:`~avalanche_av.benchmarks.synthetic.SoundingObjectsConfig` to override, e.g.
    #: ``{"image_size": 128, "object_cells": 2}`` for base-like shapes (``--synthetic KEY=VALUE``).
    #: The model preset adapts to the new input shapes. The stream's size fields have flags of
    #: their own (``--n-tasks`` ...) and are refused here.
    synthetic_options: dict = field(default_factory=dict)
    #: Evidence recorded beside retrieval: per-step training diagnostics (AVM accuracy, excluded
    #: fraction, memory fill, training-clip localization) and, where the benchmark has ground
    #: truth, localization after each task with attention maps of tracked clips.
    diagnostics: bool = True
    #: Retrieval clips whose maps are kept after every task (first clip of each of the first
    #: ``track_clips`` tasks; 0: none).
    track_clips: int = 2

    def to_json(self) -> dict:
        """The config as JSON values (tuples become lists), as stored in results and checkpoints."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))

    def validate(self, strategies: Optional[list[str]] = None) -> None:
        """Check every setting before any data is built; ``ValueError`` names the flag.

        Args:
            strategies: the strategies the options must suit (default: ``[self.strategy]``;
                ``compare`` passes its whole list).
        """
        from .models import get_config  # noqa: PLC0415

        for name in ("epochs", "batch_size", "eval_batch_size", "n_tasks", "classes_per_task",
                     "train_clips_per_class", "eval_clips_per_class"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.amp not in _AMP_CHOICES:
            raise ValueError(f"--amp must be one of {list(_AMP_CHOICES[:-1])}, got {self.amp!r}")
        if isinstance(self.track_clips, bool) or not isinstance(self.track_clips, int) or self.track_clips < 0:
            raise ValueError(f"--track-clips must be >= 0, got {self.track_clips!r}")
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integers, got {self.ks!r}")
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; allowed: {list(BENCHMARKS)}")
        if self.synthetic_options:
            _check_synthetic_options(self)
        if self.benchmark != "synthetic" and not self.data_root:
            raise ValueError(f"--benchmark {self.benchmark} needs --data-root PATH (the local dataset copy)")
        get_config(self.model)  # ValueError naming the valid presets
        check_device(self.device)
        check_output_dir(self.out_dir, "--out")
        for s in strategies or [self.strategy]:
            _check_strategy(s, self)


def _check_strategy(name: str, cfg: RunConfig) -> None:
    """Option names and types, then a trial construction of the plugins (value ranges, memory
    size), so that a bad option fails before the benchmark is built. Side-effect free."""
    from .training import make_plugins, validate_strategy_options  # noqa: PLC0415
    from .training.checkpoint import get_rng_state, set_rng_state  # noqa: PLC0415

    validate_strategy_options(name, dict(cfg.strategy_options))
    rng = get_rng_state()  # a plugin's constructor may draw from the global RNGs
    try:
        make_plugins(name, mem_size=cfg.mem_size, batch_size=cfg.batch_size, **cfg.strategy_options)
    except TypeError as exc:  # a value the constructor cannot take
        raise ValueError(f"strategy {name!r}: {exc}") from exc
    finally:
        set_rng_state(rng)


#: ``SoundingObjectsConfig`` fields that ``RunConfig`` sets itself (flag in the message).
_SYNTHETIC_OWNED = {"seed": "--seed", "n_tasks": "--n-tasks", "classes_per_task": "--classes-per-task",
                    "train_clips_per_class": "--train-clips-per-class",
                    "eval_clips_per_class": "--eval-clips-per-class"}


def _check_synthetic_options(cfg: "RunConfig") -> None:
    """``ValueError`` naming ``--synthetic`` for overrides that do not fit the synthetic stream."""
    import dataclasses as dc  # noqa: PLC0415

    from .benchmarks.synthetic import SoundingObjectsConfig  # noqa: PLC0415

    opts = cfg.synthetic_options
    if cfg.benchmark != "synthetic":
        raise ValueError(f"--synthetic applies to --benchmark synthetic only, not {cfg.benchmark!r}")
    if not isinstance(opts, dict):
        raise ValueError(f"--synthetic: expected KEY=VALUE settings, got {opts!r}")
    valid = [f.name for f in dc.fields(SoundingObjectsConfig) if f.name not in _SYNTHETIC_OWNED]
    for key in opts:
        if key in _SYNTHETIC_OWNED:
            raise ValueError(f"--synthetic {key}=...: use {_SYNTHETIC_OWNED[key]} instead")
        if key not in valid:
            raise ValueError(f"--synthetic: unknown setting {key!r}; valid: {', '.join(valid)}")
    try:
        SoundingObjectsConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"--synthetic: {e}") from None


def check_device(device: Optional[str]) -> None:
    """``ValueError`` unless ``device`` is ``None``, ``cpu``, or an available ``cuda[:N]`` / ``mps``."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device torch knows; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
        return
    raise ValueError(f"--device {device!r}: device type {dev.type!r} is not supported; use cpu, cuda, cuda:N or mps")


def check_output_dir(path: "str | os.PathLike[str]", flag: str) -> None:
    """``ValueError`` when ``path`` (or a folder above it) exists and is not a folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} is an existing file, not a folder; choose a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {p}: {parent} is a file, so the folder cannot be created")
            break


def settings_diff(saved: Mapping[str, Any], cfg: RunConfig) -> list[str]:
    """``name: saved → given`` for every setting that differs between a stored run config and
    ``cfg``, leaving out :data:`SAFE_TO_CHANGE_ON_RESUME`; a setting the stored config lacks
    counts as its :data:`ABSENT_MEANS` value (``<not set>`` if it has none)."""
    given = cfg.to_json()
    absent = "<not set>"
    diffs = []
    for k in sorted(set(saved) | set(given)):
        if k in SAFE_TO_CHANGE_ON_RESUME:
            continue
        old, new = saved.get(k, ABSENT_MEANS.get(k, absent)), given.get(k, absent)
        if old != new:
            diffs.append(f"{k}: {old!r} → {new!r}")
    return diffs


def check_resume_config(saved: Optional[dict], cfg: RunConfig, where: "str | os.PathLike[str]") -> None:
    """Refuse to resume from a checkpoint whose run config differs in a setting that matters.

    Args:
        saved: the run config stored in the checkpoint (``None`` for a checkpoint without one).
        cfg: the config of the run that wants to resume.
        where: the checkpoint path, for the message.

    Raises:
        ValueError: one line listing every differing setting as ``name: saved → given``
            (settings in :data:`SAFE_TO_CHANGE_ON_RESUME` may differ).
    """
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {where} does not record the settings it was made with (an older version "
                         f"wrote it), so it cannot be checked; start a fresh run in a new --out folder")
    diffs = settings_diff(saved, cfg)
    if diffs:
        raise ValueError(
            f"--resume: {where} was made with other settings ({'; '.join(diffs)}); rerun with the saved "
            f"settings or choose a new --out folder (settings that may change on resume: "
            f"{', '.join(SAFE_TO_CHANGE_ON_RESUME)})"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_benchmark(cfg: RunConfig) -> AVBenchmark:
    """The benchmark named by ``cfg.benchmark``, with samples shaped for ``cfg.model``.

    ``synthetic`` is :func:`~avalanche_av.benchmarks.sounding_objects` with the run's sizes.
    The real benchmarks decode clips to the model preset's shapes (``n_frames``,
    ``image_size``, ``audio_length``, ``num_mel_bins``). For them the size flags shared with
    the synthetic stream (``n_tasks``, ``classes_per_task``, ``train_clips_per_class``,
    ``eval_clips_per_class``) override the task definition only when they differ from their
    ``RunConfig`` defaults; otherwise the paper's values apply (Continual-VS: 8 tasks, 20
    classes, 400 training and 5 retrieval clips per class).
    """
    if cfg.benchmark == "synthetic":
        from .benchmarks import sounding_objects  # noqa: PLC0415

        return sounding_objects(
            seed=cfg.seed,
            n_tasks=cfg.n_tasks,
            classes_per_task=cfg.classes_per_task,
            train_clips_per_class=cfg.train_clips_per_class,
            eval_clips_per_class=cfg.eval_clips_per_class,
            # JSON (a stored config) turns tuples into lists; the config wants tuples back.
            **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.synthetic_options.items()},
        )
    if cfg.benchmark.startswith("continual-"):  # real_benchmark names the valid ones if unknown
        from .benchmarks.real import real_benchmark  # noqa: PLC0415
        from .models import get_config  # noqa: PLC0415

        mc = get_config(cfg.model)
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
        return real_benchmark(cfg.benchmark, cfg.data_root, seed=cfg.seed, n_frames=mc.n_frames,
                              image_size=mc.image_size, target_length=mc.audio_length,
                              num_mel_bins=mc.num_mel_bins, allow_outside_root=cfg.allow_outside_root, **kw)
    raise ValueError(f"unknown benchmark {cfg.benchmark!r}; allowed: {list(BENCHMARKS)}")


def _model_for(cfg: RunConfig, bench: AVBenchmark) -> torch.nn.Module:
    from .models import create_model, get_config  # noqa: PLC0415

    base = get_config(cfg.model)
    bc = bench.config
    overrides = {}
    for mfield, bfield in (("audio_length", "target_length"), ("num_mel_bins", "num_mel_bins"),
                           ("n_frames", "n_frames"), ("image_size", "image_size")):
        bval = getattr(bc, bfield)
        if getattr(base, mfield) != bval:
            overrides[mfield] = bval
    if overrides:
        warnings.warn(f"model preset {cfg.model!r} adapted to the benchmark's input shapes: {overrides}")
    return create_model(cfg.model, **overrides)


class ResumableCSVLogger(CSVLogger):
    """Avalanche's :class:`~avalanche.logging.CSVLogger`, able to continue its files.

    Avalanche's logger opens ``training_results.csv`` and ``eval_results.csv`` with mode
    ``"w"``, so a resumed run would erase the rows of the experiences trained before the
    interruption. Given ``resume_sizes`` (the files' byte sizes recorded with the checkpoint),
    this logger instead cuts each file back to that size, which drops the rows of an
    experience that was interrupted and will be trained again, and appends after it.

    Args:
        log_folder: where the two files live.
        resume_sizes: ``{file name: size in bytes}`` from :meth:`file_sizes` at checkpoint
            time; ``None`` starts fresh files (Avalanche's behaviour).
    """

    FILES = ("training_results.csv", "eval_results.csv")

    def __init__(self, log_folder: "str | os.PathLike[str]", resume_sizes: Optional[dict[str, int]] = None) -> None:
        folder = Path(log_folder)
        paths = [folder / f for f in self.FILES]
        if resume_sizes is None or not all(p.is_file() for p in paths):
            super().__init__(log_folder=str(folder))
            return
        # CSVLogger.__init__ would truncate the files: set up its state here instead.
        super(CSVLogger, self).__init__()
        self.log_folder = str(folder)
        for p in paths:
            size = int(resume_sizes.get(p.name, p.stat().st_size))
            if size < p.stat().st_size:
                os.truncate(p, size)
        self.training_file = open(paths[0], "a")
        self.eval_file = open(paths[1], "a")
        self.training_exp_id = None
        self.in_train_phase = None
        self.val_acc, self.val_loss = 0, 0

    def file_sizes(self) -> dict[str, int]:
        """The current byte size of each log file (rows are flushed as they are written)."""
        self.training_file.flush()
        self.eval_file.flush()
        return {f: (Path(self.log_folder) / f).stat().st_size for f in self.FILES}


def _loggers(cfg: RunConfig, out: Path, csv_sizes: Optional[dict[str, int]]) -> list:
    from avalanche.logging import InteractiveLogger, TensorboardLogger  # noqa: PLC0415

    loggers: list = [InteractiveLogger()] if cfg.progress else []
    if cfg.csv_log:
        loggers.append(ResumableCSVLogger(out / "csv_logs", resume_sizes=csv_sizes))
    if cfg.tensorboard:
        loggers.append(TensorboardLogger(tb_log_dir=str(out / "tb")))
    return loggers


def run_experiment(cfg: RunConfig, extra_plugins: Optional[list] = None) -> dict:
    """Run continual pre-training + retrieval evaluation; returns the ``results.json`` content.

    Args:
        cfg: the run's settings.
        extra_plugins: plugins added after the strategy's own, e.g. the progress display of
            ``compare``. They must keep no state a resumed run needs (they are not checkpointed
            unless they define ``state_dict``, and then under their position in the list).

    Raises:
        ValueError: a bad setting (before any data is built), or ``cfg.resume`` with a
            checkpoint made with settings outside :data:`SAFE_TO_CHANGE_ON_RESUME`.

    Under ``torchrun --nproc_per_node=N`` the run is one of ``N`` ranks (``docs/distributed.md``):
    each trains on its shard of every experience with ``cfg.batch_size`` clips per step and holds
    its part of the ``cfg.mem_size``-clip memory; rank 0 logs and writes every file, and every
    rank returns the same summary.
    """
    from .training.distributed import distributed_session  # noqa: PLC0415

    with distributed_session(cfg.device) as dist_ctx:
        return _run_experiment(cfg, extra_plugins, dist_ctx)


def _run_experiment(cfg: RunConfig, extra_plugins: Optional[list], dist_ctx: Any) -> dict:
    """:func:`run_experiment` inside its process group (a single process: an empty context)."""
    from .evaluation import av_evaluator, get_retrieval_metrics  # noqa: PLC0415
    from .evaluation.plots import save_accuracy_matrix_png  # noqa: PLC0415
    from .training import AVPretraining, default_optimizer, make_plugins  # noqa: PLC0415
    from .training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: PLC0415

    cfg.validate()
    out = Path(cfg.out_dir)
    ckpt = out / "checkpoint.pt"
    saved = None
    if cfg.resume and _checkpoint_found(ckpt, dist_ctx):
        saved = read_checkpoint(ckpt)
        stored = saved["extra"].get("run_config")
        check_resume_config(json.loads(stored) if isinstance(stored, str) else None, cfg, ckpt)
    extra_in: dict = saved["extra"] if saved is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)
    t0 = time.time()
    bench = build_benchmark(cfg)
    model = _model_for(cfg, bench)
    plugins = make_plugins(cfg.strategy, mem_size=_rank_mem_size(cfg, dist_ctx), batch_size=cfg.batch_size,
                           run_seed=cfg.seed, **cfg.strategy_options)
    if cfg.lr_schedule == "warmup-cosine":
        from .training.plugins.schedule import WarmupCosinePlugin  # noqa: PLC0415

        plugins.append(WarmupCosinePlugin())
    plugins += list(extra_plugins or [])
    # Only rank 0 logs (progress bars, CSV, TensorBoard); the metrics still run on every rank.
    loggers = _loggers(cfg, out, extra_in.get("csv_sizes") if saved is not None else None) if dist_ctx.is_main else []
    csv_logger = next((lg for lg in loggers if isinstance(lg, ResumableCSVLogger)), None)
    diagnostics, localization = _evidence_metrics(cfg, bench)
    with warnings.catch_warnings():
        if not dist_ctx.is_main:
            warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = av_evaluator(loggers=loggers, ks=cfg.ks, n_tasks=bench.n_tasks,
                                 extra_metrics=[*diagnostics, *([localization] if localization else [])])
    strategy = AVPretraining(
        model=model,
        optimizer=default_optimizer(model, lr=cfg.lr),
        train_mb_size=cfg.batch_size,
        train_epochs=cfg.epochs,
        eval_mb_size=cfg.eval_batch_size,
        device=dist_ctx.device or cfg.device,
        plugins=plugins,
        evaluator=evaluator,
        amp=cfg.amp,
    )
    if dist_ctx.is_distributed:
        strategy.shard_seed = cfg.seed  # the same shards on every rank, a new split per seed
        _seed_everything(cfg.seed + dist_ctx.rank)  # different masks and draws per rank (as MAE's code)
    retrieval = get_retrieval_metrics(evaluator)
    done = 0
    train_times: list[float] = []
    # Load-time decode failures of earlier processes (a resumed run continues their count).
    earlier_load = DataReport()
    if saved is not None:
        extra = load_checkpoint(ckpt, strategy, state=saved)
        done = int(extra.get("completed_experiences", 0))
        if "retrieval_state" in extra:
            retrieval.load_state_dict(extra["retrieval_state"])
        evidence_state = extra.get("evidence_state") or {}
        for i, metric in enumerate(diagnostics):
            if f"diag{i}" in evidence_state:
                metric.load_state_dict(evidence_state[f"diag{i}"])
        if localization is not None and "localization" in evidence_state:
            localization.load_state_dict(evidence_state["localization"])
        train_times = [float(x) for x in extra.get("train_seconds", [])]
        earlier_load = DataReport.from_dict(json.loads(extra.get("load_time_report", "{}")))
        if dist_ctx.is_main:
            print(f"[avalanche-av] resumed from {ckpt}: {done} experience(s) already trained")

    def load_report() -> DataReport:
        rep = earlier_load.merged(_ranks_load_report(bench.load_time_report()))
        # Worker processes keep their own decode counters; say so instead of reporting zeros.
        rep.load_time_counted = rep.load_time_counted and not (cfg.num_workers > 0 and bench.decoders)
        return rep

    for t, exp in enumerate(bench.train_stream):
        if t < done:
            continue
        ts = time.time()
        strategy.train(exp, num_workers=cfg.num_workers)
        train_times.append(time.time() - ts)
        strategy.eval(bench.test_stream, num_workers=cfg.num_workers)
        save_checkpoint(
            ckpt,
            strategy,
            extra={
                "completed_experiences": t + 1,
                "retrieval_state": retrieval.state_dict(),
                "evidence_state": {
                    **{f"diag{i}": m.state_dict() for i, m in enumerate(diagnostics)},
                    **({"localization": localization.state_dict()} if localization is not None else {}),
                },
                # JSON text: any config value survives, and loading stays weights_only-safe.
                "run_config": json.dumps(cfg.to_json()),
                "train_seconds": list(train_times),
                "load_time_report": json.dumps(load_report().to_dict()),
                "csv_sizes": csv_logger.file_sizes() if csv_logger is not None else None,
            },
        )

    # Every task's test clips form one gallery (RetrievalMetrics): chance R@k is k / its size.
    gallery = sum(len(exp.dataset) for exp in bench.test_stream)
    data = bench.data_report.merged(load_report()).to_dict()
    data["skipped_steps"] = int(strategy.skipped_steps)
    results = retrieval.to_dict()
    summary = {
        "config": cfg.to_json(),
        "task_names": list(bench.task_names),
        "data": data,
        "wall_seconds": time.time() - t0,
        "train_seconds_per_experience": train_times,
        "resumed_after_experiences": done,
        "retrieval": results,
        "gallery_size": gallery,
    }
    if cfg.diagnostics:
        summary["diagnostics"] = {type(m).__name__: m.to_dict() for m in diagnostics}
        if localization is not None:
            summary["localization"] = localization.to_dict()
    if dist_ctx.is_distributed:
        summary["distributed"] = {"world_size": dist_ctx.world_size, "backend": dist_ctx.backend}
    if not dist_ctx.is_main:  # rank 0 writes the files
        summary["table"] = results_table(retrieval, ks=cfg.ks, gallery_size=gallery)
        return summary
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    table = results_table(retrieval, ks=cfg.ks, gallery_size=gallery)
    table.to_csv(out / "results.csv", index=False)
    n = retrieval.n_columns()
    k_plot = 5 if 5 in cfg.ks else cfg.ks[0]
    for d in ("a2v", "v2a"):
        save_accuracy_matrix_png(
            out / f"accuracy_matrix_{d}.png",
            retrieval.matrix(direction=d, k=k_plot),
            # Long task names (class lists) do not fit under a heatmap column; results.json has them.
            task_names=[f"T{i}" for i in range(n)],
            title=f"R@{k_plot} {d} after each experience ({cfg.strategy})",
        )
    if cfg.diagnostics:
        _save_evidence_plots(out, cfg, bench, model, diagnostics, localization)
    if csv_logger is not None:
        csv_logger.training_file.close()
        csv_logger.eval_file.close()
    summary["table"] = table
    return summary


def tracked_clip_ids(bench: AVBenchmark, n: int) -> list[int]:
    """The first retrieval clip (lowest id) of each of the first ``n`` tasks: fixed clips whose
    attention maps a run keeps after every task."""
    table = bench.clip_table
    col = "role" if "role" in table.columns else "split"
    held = table[table[col].isin(["eval", "retrieval"])]
    ids = []
    for t in range(min(n, bench.n_tasks)):
        rows = held[held["task"] == t]
        if len(rows):
            ids.append(int(rows["clip_id"].min()))
    return ids


def _evidence_metrics(cfg: RunConfig, bench: AVBenchmark) -> tuple[list, Any]:
    """The run's training diagnostics and (with ground truth) its :class:`LocalizationMetrics`."""
    if not cfg.diagnostics:
        return [], None
    from .evaluation import LocalizationMetrics, training_diagnostics  # noqa: PLC0415

    diagnostics = training_diagnostics(every=10, sounding_masks=bench.sounding_masks,
                                       active_frames=bench.active_frames)
    localization = None
    if bench.sounding_masks is not None:
        localization = LocalizationMetrics(bench.sounding_masks, bench.active_frames, n_tasks=bench.n_tasks,
                                           track_clips=tracked_clip_ids(bench, cfg.track_clips))
    return diagnostics, localization


def _save_evidence_plots(out: Path, cfg: RunConfig, bench: AVBenchmark, model: torch.nn.Module,
                         diagnostics: list, localization: Any) -> None:
    """``training_diagnostics.png`` (the diagnostics against steps) and the tracked clips'
    attention maps after the first and the last task (``attention/tracked_clip<id>.png``)."""
    from .evaluation.plots import plot_training_diagnostics  # noqa: PLC0415

    fig = plot_training_diagnostics({cfg.strategy: {type(m).__name__: m.to_dict() for m in diagnostics}},
                                    title=f"Training diagnostics ({cfg.strategy}, seed {cfg.seed})")
    if fig is not None:
        fig.savefig(out / "training_diagnostics.png", dpi=110)
    if localization is None or not localization.track_clips:
        return
    frames, gt = _clip_frames(bench, sorted(localization.track_clips))
    (out / "attention").mkdir(exist_ok=True)
    for cid, video in frames.items():
        title = f"clip {cid}, {cfg.strategy} (seed {cfg.seed}); white: sounding source"
        fig = localization.plot_tracked(cid, video, gt.get(cid), rows=(0, -1),
                                        patch_size=model.config.patch_size, title=title)
        if fig is not None:
            fig.savefig(out / "attention" / f"tracked_clip{cid}.png", dpi=100)


def _clip_frames(bench: AVBenchmark, clip_ids: list[int]) -> tuple[dict, dict]:
    """Frames ``(n, 3, H, W)`` and ground-truth sounding patches ``(Nv,)`` of retrieval clips."""
    from .evaluation.localization import sounding_patches  # noqa: PLC0415

    wanted = set(clip_ids)
    frames: dict = {}
    for ds in bench.retrieval_sets:
        for i in range(len(ds)):
            if not wanted - set(frames):
                break
            sample = ds[i]
            cid = int(sample[3])
            if cid in wanted:
                frames[cid] = sample[1]
    gt = {}
    if bench.sounding_masks is not None and frames:
        ids = sorted(frames)
        rows = sounding_patches(bench.sounding_masks, bench.active_frames, torch.as_tensor(ids))
        gt = {cid: rows[i] for i, cid in enumerate(ids)}
    return frames, gt


def _checkpoint_found(ckpt: Path, dist_ctx: Any) -> bool:
    """Whether ``ckpt`` exists; under torchrun every rank must see the same answer."""
    from .training.distributed import all_gather_objects  # noqa: PLC0415

    found = ckpt.exists()
    if dist_ctx.is_distributed:
        seen = all_gather_objects(found)
        if len(set(seen)) > 1:
            raise ValueError(f"--resume: {ckpt} exists for ranks {[r for r, f in enumerate(seen) if f]} only; "
                             "every rank reads the checkpoint, so --out must be on a filesystem all nodes share")
    return found


def _rank_mem_size(cfg: RunConfig, dist_ctx: Any) -> int:
    """This rank's part of the ``--mem-size`` clips (all of them in a single process, and on every
    rank for a method whose memory is global: ``er_exp``, ``agem``)."""
    from .training import memory_scope  # noqa: PLC0415
    from .training.distributed import memory_share  # noqa: PLC0415

    if not dist_ctx.is_distributed or memory_scope(cfg.strategy) == "global":
        return cfg.mem_size
    if cfg.mem_size < dist_ctx.world_size:
        raise ValueError(f"--mem-size {cfg.mem_size} is the memory over all ranks; {dist_ctx.world_size} ranks "
                         f"need at least {dist_ctx.world_size} clips (one each)")
    return memory_share(cfg.mem_size, dist_ctx.rank, dist_ctx.world_size)


def _ranks_load_report(report: DataReport) -> DataReport:
    """The load-time decode counts of every rank added up (each rank decodes its own shard)."""
    from .training.distributed import all_gather_objects, is_distributed  # noqa: PLC0415

    if not is_distributed():
        return report
    total = DataReport()
    for rep in all_gather_objects(report):
        total = total.merged(rep)
    return total


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def results_table(retrieval, ks=(1, 5, 10), gallery_size: Optional[int] = None) -> pd.DataFrame:
    """Final per-task R@k in both directions, then A, F and F_paper; one row per (k, direction).

    Args:
        retrieval: the run's :class:`~avalanche_av.evaluation.RetrievalMetrics`.
        ks: the recall cut-offs.
        gallery_size: clips in the retrieval gallery (every task's test clips); when given, a
            ``chance`` column holds ``min(1, k / gallery_size)``, the expected R@k of random
            embeddings, so each row can be read against it, and ``A/chance`` their ratio.
    """
    n = retrieval.n_columns()
    rows = []
    for d in ("a2v", "v2a"):
        for k in ks:
            m = retrieval.matrix(direction=d, k=k)
            final = m[-1] if m.shape[0] else np.full(n, np.nan)
            row = {"metric": f"R@{k} {d}"}
            row.update({f"task{i}": final[i] for i in range(n)})
            row["A"] = retrieval.summary_metric("A", direction=d, k=k)
            row["F"] = retrieval.summary_metric("F", direction=d, k=k)
            row["F_paper"] = retrieval.summary_metric("F_paper", direction=d, k=k)
            if gallery_size:
                row["chance"] = min(1.0, k / gallery_size)
                row["A/chance"] = row["A"] / row["chance"]
            rows.append(row)
    return pd.DataFrame(rows)
