"""``avalanche-av downstream``: one task, one checkpoint, one dataset -> results files.

:func:`run_downstream` builds the dataset, loads the backbone (any checkpoint, see
:mod:`~avalanche_av.downstream.backbone`), extracts and caches frozen features, trains the
task's head with early stopping on the validation split, scores the test split, and writes to
``out_dir``:

* ``results.json``: ``config``, ``data`` (dataset report), ``backbone``, ``metrics``,
  ``per_class``, ``fit`` (training history), ``timings`` and ``environment``;
* ``results.csv``: the scalar metrics, one row per (task variant, metric);
* ``per_class.csv``: per-class accuracy / AP / IoU;
* pictures: ``confusion_*.png`` (classification, event), ``per_class_iou.png`` and
  ``overlays.png`` (segmentation).
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["TASKS", "DownstreamConfig", "run_downstream", "TASK_DEFAULTS"]

TASKS = ("classify", "event", "segment", "retrieval-ft")

#: Per-task training defaults (``None`` fields of :class:`DownstreamConfig` take these).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"epochs": 200, "patience": 20, "lr": 1e-3, "batch_size": 128},
    "event": {"epochs": 200, "patience": 20, "lr": 1e-3, "batch_size": 128},
    "segment": {"epochs": 60, "patience": 8, "lr": 3e-3, "batch_size": 64},
    "retrieval-ft": {"epochs": 10, "patience": 3, "lr": 1e-4, "batch_size": 32},
}

_STREAM_KEYS = ("seed", "n_tasks", "classes_per_task", "train_clips_per_class", "eval_clips_per_class")


@dataclass
class DownstreamConfig:
    """Everything a downstream run depends on. Field names match the ``avalanche-av downstream`` flags.

    Attributes:
        task: ``classify``, ``event``, ``segment`` or ``retrieval-ft``.
        checkpoint: ``random``, a run checkpoint, a state dict, a CAV-MAE or ImageNet-MAE file.
        model: preset; inferred from the checkpoint when ``None``.
        data: ``synthetic`` or a real dataset (``ave``, ``avsbench-s4``, ``msrvtt``, ``vggsound``,
            ``audioset``) under ``data_root``.
        seed: head initialisation and minibatch order (and the random backbone's init).
        stream_seed, n_tasks, classes_per_task, train_clips_per_class, eval_clips_per_class:
            the synthetic stream; ``None`` = the run config stored in the checkpoint, else the
            ``avalanche-av run`` defaults (seed 0, 4 x 4 classes, 128 + 16 clips per class).
        heldout_tasks: synthetic only; ``None`` = 1 for ``retrieval-ft`` (held-out classes),
            0 otherwise.
        head: ``linear`` or ``mlp`` (classify, event).
        features: classify only: ``joint``, ``audio``, ``video``, ``joint-audio``,
            ``joint-video`` or ``all`` (every variant, one backbone pass).
        use_audio: segment only: feed the frame's audio vector to the decoder.
        min_epochs: segment only: no early stop before this epoch (default 15, capped at ``epochs``).
        epochs, patience, lr, batch_size: training; ``None`` = :data:`TASK_DEFAULTS` (retrieval-ft
            on the ``tiny`` preset: lr 1e-3, its pre-training rate).
        val_fraction, split_seed: validation split carved from train where there is no official one.
        train_per_class: keep only this many labelled training clips per class (few-shot heads;
            retrieval fine-tuning: this many clips per class of the training list).
        out_dir: results folder. cache_dir: feature cache (``None`` = ``<out_dir>/../feature_cache``).
        device, num_workers, extract_batch_size, progress: execution.
    """

    task: str = "classify"
    checkpoint: str = "random"
    model: Optional[str] = None
    data: str = "synthetic"
    data_root: Optional[str] = None
    seed: int = 0
    stream_seed: Optional[int] = None
    n_tasks: Optional[int] = None
    classes_per_task: Optional[int] = None
    train_clips_per_class: Optional[int] = None
    eval_clips_per_class: Optional[int] = None
    heldout_tasks: Optional[int] = None
    head: str = "linear"
    features: str = "joint"
    use_audio: bool = True
    epochs: Optional[int] = None
    patience: Optional[int] = None
    min_epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    split_seed: int = 0
    train_per_class: Optional[int] = None
    out_dir: str = "av_runs/downstream"
    cache_dir: Optional[str] = None
    device: Optional[str] = None
    num_workers: int = 0
    extract_batch_size: int = 64
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        from .classify import CLASSIFY_FEATURES  # noqa: PLC0415

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; allowed: {list(TASKS)}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"--head must be 'linear' or 'mlp', got {self.head!r}")
        if self.features not in (*CLASSIFY_FEATURES, "all"):
            raise ValueError(f"--features must be one of {[*CLASSIFY_FEATURES, 'all']}, got {self.features!r}")
        for name in ("epochs", "patience", "batch_size", "train_per_class", "n_tasks", "classes_per_task", "train_clips_per_class",
                     "eval_clips_per_class"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.min_epochs is not None and self.min_epochs < 0:
            raise ValueError(f"--min-epochs must be >= 0, got {self.min_epochs}")
        if self.heldout_tasks is not None and self.heldout_tasks < 0:
            raise ValueError(f"--heldout-tasks must be >= 0, got {self.heldout_tasks}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.extract_batch_size < 1:
            raise ValueError(f"--extract-batch-size must be >= 1, got {self.extract_batch_size}")

    def resolved(self, name: str) -> Any:
        v = getattr(self, name)
        return TASK_DEFAULTS[self.task][name] if v is None else v

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import version  # noqa: PLC0415

        env["avalanche_av"] = version("avalanche-av")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        pass
    return env


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(x: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _stream_knobs(cfg: DownstreamConfig, run_config: Optional[dict]) -> dict:
    saved = run_config or {}
    defaults = {"seed": 0, "n_tasks": 4, "classes_per_task": 4, "train_clips_per_class": 128, "eval_clips_per_class": 16}
    mine = {"seed": cfg.stream_seed, "n_tasks": cfg.n_tasks, "classes_per_task": cfg.classes_per_task,
            "train_clips_per_class": cfg.train_clips_per_class, "eval_clips_per_class": cfg.eval_clips_per_class}
    out = {}
    for k in _STREAM_KEYS:
        if mine[k] is not None:
            out[k] = mine[k]
        elif saved.get("benchmark", "synthetic") == "synthetic" and isinstance(saved.get(k), int):
            out[k] = saved[k]
        else:
            out[k] = defaults[k]
    return out


def run_downstream(cfg: DownstreamConfig) -> dict:
    """Run one downstream task; returns the ``results.json`` content (also written to ``cfg.out_dir``)."""
    from .backbone import build_backbone, open_checkpoint  # noqa: PLC0415
    from .data import build_data, limit_train  # noqa: PLC0415
    from .features import FeatureExtractor  # noqa: PLC0415

    cfg.validate()
    t0 = time.time()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = open_checkpoint(cfg.checkpoint, cfg.model)
    from ..models import get_config  # noqa: PLC0415

    pc = get_config(src.preset)
    preset_shapes = {"audio_length": pc.audio_length, "num_mel_bins": pc.num_mel_bins, "n_frames": pc.n_frames,
                     "image_size": pc.image_size}
    heldout = cfg.heldout_tasks if cfg.heldout_tasks is not None else (1 if cfg.task == "retrieval-ft" else 0)
    stream = _stream_knobs(cfg, src.run_config)
    data = build_data(cfg.data, root=cfg.data_root, input_shapes=None if cfg.data == "synthetic" else preset_shapes,
                      synthetic=stream, heldout_tasks=heldout, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    if cfg.train_per_class is not None:
        data = limit_train(data, cfg.train_per_class, seed=cfg.split_seed)
    # Real datasets may ask for another frame count (AVE: 10, S4: 5): the model's positional
    # tables follow the dataset's shapes; the weights do not depend on them.
    model, info = build_backbone(src, data.input_shapes, seed=cfg.seed)
    t_load = time.time() - t0
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out.parent / "feature_cache"
    lr = cfg.resolved("lr")
    if cfg.task == "retrieval-ft" and cfg.lr is None and src.preset == "tiny":
        lr = 1e-3  # the tiny preset pre-trains at 1e-3 (``avalanche-av run``); 1e-4 barely moves it
    fit_kw = {"max_epochs": cfg.resolved("epochs"), "patience": cfg.resolved("patience"), "lr": lr,
              "batch_size": cfg.resolved("batch_size"), "weight_decay": cfg.weight_decay, "seed": cfg.seed,
              "progress": cfg.progress}
    t1 = time.time()
    results: dict[str, Any] = {}
    per_class: Any = []
    if cfg.task == "retrieval-ft":
        from .retrieval import run_retrieval_finetune  # noqa: PLC0415

        r = run_retrieval_finetune(data, model, device=str(device), num_workers=cfg.num_workers,
                                   eval_batch_size=cfg.extract_batch_size, **fit_kw)
        results = {"metrics": r["metrics"], "fit": r["fit"]}
    else:
        ext = FeatureExtractor(model, cache_dir=cache, device=str(device), batch_size=cfg.extract_batch_size,
                               num_workers=cfg.num_workers, progress=cfg.progress)
        if cfg.task == "classify":
            from .classify import CLASSIFY_FEATURES, run_classification  # noqa: PLC0415

            variants = list(CLASSIFY_FEATURES) if cfg.features == "all" else [cfg.features]
            metrics, fits, per_class = {}, {}, {}
            for v in variants:
                r = run_classification(data, ext, features=v, head=cfg.head, out_dir=out, **fit_kw)
                metrics[v], fits[v], per_class[v] = r["metrics"], r["fit"], r["per_class"]
            if len(variants) == 1:
                metrics, fits, per_class = metrics[variants[0]], fits[variants[0]], per_class[variants[0]]
            results = {"metrics": metrics, "fit": fits}
        elif cfg.task == "event":
            from .event import run_event_localization  # noqa: PLC0415

            r = run_event_localization(data, ext, head=cfg.head, out_dir=out, **fit_kw)
            results, per_class = {"metrics": r["metrics"], "fit": r["fit"]}, r["per_class"]
        else:
            from .segment import run_segmentation  # noqa: PLC0415

            r = run_segmentation(data, ext, out_dir=out, use_audio=cfg.use_audio,
                                 min_epochs=min(cfg.resolved("epochs"), cfg.min_epochs if cfg.min_epochs is not None else 15),
                                 **fit_kw)
            results, per_class = {"metrics": r["metrics"], "fit": r["fit"]}, r["per_class"]
        results["feature_passes"] = ext.passes
    summary = {
        "schema": "avalanche-av-results/1",
        "command": "downstream",
        "config": cfg.to_json(),
        "data": {"name": data.name, "key": data.key, "n_classes": data.n_classes, "input_shapes": data.input_shapes,
                 **data.report},
        "backbone": info.to_json(),
        "metrics": results["metrics"],
        "per_class": per_class,
        "fit": results["fit"],
        "timings": {"load_seconds": round(t_load, 2), "task_seconds": round(time.time() - t1, 2),
                    "wall_seconds": round(time.time() - t0, 2), "feature_passes": results.get("feature_passes")},
        "environment": _environment(device),
    }
    (out / "results.json").write_text(json.dumps(_clean(summary), indent=2, default=_json_default))
    _write_tables(out, cfg.task, summary["metrics"], per_class)
    return summary


def _scalar_rows(prefix: str, metrics: dict) -> list[dict]:
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += _scalar_rows(f"{prefix}{k}/", v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append({"metric": f"{prefix}{k}", "value": v})
    return rows


def _write_tables(out: Path, task: str, metrics: dict, per_class: Any) -> None:
    import pandas as pd  # noqa: PLC0415

    pd.DataFrame(_scalar_rows("", metrics)).assign(task=task)[["task", "metric", "value"]].to_csv(
        out / "results.csv", index=False)
    if isinstance(per_class, dict):
        frames = [pd.DataFrame(v).assign(variant=k) for k, v in per_class.items() if v]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    else:
        df = pd.DataFrame(per_class)
    if len(df):
        df.to_csv(out / "per_class.csv", index=False)
