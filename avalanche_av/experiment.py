"""The main job: continual pre-training on a stream, evaluated by zero-shot retrieval.

:func:`run_experiment` is what ``avalanche-av run`` calls. It builds the benchmark, the model
and the strategy, trains experience by experience, evaluates the whole test stream after each
one, checkpoints after each one (so ``resume=True`` continues where a run stopped), and writes:

* ``results.json``: the run config, per-task R@k in both directions, A, F (textbook) and
  F_paper, the accuracy matrices and the modality gap;
* ``results.csv``: the final per-task table;
* ``accuracy_matrix.png``: heatmaps of R@5 after each experience, one per direction;
* ``checkpoint.pt``: the latest run state (loads with ``weights_only=True``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

__all__ = ["RunConfig", "run_experiment", "results_table", "build_benchmark", "compare_strategies"]


@dataclass
class RunConfig:
    """Everything a run depends on. Field names match the ``avalanche-av run`` flags."""

    strategy: str = "stella"
    model: str = "tiny"
    benchmark: str = "synthetic"
    data_root: Optional[str] = None
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-3
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

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["ks"] = list(self.ks)
        return d


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_benchmark(cfg: RunConfig):
    """The benchmark named by ``cfg.benchmark`` (``'synthetic'`` for now)."""
    if cfg.benchmark == "synthetic":
        from .benchmarks import sounding_objects

        return sounding_objects(
            seed=cfg.seed,
            n_tasks=cfg.n_tasks,
            classes_per_task=cfg.classes_per_task,
            train_clips_per_class=cfg.train_clips_per_class,
            eval_clips_per_class=cfg.eval_clips_per_class,
        )
    if cfg.benchmark.startswith("continual-"):
        from .benchmarks.real.cli import benchmark_from_run_config

        return benchmark_from_run_config(cfg)
    allowed = ["synthetic", "continual-vs", "continual-vs-shuffled", "continual-as", "continual-as-shuffled"]
    raise ValueError(f"unknown benchmark {cfg.benchmark!r}; allowed: {allowed}")


def _model_for(cfg: RunConfig, bench) -> torch.nn.Module:
    from .models import create_model, get_config

    base = get_config(cfg.model)
    bc = bench.config
    overrides = {}
    for mfield, bfield in (("audio_length", "target_length"), ("num_mel_bins", "num_mel_bins"),
                           ("n_frames", "n_frames"), ("image_size", "image_size")):
        bval = getattr(bc, bfield, None)
        if bval is not None and getattr(base, mfield) != bval:
            overrides[mfield] = bval
    if overrides:
        warnings.warn(f"model preset {cfg.model!r} adapted to the benchmark's input shapes: {overrides}")
    return create_model(cfg.model, **overrides)


def _loggers(cfg: RunConfig, out: Path) -> list:
    from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger

    loggers: list = [InteractiveLogger()] if cfg.progress else []
    if cfg.csv_log:
        loggers.append(CSVLogger(log_folder=str(out / "csv_logs")))
    if cfg.tensorboard:
        loggers.append(TensorboardLogger(tb_log_dir=str(out / "tb")))
    return loggers


def run_experiment(cfg: RunConfig) -> dict:
    """Run continual pre-training + retrieval evaluation; returns the ``results.json`` content."""
    from .evaluation import av_evaluator, get_retrieval_metrics
    from .evaluation.plots import save_accuracy_matrix_png
    from .training import AVPretraining, default_optimizer, make_plugins
    from .training.checkpoint import load_checkpoint, save_checkpoint

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)
    t0 = time.time()
    bench = build_benchmark(cfg)
    model = _model_for(cfg, bench)
    plugins = make_plugins(cfg.strategy, mem_size=cfg.mem_size, batch_size=cfg.batch_size, **cfg.strategy_options)
    evaluator = av_evaluator(loggers=_loggers(cfg, out), ks=cfg.ks, n_tasks=len(bench.train_stream))
    strategy = AVPretraining(
        model=model,
        optimizer=default_optimizer(model, lr=cfg.lr),
        train_mb_size=cfg.batch_size,
        train_epochs=cfg.epochs,
        eval_mb_size=cfg.eval_batch_size,
        device=cfg.device,
        plugins=plugins,
        evaluator=evaluator,
        amp=cfg.amp,
    )
    retrieval = get_retrieval_metrics(evaluator)
    ckpt = out / "checkpoint.pt"
    done = 0
    if cfg.resume and ckpt.exists():
        extra = load_checkpoint(ckpt, strategy)
        done = int(extra.get("completed_experiences", 0))
        if "retrieval_state" in extra:
            retrieval.load_state_dict(extra["retrieval_state"])
        print(f"[avalanche-av] resumed from {ckpt}: {done} experience(s) already trained")

    train_times = []
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
            extra={"completed_experiences": t + 1, "retrieval_state": retrieval.state_dict()},
        )

    results = retrieval.to_dict()
    summary = {
        "config": cfg.to_json(),
        "task_names": list(getattr(bench, "task_names", [])),
        "wall_seconds": time.time() - t0,
        "train_seconds_per_experience": train_times,
        "skipped_steps": strategy.skipped_steps,
        "retrieval": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    table = results_table(retrieval, ks=cfg.ks)
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
    summary["table"] = table
    return summary


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def results_table(retrieval, ks=(1, 5, 10)) -> pd.DataFrame:
    """Final per-task R@k in both directions, plus rows for the mean, A, F and F_paper."""
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
            rows.append(row)
    return pd.DataFrame(rows)


def compare_strategies(base: RunConfig, strategies: list[str], seeds: list[int], ks=(1, 5, 10)) -> pd.DataFrame:
    """Run every strategy over every seed (same data, same settings) and aggregate A and F.

    Each run writes into ``<base.out_dir>/<strategy>/seed<k>``. Returns one row per strategy with
    the mean and std over seeds of A, F and F_paper for every R@K and direction; also written to
    ``<base.out_dir>/compare.csv``.
    """
    records = []
    for strategy in strategies:
        for seed in seeds:
            cfg = dataclasses.replace(base, strategy=strategy, seed=seed,
                                      out_dir=str(Path(base.out_dir) / strategy.replace("+", "plus") / f"seed{seed}"))
            summary = run_experiment(cfg)
            for _, row in summary["table"].iterrows():
                for which in ("A", "F", "F_paper"):
                    records.append({"strategy": strategy, "seed": seed, "metric": f"{which} {row['metric']}",
                                    "value": row[which]})
    df = pd.DataFrame(records)
    agg = df.groupby(["strategy", "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    wide = agg.pivot(index="strategy", columns="metric", values="mean").reindex(strategies)
    std = agg.pivot(index="strategy", columns="metric", values="std").reindex(strategies)
    out = Path(base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg.to_csv(out / "compare.csv", index=False)
    table = wide.round(3).astype(str) + " ± " + std.fillna(0).round(3).astype(str)
    cols = [c for k in ks for c in (f"A R@{k} a2v", f"F R@{k} a2v", f"A R@{k} v2a", f"F R@{k} v2a") if c in table]
    return table[cols]
