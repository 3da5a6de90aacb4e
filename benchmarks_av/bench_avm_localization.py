"""AVM behaviour on the synthetic stream: held-out matching accuracy and localization.

Trains STELLA (tiny model) on the first synthetic task, then, on that task's held-out
retrieval clips, reports:

* AVM accuracy on true vs. deranged pairs (chance 0.5);
* the share of video importance on the ground-truth sounding patches (source cell in the
  frames where it sounds), divided by the uniform share (1.0 = no localization);
* an attention-map PNG of a few clips.

Usage::

    python benchmarks_av/bench_avm_localization.py --epochs 10 --out benchmarks_av/results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-clips-per-class", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks_av/results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from avalanche_av.benchmarks import sounding_objects
    from avalanche_av.evaluation import (av_evaluator, avm_importance, avm_match_accuracy, importance_share,
                                         plot_attention_map)
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer
    from avalanche_av.training.plugins import StellaPlugin

    torch.manual_seed(args.seed)
    bench = sounding_objects(seed=args.seed, n_tasks=1, train_clips_per_class=args.train_clips_per_class)
    model = create_model("tiny")
    stella = StellaPlugin(mem_size=64)
    strategy = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=32,
                             train_epochs=args.epochs, plugins=[stella], evaluator=av_evaluator(loggers=[]),
                             device="cpu")
    t0 = time.time()
    strategy.train(bench.train_stream[0])
    train_s = time.time() - t0
    model.eval()
    ds = bench.test_stream[0].dataset
    audio, video, _, clip_id = (torch.stack([ds[i][j] for i in range(len(ds))]) for j in range(4))
    imp_a, imp_v, _ = avm_importance(model, stella.avm, audio, video)
    gt = (bench.sounding_masks[clip_id] & bench.active_frames[clip_id][..., None, None]).flatten(1)
    share, ratio = importance_share(imp_v, gt)
    acc = avm_match_accuracy(model, stella.avm, audio, video, torch.Generator().manual_seed(0))
    res = {
        "command": "python benchmarks_av/bench_avm_localization.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "epochs": args.epochs,
        "train_seconds": round(train_s, 1),
        "heldout_clips": int(len(ds)),
        "avm_match_accuracy": round(acc, 3),
        "gt_importance_share_mean": round(float(share.mean()), 4),
        "uniform_share_mean": round(float((share / ratio).mean()), 4),
        "share_over_uniform_mean": round(float(ratio.mean()), 2),
        "share_over_uniform_median": round(float(ratio.median()), 2),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "avm_localization.json").write_text(json.dumps(res, indent=2))
    fig = plot_attention_map(video[0], imp_v[0], gt_mask=gt[0], title="AVM video importance (white: sounding source)")
    fig.savefig(out / "avm_attention.png", dpi=100)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
