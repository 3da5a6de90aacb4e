"""Host syncs per training step of Finetune, ER, DER++, STELLA and STELLA+, counted on CPU.

A thin script over :class:`avalanche_av.evaluation.host_sync.HostSyncCounter`: each strategy
runs on the emulated accelerator (``torch.device('cpu', 0)``), fills its memory in a warm-up
experience, then trains ``--steps`` counted iterations. Each iteration's window runs from one
``before_training_iteration`` to the next, so the evaluator's per-iteration metrics and the
loading of the next minibatch are inside it. A *sync* is a host read of a device tensor, a
blocking device-to-host copy, or an op with a data-dependent output shape (the module docstring
of ``host_sync`` lists them); reads of host tensors (the reservoir's CPU draws, Adam's step
counters) are reported apart, since they cost nothing on a GPU.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks_av/bench_host_syncs.py --steps 4 \\
        --out benchmarks_av/results/host_syncs_after.json

``--debug-checks`` turns the model's index-range validation on (the test-suite setting);
``--nan-check-every K`` sets the template's loss check interval.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from avalanche_av.evaluation import av_evaluator
from avalanche_av.evaluation.host_sync import EMULATED_DEVICE, HostSyncCounter, HostSyncPlugin, strategy_tensors
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

STRATEGIES = ("finetune", "er", "der++", "stella", "stella+")


def _stream(model_name: str, batch_size: int, steps: int, seed: int):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    from avalanche_av.benchmarks import sounding_objects

    c = create_model(model_name).config
    per_class = -(-batch_size * (steps + 2) // 4)
    bm = sounding_objects(
        seed=seed, n_tasks=1, classes_per_task=4, train_clips_per_class=per_class, eval_clips_per_class=1,
        n_frames=c.n_frames, image_size=c.image_size, patch_size=c.patch_size,
        target_length=c.audio_length, num_mel_bins=c.num_mel_bins,
    )
    ds = bm.train_stream[0].dataset
    warm = ds.subset(list(range(2 * batch_size)))
    counted = ds.subset(list(range(2 * batch_size, (2 + steps) * batch_size)))
    return list(with_task_labels(benchmark_from_datasets(train=[warm, counted])).train_stream)


def count_strategy(name: str, *, model_name: str = "tiny", batch_size: int = 4, steps: int = 4, seed: int = 0,
                   nan_check_every: Optional[int] = None, experiences=None) -> dict:
    """Train ``name`` on a warm-up experience (fills the memory), then count ``steps`` iterations."""
    exps = experiences or _stream(model_name, batch_size, steps, seed)
    torch.manual_seed(seed)
    model = create_model(model_name)
    counter = HostSyncCounter()
    plugins = [] if name == "finetune" else make_plugins(name, mem_size=2 * batch_size, batch_size=batch_size)
    kw = {} if nan_check_every is None else {"nan_check_every": nan_check_every}
    strategy = AVPretraining(
        model=model, optimizer=default_optimizer(model), train_mb_size=batch_size, train_epochs=1,
        device=EMULATED_DEVICE, plugins=[*plugins, HostSyncPlugin(counter)], evaluator=av_evaluator(loggers=[]),
        **kw,
    )
    strategy.train(exps[0])
    counter.events.clear()
    counter.iterations = 0
    counter.mark_resident(strategy_tensors(strategy))
    with counter:
        strategy.train(exps[1])
    return counter.per_iteration()


def to_markdown(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    lines = ["# Host syncs per training step (CPU, emulated accelerator)", "",
             "Command:", "", "```", report.get("command", ""), "```", "",
             f"Date {env['date']}, host `{env['host']}`, torch {env['torch']}, model `{s['model']}`, batch "
             f"{s['batch_size']} (+ a memory batch of the same size), {s['steps']} counted steps per strategy, "
             f"debug checks {'on' if s['debug_checks'] else 'off'}, nan_check_every "
             f"{s['nan_check_every'] if s['nan_check_every'] is not None else 'default'}.", "",
             "| strategy | syncs / step (mean) | min-max | reads | blocking D2H | data-dependent shapes "
             "| async D2H / step | H2D / step | host-tensor reads / step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["strategies"].items():
        k = r["by_kind"]
        lines.append(f"| {name} | {r['syncs_per_iteration']:.2f} | {r['min']}-{r['max']} | {k.get('read', 0):.2f} "
                     f"| {k.get('d2h', 0):.2f} | {k.get('shape', 0):.2f} | {r['async_d2h_per_iteration']:.2f} "
                     f"| {r['h2d_per_iteration']:.2f} | {r['host_reads_per_iteration']:.2f} |")
    lines += ["", "Sync sites (mean per step):", ""]
    for name, r in report["strategies"].items():
        lines.append(f"- **{name}**: " + ("; ".join(f"`{site}` {n:.2f}" for site, n in r["by_site"].items())
                                           or "none"))
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--debug-checks", action="store_true", help="turn the model's index-range validation on")
    ap.add_argument("--nan-check-every", type=int, default=None, help="AVPretraining(nan_check_every=K)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path; the markdown goes next to it")
    args = ap.parse_args(argv)
    if args.batch_size < 2 or args.steps < 1:
        ap.error("--batch-size must be >= 2 and --steps >= 1")
    torch.set_num_threads(1)
    try:
        from avalanche_av.models import set_debug_checks
    except ImportError:  # before the debug switch existed: validation always on
        set_debug_checks = None
        if not args.debug_checks:
            print("bench_host_syncs: this version validates indices unconditionally", file=sys.stderr)
    if set_debug_checks is not None:
        set_debug_checks(args.debug_checks)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    exps = _stream(args.model, args.batch_size, args.steps, args.seed)
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        ["benchmarks_av/bench_host_syncs.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                     "debug_checks": args.debug_checks, "nan_check_every": args.nan_check_every, "seed": args.seed},
        "environment": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
                        "machine": platform.machine()},
        "strategies": {},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            report["strategies"][name] = count_strategy(
                name, model_name=args.model, batch_size=args.batch_size, steps=args.steps, seed=args.seed,
                nan_check_every=args.nan_check_every, experiences=exps,
            )
            print(f"{name}: {report['strategies'][name]['syncs_per_iteration']:.2f} syncs/step", file=sys.stderr)
    md = to_markdown(report)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(md, encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
