"""STELLA's opt-in score cache: throughput against DER++ and STELLA, and A/F on the synthetic stream.

Two measurements, each optional:

* ``--throughput MODELS``: per-step process CPU time (one thread; the package's
  :class:`~avalanche_av.evaluation.efficiency.EfficiencyPlugin`, as ``bench_efficiency.py``) of
  DER++, STELLA (every row scored: the paper) and STELLA with the cache on a step whose every
  row is cached, all on the same synthetic batch, with a full memory replaying a batch as large
  as the current one. From ``t_scored`` and ``t_cached`` the *amortised* step time with the
  cache valid for ``k`` epochs is ``(t_scored + k·t_cached) / (k + 1)``: a clip is scored once
  every ``k + 1`` epochs. Samples/s = current clips / step time; ratios are to DER++.
* ``--af SEEDS``: the default synthetic run (``avalanche-av run``: tiny model, 4 tasks, 10
  epochs per task, batch 32, memory 64) with the cache off and with ``score_cache_epochs`` in
  ``--ks``, for every seed; A and F of R@5 / R@10 in both directions, and the training wall time.

Run from the repository root, e.g.::

    OMP_NUM_THREADS=1 python benchmarks_av/bench_score_cache.py --throughput tiny,base \\
        --batch-size 9 --af 0,1,2 --ks 1,3 --out benchmarks_av/results/score_cache.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from avalanche_av.evaluation import av_evaluator
from avalanche_av.evaluation.efficiency import EfficiencyPlugin
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_efficiency import build_experiences, release_host_memory  # noqa: E402


# ----------------------------------------------------------------------------- throughput
def _strategy(model, name: str, batch_size: int, cache: int, meter: EfficiencyPlugin, device: str) -> AVPretraining:
    opts = {"score_cache_epochs": cache} if cache else {}
    plugins = make_plugins(name, mem_size=batch_size, batch_size=batch_size, **opts)
    return AVPretraining(model=model, optimizer=default_optimizer(model), train_mb_size=batch_size, train_epochs=1,
                         device=device, plugins=[*plugins, meter], evaluator=av_evaluator(loggers=[]))


def measure_throughput(model_name: str, batch_size: int, steps: int, seed: int = 0, device: str = "cpu",
                       log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Step times of DER++, STELLA scored, STELLA cached (and STELLA+ both ways) on one model.

    On CPU the step time is the process CPU time (``step_s`` with ``clock: 'cpu'``); on CUDA the
    CUDA-event time of the step (``clock: 'cuda'``)."""
    torch.manual_seed(seed)
    model = create_model(model_name).to(device)
    exps = build_experiences(model.config, batch_size, n_pool=2, seed=seed)
    out = {}
    for label, name, cache in (("der++", "der++", 0), ("stella", "stella", 0), ("stella cached", "stella", 10**6),
                               ("stella+", "stella+", 0), ("stella+ cached", "stella+", 10**6)):
        meter = EfficiencyPlugin(enabled=False, flops=False, activations=False, phases=())
        s = _strategy(model, name, batch_size, cache, meter, device)
        t0 = time.perf_counter()
        s.train(exps[0])  # fills the memory (and, cached, scores and caches exps[0])
        s.train(exps[1])  # a second step with memory; the cache now holds both batches
        meter.configure(enabled=True, timing=True)
        for i in range(steps):  # cached: exps[0] again, every row cached
            s.train(exps[i % 2])
            release_host_memory()
        recs = meter.records
        clock = "cuda" if recs and recs[0].cuda_s is not None else "cpu"
        cpu = [r.cuda_s if clock == "cuda" else r.cpu_s for r in recs]
        plugin = s.plugins[0]
        out[label] = {"step_s": statistics.median(cpu), "step_s_all": cpu, "clock": clock,
                      "samples_per_s": batch_size / statistics.median(cpu)}
        if cache:
            sc = plugin.score_cache
            out[label]["cache"] = {"hits": sc.hits, "misses": sc.misses, "bytes_per_clip": sc.bytes_per_clip()}
        log(f"[{model_name}] {label}: {statistics.median(cpu):.3f} s ({clock}) / step ({time.perf_counter() - t0:.0f} s)")
        release_host_memory()
    ref = out["der++"]["step_s"]
    for plain in ("stella", "stella+"):
        t_s, t_c = out[plain]["step_s"], out[f"{plain} cached"]["step_s"]
        out[f"{plain} amortised"] = {
            str(k): {"step_s": (t_s + k * t_c) / (k + 1), "x_derpp": ref / ((t_s + k * t_c) / (k + 1)),
                     "scored_share": 1 / (k + 1)}
            for k in (1, 2, 3, 4, 9)
        }
    for label, r in out.items():
        if "step_s" in r:
            r["x_derpp"] = ref / r["step_s"]
    return out


