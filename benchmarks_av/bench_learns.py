"""Does the default setup learn? Finetune on the first synthetic task, evaluate retrieval.

Trains the tiny model (finetune, the main job's defaults) on task 0 of the default synthetic
stream only, then evaluates the whole test stream (gallery = every task's retrieval clips) and
reports task 0's R@1/5/10 against chance (K / gallery size), clip- and class-level.

Usage::

    python benchmarks_av/bench_learns.py --epochs 10 --seeds 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def run(seed: int, epochs: int, strategy: str = "finetune") -> dict:
    from avalanche_av.benchmarks import sounding_objects
    from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

    torch.manual_seed(seed)
    bench = sounding_objects(seed=seed)
    model = create_model("tiny")
    evaluator = av_evaluator(loggers=[])
    strategy_obj = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=32,
                                 train_epochs=epochs, eval_mb_size=64, evaluator=evaluator, device="cpu",
                                 plugins=make_plugins(strategy, mem_size=64, batch_size=32, run_seed=seed))
    t0 = time.time()
    strategy_obj.train(bench.train_stream[0])
    train_s = time.time() - t0
    strategy_obj.eval(bench.test_stream)
    rm = get_retrieval_metrics(evaluator)
    gallery = sum(len(e.dataset) for e in bench.test_stream)
    out = {"seed": seed, "train_seconds": round(train_s, 1), "gallery": gallery}
    for k in (1, 5, 10):
        for d in ("a2v", "v2a"):
            out[f"R@{k}_{d}"] = round(float(rm.matrix(d, k)[0, 0]), 4)
            out[f"ClassR@{k}_{d}"] = round(float(rm.matrix(d, k, level="class")[0, 0]), 4)
        out[f"chance_R@{k}"] = round(k / gallery, 4)
    out["R@5_over_chance_a2v"] = round(out["R@5_a2v"] / out["chance_R@5"], 1)
    out["R@5_over_chance_v2a"] = round(out["R@5_v2a"] / out["chance_R@5"], 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks_av/results/learns.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [run(int(s), args.epochs) for s in args.seeds.split(",")]
    res = {"command": "python benchmarks_av/bench_learns.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
