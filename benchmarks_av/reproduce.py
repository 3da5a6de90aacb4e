"""Reproduce the evidence of RESULTS.md (issue "Evidence") with one command.

Every step is a command line of the package's own CLI (``avalanche-av run`` / ``compare``) or a
script of ``benchmarks_av/``; this file only schedules them, collects their reports and draws the
memory-size figure. Steps (``--steps`` picks a subset):

* ``main``: the main job, ``avalanche-av run`` with its defaults, alone on the machine (its
  wall time is the figure RESULTS.md quotes);
* ``table1``: every method of the paper's Table 1 (and ``--avalanche``: Avalanche's label-free
  built-ins) over ``--seeds``, one ``compare`` per method so that ``--jobs`` workers share the
  cores, then one ``compare`` over all of them that only reads the runs back and writes the
  table, the localization / modality-gap table and the plots;
* ``table3``: the sampling and audio-selection ablations (paper Table 3, Fig. 9), the same way;
* ``memory``: ER, DER++ and STELLA at ``--mem-sizes`` (paper Fig. 5); the default size comes from
  ``table1``. Draws ``memory_size.png``;
* ``remedy``: STELLA with the AVM gate (``--option avm_gate=0.6``, an option beyond the paper):
  uniform importance at the start of each task until the AVM matches again;
* ``stella_pp``: STELLA++ (paper Table 2): the largest STELLA+ batch whose saved activations
  fit DER++'s at the default batch (``gpu_check.stella_pp`` on the CPU, tiny model, explicit
  attention), then STELLA+ trained at that batch over ``--seeds``;
* ``avalanche``: Avalanche's label-free built-ins and the joint references (:data:`AVALANCHE`)
  at the same budget, in their own folder, so that Table 1's runs are not needed again;
* ``chunks``: paper Fig. 9, STELLA's audio chunk size ``L_c`` at ``--chunk-sizes`` (the default
  4 is Table 1's STELLA). Draws ``chunk_size.png``;
* ``shapes``: DER++ and STELLA on the base-like synthetic stream (:data:`BASE_LIKE`: 128² frames,
  objects of 2 x 2 patch cells, 64 patches per frame as in the paper's 224² / 16² setting), to
  see whether the verdict holds where ``rho`` keeps as many patches as in the paper.

Outputs go to ``--out`` (one folder per step, each with its ``compare.md`` / ``compare.json`` /
PNGs) and ``--out/REPORT.md`` links them all. Every run is resumable: rerunning the command
reads finished runs back.

Budgets. The full variant uses the main job's settings (``avalanche-av run`` defaults: 4 tasks
x 4 classes x 128 clips, batch 16, warm-up + cosine, memory 64) with 10 epochs per task instead
of 12 (:data:`TABLE_BUDGET`), and 3 seeds: about 3 CPU-minutes per run with one thread. On
2 cores with ``--jobs 2``, ``table1,table3,stella_pp,memory`` (``--memory-seeds 0``) took
94.7 min and ``remedy`` 17 min more (2026-12-01, RESULTS.md section 10); ``shapes,avalanche,chunks``
took 141.8 min (2026-12-02, with the test suite sharing the cores for part of it). ``--quick`` is
a smoke-sized stream (2 tasks x 2 classes x 16 clips, 2 epochs, 1 seed) that checks the whole
pipeline, every step: 8 min 17 s on 2 idle cores (``time``, 2026-12-02). Its numbers are not
results.

    python benchmarks_av/reproduce.py --quick --out /tmp/reproduce_quick
    python benchmarks_av/reproduce.py --jobs 2 --out benchmarks_av/results/reproduce
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
#: The paper's Table 1 rows, in its order.
TABLE1 = ["finetune", "er", "der++", "mir", "gmed", "cls-er", "lump", "esmer", "stella", "stella+"]
#: Avalanche's label-free built-ins and the joint references (docs/baselines_avalanche.md).
AVALANCHE = ["er_exp", "agem", "ewc", "si", "mas", "rwalk", "lwf", "lfl", "feature-distillation",
             "cumulative", "multitask"]
#: Reference points that train on past data again (left out of the A-F figure).
REFERENCES = ("cumulative", "multitask")
#: Paper Table 3 / Fig. 9: sampling and audio-selection ablations (STELLA with one part changed).
TABLE3 = ["stella-random", "stella-mats", "stella-lpis", "stella-rca", "stella", "stella-audio-freq",
          "stella-audio-none"]
#: The remedy tried for STELLA's plasticity (docs/stella.md, "AVM gate"): chosen a priori, not tuned.
AVM_GATE = 0.6
#: Paper Fig. 5 methods.
MEMORY_METHODS = ["er", "der++", "stella"]
#: Paper Fig. 9: audio chunk sizes besides the default 4 (which Table 1 already ran).
CHUNK_SIZES = [1, 2, 8]
DEFAULT_CHUNK = 4
#: The base-like synthetic stream (docs/synthetic.md, ``--synthetic``) and the methods run on it.
BASE_LIKE = ["--synthetic", "image_size=128", "--synthetic", "object_cells=2"]
SHAPE_METHODS = ["der++", "stella"]
#: The tables' budget: the main job's settings with 10 epochs instead of 12 (CPU time; the
#: 10-epoch schedule reached 5.2x chance on the validation split, benchmarks_av/tune_main_job.py).
TABLE_BUDGET = ["--epochs", "10"]
QUICK = ["--n-tasks", "2", "--classes-per-task", "2", "--train-clips-per-class", "16", "--eval-clips-per-class",
         "4", "--epochs", "2", "--batch-size", "8", "--mem-size", "16"]
REPORT_FILES = ("compare.json", "compare.md", "compare.csv", "compare_bars.png", "modality_gap.png",
                "localization_over_tasks.png", "training_diagnostics.png")


def _cli() -> List[str]:
    return [sys.executable, "-m", "avalanche_av.cli"]


def _env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    return env


class Runner:
    """Runs command lines on ``jobs`` workers, logging each to ``log_dir``; remembers failures."""

    def __init__(self, jobs: int, log_dir: Path, threads: int) -> None:
        self.jobs, self.log_dir, self.threads = jobs, log_dir, threads
        self.failed: List[str] = []
        self.log: List[dict] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def run_all(self, commands: Sequence[tuple[str, List[str]]]) -> None:
        """Run ``(name, argv)`` pairs, ``jobs`` at a time, each with ``threads`` threads."""
        q: "queue.Queue[tuple[str, List[str]]]" = queue.Queue()
        for c in commands:
            q.put(c)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                try:
                    name, argv = q.get_nowait()
                except queue.Empty:
                    return
                t0 = time.time()
                with open(self.log_dir / f"{name}.log", "w") as fh:
                    rc = subprocess.call(argv, stdout=fh, stderr=subprocess.STDOUT, env=_env(self.threads))
                rec = {"name": name, "command": shlex.join(argv[2:] if argv[:3] == _cli() else argv),
                       "rc": rc, "seconds": round(time.time() - t0, 1)}
                with lock:
                    self.log.append(rec)
                    if rc != 0:
                        self.failed.append(name)
                print(f"[reproduce] {name}: {'ok' if rc == 0 else f'FAILED (rc {rc})'} in {rec['seconds']:.0f} s",
                      flush=True)

        threads = [threading.Thread(target=worker) for _ in range(max(1, self.jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _compare(strategies: Sequence[str], seeds: str, out: Path, extra: Sequence[str]) -> List[str]:
    return [*_cli(), "compare", "--strategies", ",".join(strategies), "--seeds", seeds, "--out", str(out),
            "--no-progress", *extra]


def _with(args: Sequence[str], flag: str, value: object) -> List[str]:
    """``args`` with ``flag`` set to ``value`` (replaced when present, appended otherwise)."""
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = str(value)
    else:
        out += [flag, str(value)]
    return out


def _collect(runs_dir: Path, dest: Path) -> None:
    """Copy the reports of the last ``compare`` in ``runs_dir`` to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (runs_dir / name).exists():
            shutil.copy2(runs_dir / name, dest / name)
    if (runs_dir / "heatmaps").is_dir():
        shutil.copytree(runs_dir / "heatmaps", dest / "heatmaps", dirs_exist_ok=True)


