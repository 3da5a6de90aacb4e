"""Train on a synthetic stream with base-like shapes: 128² frames with objects of 2 x 2 patch
cells, so that each frame has 64 patches and ρ selects among as many as in the paper's setting.
The tiny preset adapts to the new input shapes. The same from the shell:
``avalanche-av run --synthetic image_size=128 --synthetic object_cells=2``.

    python examples/synthetic_base_shapes.py --out av_runs/shape128_demo
"""
import argparse

from avalanche_av.experiment import RunConfig, run_experiment

p = argparse.ArgumentParser()
p.add_argument("--out", default="av_runs/shape128_demo")
p.add_argument("--epochs", type=int, default=2)
args = p.parse_args()

cfg = RunConfig(
    strategy="stella", n_tasks=2, classes_per_task=2, train_clips_per_class=32, eval_clips_per_class=8,
    epochs=args.epochs, out_dir=args.out,
    synthetic_options={"image_size": 128, "object_cells": 2},
)
cfg.validate()  # ValueError naming the setting, before any data is built
res = run_experiment(cfg)
print(res["table"].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
print("input shapes from the stream:", res["config"]["synthetic_options"])
