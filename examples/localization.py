"""Where does STELLA's AVM look? Train on one synthetic task, then measure the share of video
importance on the ground-truth sounding patches and save an attention-map picture.

    python examples/localization.py --epochs 40 --out av_runs/localization.png

The AVM needs a few hundred steps before it matches pairs at all: 40 epochs (640 steps, about
5 minutes on 2 CPU cores) gave 13.6x the uniform share (benchmarks_av/RESULTS.md, section 5);
a handful of epochs stays near 1x.
"""
import argparse

import torch

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, avm_importance, importance_share, plot_attention_map
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer
from avalanche_av.training.plugins import StellaPlugin

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=40)
p.add_argument("--out", default="av_runs/localization.png")
args = p.parse_args()

bench = sounding_objects(seed=0, n_tasks=1, train_clips_per_class=128)
model = create_model("tiny")
stella = StellaPlugin(mem_size=32)
strategy = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=32,
                         train_epochs=args.epochs, evaluator=av_evaluator(loggers=[]), plugins=[stella])
strategy.train(bench.train_stream[0])

ds = bench.test_stream[0].dataset
audio, video, _, clip_id = (torch.stack([ds[i][j] for i in range(len(ds))]) for j in range(4))
_, imp_v, _ = avm_importance(model.eval(), stella.avm, audio, video)
gt = (bench.sounding_masks[clip_id] & bench.active_frames[clip_id][..., None, None]).flatten(1)
share, ratio = importance_share(imp_v, gt)
print(f"importance on sounding patches: {share.mean():.3f} ({ratio.mean():.2f}x uniform)")
plot_attention_map(video[0], imp_v[0], gt_mask=gt[0], title="AVM importance").savefig(args.out)
print("saved", args.out)
