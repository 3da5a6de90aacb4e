"""Localization, modality gap and training diagnostics for several methods on a small synthetic stream.

For each method the evaluator holds, besides the retrieval metrics:

* ``LocalizationMetrics``: after each task, the share of the audio-to-video cosine map (every
  method) and of the AVM importance (STELLA) on the true sounding patches of each task's
  retrieval clips, with the chance level, and its forgetting over the stream;
* ``training_diagnostics``: AVM match accuracy, excluded fractions, memory fill and the
  training-clip localization, averaged every few steps.

It prints one line per method and writes the modality-gap plot and attention maps of one fixed
clip after the first and the last task:

    python examples/localization_all_methods.py --epochs 2 --out av_runs/localization_all_methods

The default is a smoke-sized run (about a minute on 2 CPU cores): the numbers show the tools, not a
result. Results at a meaningful budget are in benchmarks_av/RESULTS.md.
"""
import argparse
from pathlib import Path

import torch
from avalanche.training.plugins import EvaluationPlugin

from avalanche_av.analysis import draw_tracked_attention
from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import LocalizationMetrics, RetrievalMetrics, plot_modality_gap, training_diagnostics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

p = argparse.ArgumentParser()
p.add_argument("--methods", default="finetune,er,der++,stella")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--out", default="av_runs/localization_all_methods")
args = p.parse_args()
out = Path(args.out)

bench = sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=16, eval_clips_per_class=8)
tracked = int(bench.test_stream[0].dataset[0][3])  # a fixed retrieval clip of task 0
gaps = {}
print(f"{'method':10} {'cos share T0 after T0 -> last':>30} {'A cos':>7} {'F cos':>7} {'A avm':>7} {'chance':>7} "
      f"{'AVM acc (train)':>16}")
for method in args.methods.split(","):
    torch.manual_seed(0)
    model = create_model("tiny")
    loc = LocalizationMetrics(bench.sounding_masks, bench.active_frames, track_clips=[tracked], n_tasks=bench.n_tasks)
    retrieval = RetrievalMetrics(n_tasks=bench.n_tasks)
    diags = training_diagnostics(every=4, sounding_masks=bench.sounding_masks, active_frames=bench.active_frames)
    strategy = AVPretraining(
        model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=16, train_epochs=args.epochs,
        eval_mb_size=32, device="cpu", plugins=make_plugins(method, mem_size=32, batch_size=16),
        evaluator=EvaluationPlugin(retrieval, loc, *diags, loggers=[]),
    )
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    share = loc.matrix("cosine", "share")
    avm = loc.matrix("avm", "share")
    a_avm = float(avm[-1].mean()) if not torch.isnan(torch.tensor(avm)).all() else float("nan")
    acc = diags[0].result().get("AVM_Acc", float("nan"))
    print(f"{method:10} {share[0, 0]:>14.3f} -> {share[-1, 0]:<13.3f} {share[-1].mean():7.3f} "
          f"{loc.forgetting('cosine', 'share'):7.3f} {a_avm:7.3f} {loc.matrix('cosine', 'chance')[-1].mean():7.3f} "
          f"{acc:16.3f}")
    gaps[method] = retrieval.modality_gap_matrix()
    draw_tracked_attention(bench, loc, out / method, rows=(0, -1), patch_size=model.config.patch_size, label=method)

out.mkdir(parents=True, exist_ok=True)
plot_modality_gap(gaps, title="Modality gap after each task (own task's retrieval clips)").savefig(
    out / "modality_gap.png", dpi=100)
print(f"wrote {out}/modality_gap.png and {out}/<method>/tracked_clip{tracked}.png")
