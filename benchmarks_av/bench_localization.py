"""Localization and modality gap for every method on the synthetic stream (issue "Evidence", items 7-9).

For each method and seed: continual pre-training on the synthetic stream, with the whole test
stream evaluated after each task. The evaluator holds, besides retrieval:

* ``LocalizationMetrics``: per task, the share of the audio-to-video cosine map (every method)
  and of the AVM importance (STELLA variants) on the true sounding patches of the retrieval
  clips, its chance level, the rank AUC (chance 0.5), forgetting over the stream, the
  audio-swap control (the same maps with another clip's audio) and a pixel-intensity reference;
* ``training_diagnostics``: AVM match accuracy, excluded fractions, memory fill and the
  training-clip localization, averaged every ``--every`` steps.

Writes to ``--out``:

* ``localization.json``: everything, per method and seed (matrices, A, F, modality-gap matrices,
  diagnostics histories, timings, the command);
* ``localization.md``: the table (mean ± std over seeds);
* ``modality_gap.png`` (paper Fig. 6, left), ``localization_over_tasks.png`` (the cosine and AVM
  share on the tasks seen so far, after each task, with chance), ``training_diagnostics.png``
  (AVM accuracy and training-clip localization against steps);
* ``attention/<method>/tracked_clip<id>.png``: maps of fixed retrieval clips after the first and
  the last task (first seed).

The settings are the main job's defaults (``avalanche-av run``). ``--quick`` is a smoke-sized
stream for checking the script, not for results.

Usage::

    python benchmarks_av/bench_localization.py --methods finetune,er,der++,stella --seeds 0,1,2
    python benchmarks_av/bench_localization.py --quick --out /tmp/loc_quick
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def _mean_std(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def _seen_mean(m: np.ndarray) -> list[float]:
    """Mean over the tasks trained so far (columns 0..t) of each row t."""
    out = []
    for t in range(m.shape[0]):
        row = m[t, : t + 1]
        out.append(float(np.nanmean(row)) if np.isfinite(row).any() else float("nan"))
    return out


def run_one(method: str, seed: int, args: argparse.Namespace, out: Path, draw: bool) -> dict:
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_av.analysis import draw_tracked_attention
    from avalanche_av.benchmarks import sounding_objects
    from avalanche_av.evaluation import LocalizationMetrics, RetrievalMetrics, training_diagnostics
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

    torch.manual_seed(seed)
    bench = sounding_objects(seed=seed, n_tasks=args.n_tasks, classes_per_task=args.classes_per_task,
                             train_clips_per_class=args.train_clips_per_class,
                             eval_clips_per_class=args.eval_clips_per_class)
    # Fixed clips to draw: the first retrieval clip of the first task and of the last task.
    tracked = [int(bench.test_stream[0].dataset[0][3]), int(bench.test_stream[-1].dataset[0][3])]
    model = create_model("tiny")
    loc = LocalizationMetrics(bench.sounding_masks, bench.active_frames, track_clips=tracked, n_tasks=bench.n_tasks)
    retrieval = RetrievalMetrics(n_tasks=bench.n_tasks)
    diags = training_diagnostics(every=args.every, sounding_masks=bench.sounding_masks,
                                 active_frames=bench.active_frames)
    strategy = AVPretraining(
        model=model, optimizer=default_optimizer(model, lr=args.lr), train_mb_size=args.batch_size,
        train_epochs=args.epochs, eval_mb_size=64, device="cpu",
        plugins=make_plugins(method, mem_size=args.mem_size, batch_size=args.batch_size, run_seed=seed),
        evaluator=EvaluationPlugin(retrieval, loc, *diags, loggers=[]),
    )
    # Before any training: the init row. Untrained maps are not at chance (random features
    # respond to the bright source), so the trained maps are read against this row too.
    strategy.eval(bench.test_stream)
    t0 = time.time()
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    seconds = time.time() - t0
    if draw:
        draw_tracked_attention(bench, loc, out / "attention" / method.replace("+", "plus"), rows=(0, -1),
                               patch_size=model.config.patch_size, label=f"{method}, seed {seed}")
    return {
        "method": method,
        "seed": seed,
        "seconds": round(seconds, 1),
        "localization": loc.to_dict(),
        "modality_gap": retrieval.modality_gap_matrix().tolist(),
        "A_R5_a2v": retrieval.summary_metric("A", "a2v", 5),
        "A_R5_v2a": retrieval.summary_metric("A", "v2a", 5),
        "diagnostics": {type(d).__name__: d.to_dict() for d in diags},
    }


def _matrix(rec: dict, kind: str, stat: str) -> np.ndarray:
    block = next(iter(rec["localization"]["streams"].values()))
    if stat == "chance":
        return np.array(block["chance"], dtype=float)
    if kind not in block:
        return np.full((0, 0), np.nan)
    return np.array([[np.nan if x is None else x for x in r] for r in block[kind]["matrices"][stat]], dtype=float)


def _init(rec: dict, kind: str, stat: str = "auc") -> float | None:
    """Mean over tasks of ``stat`` of map ``kind`` in the eval before training (``None`` if absent)."""
    init = next(iter(rec["localization"]["streams"].values())).get("init") or {}
    vals = list(init.get(kind, {}).get(stat, {}).values())
    return float(np.mean(vals)) if vals else None


def _write_outputs(records: list[dict], methods: list[str], out: Path, header: str) -> None:
    from avalanche_av.evaluation import plot_metric_curves, plot_modality_gap
    from avalanche_av.evaluation.functional import average_accuracy, forgetting

    rows = ["| method | seeds | chance | cosine share A (swap) | cosine AUC A (swap) | cosine share F | "
            "AVM share A (swap) | AVM AUC A (swap) | AVM share F | AUC before training (cosine / AVM) | "
            "intensity share A / AUC A |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    curves: dict[str, list[float]] = {}
    gaps = {}

    def col(recs: list[dict], kind: str, stat: str, which: str = "A") -> list:
        fn = average_accuracy if which == "A" else forgetting
        mats = [_matrix(r, kind, stat) for r in recs]
        return [fn(x) if x.size and np.isfinite(x).any() else None for x in mats]

    for m in methods:
        recs = [r for r in records if r["method"] == m]
        for kind in ("cosine", "avm"):
            share = [_matrix(r, kind, "share") for r in recs]
            share = [x for x in share if x.size and np.isfinite(x).any()]
            if share:
                curves[f"{m}, {kind}"] = list(np.nanmean([_seen_mean(x) for x in share], axis=0))
        chance = [float(np.nanmean(_matrix(r, "cosine", "chance")[-1])) for r in recs]

        def pair(kind: str, stat: str) -> str:
            a, b = _mean_std(col(recs, kind, stat)), _mean_std(col(recs, kind, f"{stat}_swap"))
            return a if a == "-" else f"{a} ({b})"

        rows.append(f"| {m} | {len(recs)} | {_mean_std(chance)} | {pair('cosine', 'share')} | {pair('cosine', 'auc')} | "
                    f"{_mean_std(col(recs, 'cosine', 'share', 'F'))} | {pair('avm', 'share')} | {pair('avm', 'auc')} | "
                    f"{_mean_std(col(recs, 'avm', 'share', 'F'))} | {_mean_std([_init(r, 'cosine') for r in recs])} / "
                    f"{_mean_std([_init(r, 'avm') for r in recs])} | {_mean_std(col(recs, 'intensity', 'share'))} / "
                    f"{_mean_std(col(recs, 'intensity', 'auc'))} |")
        gaps[m] = np.stack([np.array(r["modality_gap"], dtype=float) for r in recs])
    note = ("A: mean over tasks after the last task; F: textbook forgetting of the localization matrix. "
            "Share chance = the sounding patches' area share; AUC chance = 0.5. In brackets: the same map computed "
            "with another clip's audio (audio-swap control); the gap to it is the part of the localization the audio "
            "accounts for. Intensity: each patch's mean pixel value, no audio and no model (visual saliency).")
    (out / "localization.md").write_text(header + "\n\n" + "\n".join(rows) + f"\n\n{note}\n")
    print("\n".join(rows))

    plot_modality_gap(gaps, title="Modality gap after each task (own task's retrieval clips)").savefig(
        out / "modality_gap.png", dpi=100)
    n_exp = max((len(v) for v in curves.values()), default=0)
    fig = plot_metric_curves(curves, x=list(range(1, n_exp + 1)),
                             title="Localization on the tasks seen so far, after each task",
                             xlabel="after training task", ylabel="share of the map on sounding patches")
    ax = fig.axes[0]
    ax.set_xticks(range(1, n_exp + 1))
    chance_all = [float(np.nanmean(_matrix(r, "cosine", "chance"))) for r in records]
    ax.axhline(float(np.mean(chance_all)), color="grey", linestyle="--", label="chance (uniform map)")
    ax.legend(fontsize=8)
    fig.savefig(out / "localization_over_tasks.png", dpi=100)

    diag_curves: dict[str, list[float]] = {}
    xs: list[int] = []
    for r in records:
        if r["seed"] != records[0]["seed"]:
            continue
        for metric, key, label in (("AVMMatchMetric", "AVM_Acc", "AVM match accuracy"),
                                   ("TrainLocalizationMetric", "Loc_Share", "training-clip share"),
                                   ("TrainLocalizationMetric", "Loc_Chance", "training-clip chance")):
            hist = r["diagnostics"].get(metric, {}).get("history", [])
            if hist and key in hist[0]["values"]:
                diag_curves[f"{r['method']}: {label}"] = [h["values"].get(key, np.nan) for h in hist]
                xs = [h["iteration"] for h in hist]
    if diag_curves:
        n = min(len(v) for v in diag_curves.values())
        fig = plot_metric_curves({k: v[:n] for k, v in diag_curves.items()}, x=xs[:n],
                                 title=f"Training diagnostics (seed {records[0]['seed']})",
                                 xlabel="training iteration", ylabel="value (window mean)")
        fig.savefig(out / "training_diagnostics.png", dpi=100)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="finetune,er,der++,stella")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-tasks", type=int, default=4)
    p.add_argument("--classes-per-task", type=int, default=4)
    p.add_argument("--train-clips-per-class", type=int, default=128)
    p.add_argument("--eval-clips-per-class", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--mem-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=10, help="training-diagnostic window in iterations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke-sized stream (2 tasks x 2 classes, 16 clips, 1 epoch)")
    p.add_argument("--out", default="benchmarks_av/results/localization")
    args = p.parse_args(argv)
    if args.quick:
        args.n_tasks, args.classes_per_task, args.train_clips_per_class = 2, 2, 16
        args.eval_clips_per_class, args.epochs, args.batch_size, args.mem_size, args.every = 8, 1, 16, 32, 1
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks_av/bench_localization.py " + " ".join(sys.argv[1:] if argv is None else argv)
    records = []
    for m in methods:
        for i, s in enumerate(seeds):
            rec = run_one(m, s, args, out, draw=i == 0)
            print(f"{m} seed {s}: {rec['seconds']} s", flush=True)
            records.append(rec)
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    header = (f"Command: `{command}`  \nMachine: {machine}; date {date}; seeds {seeds}; "
              f"{args.n_tasks} tasks x {args.classes_per_task} classes, {args.train_clips_per_class} training clips "
              f"per class, {args.epochs} epochs, batch {args.batch_size}, memory {args.mem_size}")
    result = {"command": command, "machine": machine, "date": date, "settings": vars(args), "runs": records}
    (out / "localization.json").write_text(json.dumps(result, indent=1, default=float))
    _write_outputs(records, methods, out, header)
    return result


if __name__ == "__main__":
    main()
