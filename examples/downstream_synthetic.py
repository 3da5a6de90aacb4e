"""Downstream evaluation on the synthetic stream: a checkpoint (or a quickly pre-trained backbone)
against the random initialisation, on all four tasks.

    avalanche-av run --strategy stella --epochs 4 --out av_runs/stella      # optional: a real checkpoint
    python examples/downstream_synthetic.py --checkpoint av_runs/stella/checkpoint.pt

Without ``--checkpoint`` the tiny backbone is pre-trained here for ``--pretrain-epochs`` epochs of
plain self-supervised training on the stream's training clips (a few minutes on 2 CPU cores).
Each task writes ``results.json`` and its pictures under ``--out/<backbone>/<task>``; the frozen
features are cached under ``--out/feature_cache`` and shared by the tasks.
"""
import argparse
from pathlib import Path

import torch

from avalanche_av.downstream import DownstreamConfig, load_backbone, run_downstream, ssl_train, synthetic_data

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default=None, help="run checkpoint to evaluate (default: pre-train one here)")
p.add_argument("--pretrain-epochs", type=int, default=4)
p.add_argument("--out", default="av_runs/downstream_example")
args = p.parse_args()
out = Path(args.out)

ckpt = args.checkpoint
if ckpt is None:
    data = synthetic_data(seed=0)  # the default stream of `avalanche-av run`
    model, _ = load_backbone("random", "tiny", data.input_shapes, seed=0)
    train = torch.cat([data.indices("train"), data.indices("val")])
    losses = ssl_train(model, data, train, epochs=args.pretrain_epochs, lr=1e-3, batch_size=32)
    print("pre-training loss per epoch:", [round(x, 3) for x in losses])
    ckpt = str(out / "pretrained.pt")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt)

tasks = {
    "classify": {"features": "all"},
    "event": {},
    "segment": {"train_per_class": 32, "epochs": 30},
    "retrieval-ft": {"epochs": 5},
}
rows = []
for name, c in (("random", "random"), ("pretrained", ckpt)):
    for task, over in tasks.items():
        cfg = DownstreamConfig(task=task, checkpoint=c, model="tiny", out_dir=str(out / name / task),
                               cache_dir=str(out / "feature_cache"), **over)
        m = run_downstream(cfg)["metrics"]
        if task == "classify":
            rows.append((name, "classify top-1 (joint)", m["joint"]["top1"]))
        elif task == "event":
            rows.append((name, "event segment accuracy", m["segment_accuracy"]))
        elif task == "segment":
            rows += [(name, "segment mIoU", m["mIoU"]), (name, "segment F-score", m["F_score"])]
        else:
            rows += [(name, "retrieval-ft R@5 a2v", m["R@5 a2v"]), (name, "retrieval-ft R@5 v2a", m["R@5 v2a"])]

print(f"\n{'backbone':12s} {'metric':26s} value")
for name, metric, value in rows:
    print(f"{name:12s} {metric:26s} {value:.3f}")
