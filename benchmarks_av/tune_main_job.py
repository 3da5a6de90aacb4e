"""Choose the main job's training schedule on a validation split of the training clips.

The retrieval clips are never looked at: every candidate trains on the synthetic stream with
``validation_clips_per_class`` clips per class held out of training, and is scored by A(R@5)
over those validation clips (same gallery size as the retrieval sets). Prints one line per
candidate and writes ``--out`` (JSON).

    OMP_NUM_THREADS=1 python benchmarks_av/tune_main_job.py --out benchmarks_av/results/tune_main_job.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins
from avalanche_av.training.plugins.schedule import WarmupCosinePlugin

CANDIDATES = {
    "default (bs32, lr1e-3, constant)": dict(batch_size=32, lr=1e-3, schedule=False),
    "bs16, lr1e-3, constant": dict(batch_size=16, lr=1e-3, schedule=False),
    "bs32, lr2e-3, warmup+cosine": dict(batch_size=32, lr=2e-3, schedule=True),
    "bs16, lr1e-3, warmup+cosine": dict(batch_size=16, lr=1e-3, schedule=True),
    "bs16, lr2e-3, warmup+cosine": dict(batch_size=16, lr=2e-3, schedule=True),
    "bs16, lr1e-3, warmup+cosine, 15 epochs": dict(batch_size=16, lr=1e-3, schedule=True, epochs=15),
    "bs16, lr1e-3, warmup+cosine, 12 epochs": dict(batch_size=16, lr=1e-3, schedule=True, epochs=12),
}


def run(name: str, batch_size: int, lr: float, schedule: bool, epochs: int, seed: int, strategy: str, val: int) -> dict:
    """Train one candidate on the stream minus its validation clips; A(R@5) on the validation clips."""
    torch.manual_seed(seed)
    bench = sounding_objects(seed=seed, validation_clips_per_class=val)
    model = create_model("tiny")
    plugins = make_plugins(strategy, mem_size=64, batch_size=batch_size)
    if schedule:
        plugins.append(WarmupCosinePlugin())
    evaluator = av_evaluator(loggers=[], ks=(1, 5, 10), n_tasks=bench.n_tasks)
    s = AVPretraining(model=model, optimizer=default_optimizer(model, lr=lr), train_mb_size=batch_size,
                      train_epochs=epochs, eval_mb_size=64, device="cpu", plugins=plugins, evaluator=evaluator)
    t0 = time.time()
    for exp in bench.train_stream:
        s.train(exp)
        s.eval(bench.validation_stream)
    r = get_retrieval_metrics(evaluator)
    gallery = sum(len(e.dataset) for e in bench.validation_stream)
    out = {"name": name, "seconds": time.time() - t0, "gallery": gallery, "chance_r5": 5 / gallery}
    for d in ("a2v", "v2a"):
        out[f"A_R5_{d}"] = r.summary_metric("A", direction=d, k=5)
    out["ratio_min"] = min(out["A_R5_a2v"], out["A_R5_v2a"]) / out["chance_r5"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="stella")
    p.add_argument("--validation-clips-per-class", type=int, default=16)
    p.add_argument("--only", default="", help="comma-separated candidate indices to run")
    p.add_argument("--out", default="benchmarks_av/results/tune_main_job.json")
    a = p.parse_args()
    names = list(CANDIDATES)
    if a.only:
        names = [names[int(i)] for i in a.only.split(",")]
    results = []
    for name in names:
        spec = {"epochs": a.epochs, **CANDIDATES[name]}
        res = run(name, **spec, seed=a.seed, strategy=a.strategy,
                  val=a.validation_clips_per_class)
        results.append(res)
        print(f"{name:36s} A(R@5) a2v {res['A_R5_a2v']:.3f} v2a {res['A_R5_v2a']:.3f} "
              f"(chance {res['chance_r5']:.3f}, min {res['ratio_min']:.1f}x) {res['seconds']:.0f} s", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=2))


if __name__ == "__main__":
    main()