# ----------------------------------------------------------------------------- A / F
def measure_af(seeds: Sequence[int], ks: Sequence[int], strategy: str = "stella",
               log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    from avalanche_av.experiment import RunConfig, run_experiment

    out: dict = {}
    for k in [0, *ks]:
        runs = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = RunConfig(strategy=strategy, seed=seed, out_dir=tmp, progress=False, csv_log=False, device="cpu",
                                strategy_options={"score_cache_epochs": k} if k else {})
                t0, c0 = time.perf_counter(), time.process_time()
                summary = run_experiment(cfg)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            table = summary["table"]
            row = {f"{m}": {"A": float(r["A"]), "F": float(r["F"])} for m, r in
                   ((r["metric"], r) for _, r in table.iterrows())}
            runs.append({"seed": seed, "metrics": row, "wall_s": wall, "cpu_s": cpu,
                         "train_s": float(sum(summary["train_seconds_per_experience"]))})
            log(f"cache k={k} seed={seed}: R@5 a2v A={row['R@5 a2v']['A']:.3f} F={row['R@5 a2v']['F']:.3f} "
                f"({wall:.0f} s wall, {cpu:.0f} s CPU)")
        out[str(k)] = runs
    return out


def _mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# STELLA score cache: throughput and A/F", "", "Command:", "", "```", report["command"], "```", "",
             f"Date {env['date']}, host `{env['host']}` ({env['machine']}), torch {env['torch']}, 1 thread, CPU.", ""]
    for model, r in report.get("throughput", {}).items():
        b = report["settings"]["batch_size"]
        clock = r["der++"].get("clock", "cpu")
        unit = "process CPU time" if clock == "cpu" else "CUDA-event time"
        lines += [f"## Throughput, `{model}`, batch {b} (+ memory batch {b}), {unit} per step", "",
                  "| strategy | s / step | samples / s | x DER++ |", "|---|---|---|---|"]
        for label in ("der++", "stella", "stella cached", "stella+", "stella+ cached"):
            x = r[label]
            t = x.get("step_s", x.get("step_cpu_s"))
            lines.append(f"| {label} | {t:.3f} | {b / t:.2f} | {x['x_derpp']:.2f} |")
        lines += ["", "Amortised over the cache period (a clip scored once every k + 1 epochs):", "",
                  "| k (score_cache_epochs) | scored share | STELLA x DER++ | STELLA+ x DER++ |", "|---|---|---|---|"]
        for k in r["stella amortised"]:
            a, p = r["stella amortised"][k], r["stella+ amortised"][k]
            lines.append(f"| {k} | {a['scored_share']:.2f} | {a['x_derpp']:.2f} | {p['x_derpp']:.2f} |")
        lines.append("")
    af = report.get("af")
    if af:
        metrics = list(af["0"][0]["metrics"])
        lines += ["## A / F on the synthetic stream (mean ± sd over seeds "
                  f"{', '.join(str(r['seed']) for r in af['0'])})", "",
                  "| score_cache_epochs | " + " | ".join(f"{m} A | {m} F" for m in metrics) + " | train s (wall) |",
                  "|---|" + "---|---|" * len(metrics) + "---|"]
        for k, runs in af.items():
            cells = []
            for m in metrics:
                for key in ("A", "F"):
                    mu, sd = _mean_sd([r["metrics"][m][key] for r in runs])
                    cells.append(f"{mu:.3f} ± {sd:.3f}")
            mu, sd = _mean_sd([r["train_s"] for r in runs])
            lines.append(f"| {k if k != '0' else 'off (paper)'} | " + " | ".join(cells) + f" | {mu:.0f} ± {sd:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", default="", help="comma-separated model presets to time (e.g. tiny,base)")
    ap.add_argument("--batch-size", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per strategy")
    ap.add_argument("--af", default="", help="comma-separated seeds of the synthetic A/F runs")
    ap.add_argument("--ks", default="1,3", help="score_cache_epochs values of the A/F runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        ["benchmarks_av/bench_score_cache.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"batch_size": args.batch_size, "steps": args.steps},
        "environment": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "torch": torch.__version__, "host": platform.node(), "machine": platform.machine()},
    }
    out = Path(args.out) if args.out else None

    def write() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
            out.with_suffix(".md").write_text(to_markdown(report), encoding="utf-8")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in [m.strip() for m in args.throughput.split(",") if m.strip()]:
            report.setdefault("throughput", {})[m] = measure_throughput(m, args.batch_size, args.steps,
                                                                        device=args.device)
            write()
        if args.af:
            report["af"] = measure_af([int(s) for s in args.af.split(",")], [int(k) for k in args.ks.split(",")])
            write()
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