def collect_figures(runs_dir: Path, dest: Path, methods: Sequence[str], seed: int = 0) -> List[Path]:
    """Copy each method's attention maps and training diagnostics of one seed out of the (git
    ignored) run folders: ``dest/<method>_clip<id>.png`` and ``dest/<method>_diagnostics.png``."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for m in methods:
        folder = runs_dir / m.replace("+", "plus") / f"seed{seed}"
        for png in sorted((folder / "attention").glob("tracked_clip*.png")):
            target = dest / f"{m.replace('+', 'plus')}_{png.stem.replace('tracked_', '')}.png"
            shutil.copy2(png, target)
            copied.append(target)
        if (folder / "training_diagnostics.png").exists():
            target = dest / f"{m.replace('+', 'plus')}_diagnostics.png"
            shutil.copy2(folder / "training_diagnostics.png", target)
            copied.append(target)
    return copied


def _table_step(runner: Runner, name: str, methods: Sequence[str], seeds: str, runs: Path, out: Path,
                extra: Sequence[str]) -> None:
    """One ``compare`` per method on the workers, then one that reads them all back."""
    runner.run_all([(f"{name}-{m.replace('+', 'plus')}", _compare([m], seeds, runs, extra)) for m in methods])
    runner.jobs, jobs = 1, runner.jobs
    runner.run_all([(f"{name}-merge", _compare(methods, seeds, runs, extra))])
    runner.jobs = jobs
    _collect(runs, out / name)


def memory_figure(points: Dict[int, Path], methods: Sequence[str], path: Path) -> Optional[Path]:
    """A and F (mean over R@K and both directions, mean ± std over seeds) against memory size."""
    return sweep_figure(points, methods, path, xlabel="memory size (clips)", what="memory size",
                        suptitle="Paper Fig. 5 in miniature: mean over seeds; error bars = std where more "
                                 "than one seed ran")


def sweep_figure(points: Dict[int, Path], methods: Sequence[str], path: Path, *, xlabel: str, what: str,
                 suptitle: str) -> Optional[Path]:
    """A and F (mean over R@K and both directions, mean ± std over seeds) against one setting;
    ``points`` maps the setting's value to the ``compare.json`` of the runs made with it."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series: Dict[str, Dict[str, list]] = {}
    sizes = sorted(points)
    for size in sizes:
        data = json.loads(points[size].read_text())
        for m in methods:
            runs = data["runs"].get(m, {})
            for which in ("A", "F"):
                per_seed = []
                for rec in runs.values():
                    vals = [rec["metrics"][d][c][which] for d in ("a2v", "v2a") for c in rec["metrics"][d]]
                    if all(v is not None for v in vals):
                        per_seed.append(float(np.mean(vals)))
                series.setdefault(f"{m}|{which}", {}).setdefault("x", []).append(size)
                series[f"{m}|{which}"].setdefault("y", []).append(per_seed)
    if not series:
        return None
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    for i, which in enumerate(("A", "F")):
        ax = fig.add_subplot(1, 2, i + 1)
        for m in methods:
            s = series.get(f"{m}|{which}")
            if not s:
                continue
            mean = [np.mean(v) if v else np.nan for v in s["y"]]
            std = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in s["y"]]
            ax.errorbar(s["x"], mean, yerr=std, marker="o", capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(x) for x in sizes])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{which}{'↑' if which == 'A' else '↓'} (%), mean of R@1/5/10, a2v and v2a")
        ax.set_title(f"{'Average retrieval' if which == 'A' else 'Forgetting'} vs {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def tradeoff_figure(sources: Dict[str, Path], path: Path) -> Optional[Path]:
    """A against F for every method of every step, one point each (mean over R@K and both
    directions; error bars = std over seeds), with the least-squares line and Pearson's r.
    The :data:`REFERENCES` are left out.

    ``sources`` maps a step name (added to the label for all but ``table1``) to its
    ``compare.json``; runs already drawn from an earlier step (equal per-seed A and F, as when a
    step reads Table 1's runs back) are drawn once.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = []
    for step, src in sources.items():
        if not src.exists():
            continue
        data = json.loads(src.read_text())
        for m in data["strategies"]:
            if m in REFERENCES:  # they see past data: not on a continual method's trade-off
                continue
            per_seed = {"A": [], "F": []}
            for rec in data["runs"].get(m, {}).values():
                for which in per_seed:
                    vals = [rec["metrics"][d][c][which] for d in ("a2v", "v2a") for c in rec["metrics"][d]]
                    if all(v is not None for v in vals):
                        per_seed[which].append(float(np.mean(vals)))
            label = m if step == "table1" else f"{m} ({step})"
            same_runs = any(np.array_equal(per_seed["A"], q[1]) and np.array_equal(per_seed["F"], q[2]) for q in points)
            if per_seed["A"] and per_seed["F"] and not same_runs:
                points.append((label, np.array(per_seed["A"]), np.array(per_seed["F"])))
    if len(points) < 2:
        return None
    fig = Figure(figsize=(8.5, 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]
    for i, (label, a, f) in enumerate(points):
        ax.errorbar(a.mean(), f.mean(), xerr=a.std(ddof=1) if a.size > 1 else 0,
                    yerr=f.std(ddof=1) if f.size > 1 else 0, marker="o" if "stella" not in label else "s",
                    color=palette[i % len(palette)], capsize=2, linestyle="none", label=label)
    xs = np.array([p[1].mean() for p in points])
    ys = np.array([p[2].mean() for p in points])
    slope, icept = np.polyfit(xs, ys, 1)
    r = float(np.corrcoef(xs, ys)[0, 1])
    grid = np.linspace(xs.min(), xs.max(), 2)
    ax.plot(grid, slope * grid + icept, color="grey", linestyle="--", linewidth=1,
            label=f"least squares, Pearson r = {r:.2f} (n = {len(points)})")
    ax.set_xlabel("A↑ (%), mean of R@1/5/10, a2v and v2a")
    ax.set_ylabel("F↓ (%), mean of R@1/5/10, a2v and v2a")
    ax.set_title("Plasticity against forgetting: every method and variant (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def stella_pp_batch(batch: int, log_path: Path) -> int:
    """The largest STELLA+ batch whose saved activations fit DER++'s at ``batch`` (tiny model);
    read back from ``log_path`` when an earlier call wrote it for the same ``batch``."""
    if log_path.exists():
        res = json.loads(log_path.read_text())
        if res.get("batch") == batch and res.get("stella_pp_batch"):
            return int(res["stella_pp_batch"])
    sys.path.insert(0, str(HERE))
    from gpu_check import stella_pp  # noqa: PLC0415

    res = stella_pp("cpu", "tiny", batch, None, False, lambda *a, **k: None)
    log_path.write_text(json.dumps(res, indent=2, default=str))
    return int(res["stella_pp_batch"] or batch)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-sized stream, 1 seed (about 3 min on 2 cores)")
    ap.add_argument("--seeds", default=None, help="default 0,1,2 (quick: 0)")
    ap.add_argument("--jobs", type=int, default=2, help="concurrent runs, each with --threads threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", default="main,table1,table3,memory,remedy,stella_pp,avalanche,chunks,shapes",
                    help="comma-separated subset of main,table1,table3,memory,remedy,stella_pp,avalanche,"
                         "chunks,shapes")
    ap.add_argument("--chunk-sizes", default=",".join(map(str, CHUNK_SIZES)),
                    help=f"audio chunk sizes besides the default {DEFAULT_CHUNK} (Fig. 9)")
    ap.add_argument("--avalanche", action="store_true", help="add Avalanche's built-ins to Table 1")
    ap.add_argument("--mem-sizes", default="32,128", help="memory sizes besides the default (Fig. 5)")
    ap.add_argument("--memory-seeds", default=None, help="seeds of the extra memory sizes (default: --seeds)")
    ap.add_argument("--out", default="benchmarks_av/results/reproduce")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = a.seeds or ("0" if a.quick else "0,1,2")
    extra = QUICK if a.quick else []
    steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    runner = Runner(a.jobs, out / "logs", a.threads)
    runs = out / "runs"
    t0 = time.time()
    report = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv,
              "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "steps": steps, "seeds": seeds}
    # A later invocation with other --steps must not erase what an earlier one recorded.
    previous = json.loads((out / "reproduce.json").read_text()) if (out / "reproduce.json").exists() else {}
    report["earlier"] = previous.pop("earlier", []) + ([previous] if previous else [])

    if "main" in steps:  # alone and with every core: its wall time is a recorded figure
        main_out = out / "main_job"
        jobs, runner.jobs, runner.threads = runner.jobs, 1, os.cpu_count() or 1
        argv_main = [*_cli(), "run", "--out", str(main_out), *extra]
        if main_out.exists():
            shutil.rmtree(main_out)
        runner.run_all([("main", argv_main)])
        runner.jobs, runner.threads = jobs, a.threads
    methods = TABLE1 + (AVALANCHE if a.avalanche else [])
    budget = extra if a.quick else TABLE_BUDGET
    default_mem = 16 if a.quick else 64
    sizes = [8, 32] if a.quick else [int(x) for x in a.mem_sizes.split(",") if x.strip()]
    chunks = [int(x) for x in a.chunk_sizes.split(",") if x.strip()]
    mem_seeds = a.memory_seeds or seeds
    # One queue for every training job, so that no worker idles at a step boundary; the merges
    # (read-back only) come after.
    jobs: List[tuple[str, List[str]]] = []
    queued: set = set()

    def add(name: str, method: str, folder: Path, args: Sequence[str], run_seeds: Optional[str] = None) -> None:
        key = (method, str(folder))
        if key not in queued:
            queued.add(key)
            jobs.append((f"{name}-{method.replace('+', 'plus')}", _compare([method], run_seeds or seeds, folder, args)))

    if "stella_pp" in steps:  # a deterministic search (seconds): first, so its runs can be queued
        pp_batch = stella_pp_batch(8 if a.quick else 16, out / "stella_pp_batch.json")
        report["stella_pp_batch"] = pp_batch
    for m in (methods if "table1" in steps else []):
        add("table1", m, runs, budget)
    for m in (TABLE3 if "table3" in steps else []):
        add("table3", m, runs, budget)
    if "remedy" in steps:
        add("remedy", "stella", out / "runs_avm_gate", [*budget, "--option", f"avm_gate={AVM_GATE}"])
    if "stella_pp" in steps:
        add("stella_pp", "stella+", out / "runs_stella_pp", _with(budget, "--batch-size", report["stella_pp_batch"]))
    if "memory" in steps:
        for m in MEMORY_METHODS:
            add("memory", m, runs, budget)  # the default size: shared with Table 1
        for size in sizes:
            for m in MEMORY_METHODS:
                add(f"memory{size}", m, out / f"runs_mem{size}", _with(budget, "--mem-size", size), mem_seeds)
    for m in (SHAPE_METHODS if "shapes" in steps else []):  # the longest runs first
        add("shapes", m, out / "runs_shape128", [*budget, *BASE_LIKE])
    for m in (AVALANCHE if "avalanche" in steps else []):
        add("avalanche", m, out / "runs_avalanche", budget)
    for c in (chunks if "chunks" in steps else []):
        add(f"chunk{c}", "stella", out / f"runs_chunk{c}", [*budget, "--option", f"chunk_size={c}"])
    runner.run_all(jobs)

    runner.jobs, n_jobs = 1, runner.jobs
    if "table1" in steps:
        runner.run_all([("table1-merge", _compare(methods, seeds, runs, budget))])
        _collect(runs, out / "table1")
        collect_figures(runs, out / "figures", methods, seed=int(seeds.split(",")[0]))
    if "table3" in steps:
        runner.run_all([("table3-merge", _compare(TABLE3, seeds, runs, budget))])
        _collect(runs, out / "table3")
    if "memory" in steps:
        points = {}
        for size in sizes:
            runner.run_all([(f"memory{size}-merge", _compare(MEMORY_METHODS, mem_seeds, out / f"runs_mem{size}",
                                                             _with(budget, "--mem-size", size)))])
            _collect(out / f"runs_mem{size}", out / f"memory{size}")
            points[size] = out / f"memory{size}" / "compare.json"
        runner.run_all([("memory-default-merge", _compare(MEMORY_METHODS, seeds, runs, budget))])
        _collect(runs, out / "memory_default")
        points[default_mem] = out / "memory_default" / "compare.json"
        fig = memory_figure({k: v for k, v in points.items() if v.exists()}, MEMORY_METHODS, out / "memory_size.png")
        report["memory_figure"] = str(fig) if fig else None
    if "remedy" in steps:
        runner.run_all([("remedy-merge", _compare(["stella"], seeds, out / "runs_avm_gate",
                                                  [*budget, "--option", f"avm_gate={AVM_GATE}"]))])
        _collect(out / "runs_avm_gate", out / "remedy")
    if "stella_pp" in steps:
        _collect(out / "runs_stella_pp", out / "stella_pp")
    if "avalanche" in steps:
        runner.run_all([("avalanche-merge", _compare(AVALANCHE, seeds, out / "runs_avalanche", budget))])
        _collect(out / "runs_avalanche", out / "avalanche")
    if "chunks" in steps:
        points = {DEFAULT_CHUNK: out / "table1" / "compare.json"}
        for c in chunks:
            runner.run_all([(f"chunk{c}-merge", _compare(["stella"], seeds, out / f"runs_chunk{c}",
                                                         [*budget, "--option", f"chunk_size={c}"]))])
            _collect(out / f"runs_chunk{c}", out / f"chunk{c}")
            points[c] = out / f"chunk{c}" / "compare.json"
        fig = sweep_figure({k: v for k, v in points.items() if v.exists()}, ["stella"], out / "chunk_size.png",
                           xlabel="audio chunk size L_c (time patches per chunk)", what="audio chunk size",
                           suptitle="Paper Fig. 9 in miniature: STELLA, mean ± std over seeds")
        report["chunk_figure"] = str(fig) if fig else None
    if "shapes" in steps:
        runner.run_all([("shapes-merge", _compare(SHAPE_METHODS, seeds, out / "runs_shape128",
                                                  [*budget, *BASE_LIKE]))])
        _collect(out / "runs_shape128", out / "shape128")
    runner.jobs = n_jobs
    pp_file = out / "stella_pp_batch.json"
    pp_batch = report.get("stella_pp_batch") or (json.loads(pp_file.read_text()).get("stella_pp_batch")
                                                 if pp_file.exists() else None)
    fig = tradeoff_figure({"table1": out / "table1" / "compare.json", "table3": out / "table3" / "compare.json",
                           f"AVM gate {AVM_GATE}": out / "remedy" / "compare.json",
                           f"STELLA++, batch {pp_batch}": out / "stella_pp" / "compare.json",
                           "avalanche": out / "avalanche" / "compare.json",
                           **{f"chunk {c}": out / f"chunk{c}" / "compare.json" for c in CHUNK_SIZES}},
                          out / "tradeoff.png")
    report["tradeoff_figure"] = str(fig) if fig else None

    report["seconds"] = round(time.time() - t0, 1)
    report["commands"] = runner.log
    report["failed"] = runner.failed
    (out / "reproduce.json").write_text(json.dumps(report, indent=2))
    _write_report(out, report)
    print(f"[reproduce] done in {report['seconds'] / 60:.1f} min; {len(runner.failed)} failed step(s); "
          f"see {out / 'REPORT.md'}")
    return 1 if runner.failed else 0


def _write_report(out: Path, report: dict) -> None:
    lines = [f"# Reproduction report ({report['started']})", "",
             f"Machine: {report['machine']}. Seeds: {report['seeds']}. Total {report['seconds'] / 60:.1f} min.", ""]
    main_res = out / "main_job" / "results.json"
    if main_res.exists():
        res = json.loads(main_res.read_text())
        lines += ["## Main job", "", f"`avalanche-av run` in {res['wall_seconds']:.0f} s "
                  f"(gallery {res.get('gallery_size')} clips).", ""]
        csv = out / "main_job" / "results.csv"
        if csv.exists():
            import pandas as pd

            lines += ["```", pd.read_csv(csv).to_string(index=False, float_format=lambda x: f"{x:.3f}"), "```", ""]
    for name, title in (("table1", "Table 1"), ("table3", "Table 3 / Fig. 9 (ablations)"),
                        ("remedy", "STELLA with the AVM gate"),
                        ("memory_default", "Fig. 5 (default memory)"), ("stella_pp", "Table 2: STELLA++"),
                        ("avalanche", "Avalanche's built-ins and joint references"),
                        *[(f"chunk{c}", f"Fig. 9: audio chunk size {c}") for c in CHUNK_SIZES],
                        ("shape128", "Base-like shapes: 128² frames, 64 patches per frame")):
        md = out / name / "compare.md"
        if md.exists():
            lines += [f"## {title}", "", md.read_text().replace("# Comparison", "### Comparison"), ""]
    if report.get("tradeoff_figure"):
        lines += ["## A against F", "", "![A against F](tradeoff.png)", ""]
    if report.get("memory_figure") or (out / "memory_size.png").exists():
        lines += ["## Fig. 5", "", "![memory size](memory_size.png)", ""]
    if report.get("chunk_figure") or (out / "chunk_size.png").exists():
        lines += ["## Fig. 9", "", "![chunk size](chunk_size.png)", ""]
    for inv in [*report.get("earlier", []), report]:
        lines += [f"## Commands of the invocation started {inv.get('started')} "
                  f"({inv.get('seconds', 0) / 60:.1f} min, steps {','.join(inv.get('steps', []))})", ""]
        lines += [f"- `{c['command']}` ({c['seconds']:.0f} s, rc {c['rc']})" for c in inv.get("commands", [])]
        lines += [""]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
