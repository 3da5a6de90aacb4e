"""Downstream evaluation of continually pre-trained backbones vs a random initialisation (issue #11).

A miniature of the paper's Table 4 on the synthetic stream: for each seed ``s`` and each
backbone (``random`` = the tiny preset at its seed-``s`` initialisation, and the checkpoints of
``avalanche-av run --strategy X --seed s``), run the four downstream tasks through
``avalanche_av.downstream.run_downstream`` on the stream of seed ``s``:

* ``classify``: linear probe on joint / audio / video features, full training split (top-1);
* ``event``: per-frame segment classes + background, linear head (segment accuracy);
* ``segment``: the sounding source's cells in sounding frames, decoder trained on 32 clips per
  class for at most 30 epochs, no early stop before epoch 15 (mIoU, F-score);
* ``segment-full`` (not in the default ``--tasks``): the same decoder on the full training
  split with the runner's defaults (at most 60 epochs, patience 8);
* ``retrieval-ft``: SSL fine-tuning on one held-out task (4 new classes), A<->V R@k on its
  64 test clips.

Each run writes ``WORK/s<seed>/<backbone>/<task>/results.json`` and is skipped when that file
exists, so several processes (e.g. one per seed) can share the work and a final call with
``--aggregate`` builds the table. Make the checkpoints first, e.g.::

    for S in 0 1 2; do for X in finetune er der++ stella; do
      OMP_NUM_THREADS=1 avalanche-av run --strategy $X --epochs 4 --seed $S --out /tmp/dsrun/$X/s$S
    done; done
    OMP_NUM_THREADS=1 python benchmarks_av/bench_downstream.py --runs /tmp/dsrun --seeds 0,1,2 \\
        --work /tmp/ds_bench --out benchmarks_av/results/downstream.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

#: (name, DownstreamConfig overrides, metrics reported); the downstream task is the name unless
#: the overrides give one ("segment-full": segmentation with the runner's defaults, i.e. the full
#: training split, at most 60 epochs, patience 8, as the tests' brief backbones use it)
TASKS = [
    ("classify", {"features": "all"}, ["joint/top1", "audio/top1", "video/top1"]),
    ("event", {}, ["segment_accuracy"]),
    ("segment", {"train_per_class": 32, "epochs": 30, "patience": 6, "min_epochs": 15}, ["mIoU", "F_score", "mIoU_nonempty"]),
    ("segment-full", {"task": "segment"}, ["mIoU", "F_score", "mIoU_nonempty"]),
    ("retrieval-ft", {"epochs": 5, "patience": 2}, ["R@1 a2v", "R@5 a2v", "R@10 a2v", "R@1 v2a", "R@5 v2a", "R@10 v2a",
                                                     "zero_shot R@5 a2v", "zero_shot R@5 v2a"]),
]


def _get(metrics: dict, path: str):
    cur = metrics
    for part in path.split("/"):
        cur = cur[part]
    return cur


def run_all(runs: Path, work: Path, seeds: list[int], backbones: list[str], tasks: list[str]) -> None:
    from avalanche_av.downstream import DownstreamConfig, run_downstream

    for s in seeds:
        for b in backbones:
            ckpt = "random" if b == "random" else str(runs / b / f"s{s}" / "checkpoint.pt")
            for task, over, _ in TASKS:
                if task not in tasks:
                    continue
                out = work / f"s{s}" / b.replace("+", "plus") / task
                if (out / "results.json").is_file():
                    continue
                t0 = time.time()
                settings = {"task": task, **over}
                cfg = DownstreamConfig(checkpoint=ckpt, model="tiny", seed=s, stream_seed=s, out_dir=str(out),
                                       cache_dir=str(work / "feature_cache"), progress=False, **settings)
                r = run_downstream(cfg)
                print(f"[bench_downstream] seed {s} {b:9s} {task:12s} {time.time() - t0:6.1f} s", flush=True)
                del r


def aggregate(work: Path, seeds: list[int], backbones: list[str]) -> dict:
    rows = []
    for s in seeds:
        for b in backbones:
            for task, _, keys in TASKS:
                f = work / f"s{s}" / b.replace("+", "plus") / task / "results.json"
                if not f.is_file():
                    continue
                res = json.loads(f.read_text())
                for k in keys:
                    v = _get(res["metrics"], k)
                    rows.append({"seed": s, "backbone": b, "task": task, "metric": k, "value": v,
                                 "wall_seconds": res["timings"]["wall_seconds"]})
    table: dict = {}
    for b in backbones:
        for task, _, keys in TASKS:
            for k in keys:
                vals = [r["value"] for r in rows if r["backbone"] == b and r["task"] == task and r["metric"] == k
                        and r["value"] is not None]
                if vals:
                    table.setdefault(b, {})[f"{task}:{k}"] = {
                        "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                        "n": len(vals), "values": vals}
    return {"rows": rows, "table": table}


def markdown(table: dict, backbones: list[str]) -> str:
    cols = [f"{t}:{k}" for t, _, keys in TASKS for k in keys]
    present = [c for c in cols if any(c in table.get(b, {}) for b in backbones)]
    lines = ["| backbone | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for b in backbones:
        cells = []
        for c in present:
            e = table.get(b, {}).get(c)
            cells.append("-" if e is None else f"{e['mean']:.3f} ± {e['std']:.3f}")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="/tmp/dsrun", help="folder of <strategy>/s<seed>/checkpoint.pt")
    p.add_argument("--work", default="/tmp/ds_bench", help="per-run results and the feature cache")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--backbones", default="random,finetune,er,der++,stella")
    p.add_argument("--tasks", default="classify,event,segment,retrieval-ft")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--aggregate", action="store_true", help="only build the table from finished runs")
    p.add_argument("--out", default=None, help="write rows + table here (JSON)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(x) for x in args.seeds.split(",")]
    backbones = [b for b in args.backbones.split(",") if b]
    work = Path(args.work)
    t0 = time.time()
    if not args.aggregate:
        run_all(Path(args.runs), work, seeds, backbones, args.tasks.split(","))
    res = aggregate(work, seeds, backbones)
    res.update({"command": "python benchmarks_av/bench_downstream.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
                "torch": torch.__version__, "threads": args.threads, "seconds": round(time.time() - t0, 1)})
    print(markdown(res["table"], backbones))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
