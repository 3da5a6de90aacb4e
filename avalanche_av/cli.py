"""``avalanche-av`` command line.

``avalanche-av run`` is the main job: continual pre-training on a stream (the built-in
synthetic one by default), evaluated by zero-shot retrieval after each experience, ending with
a results table. See ``avalanche-av run --help``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def _silence_third_party() -> None:
    # Avalanche imports qpsolvers, which warns when no QP solver is installed; only GEM-style
    # strategies need one, and none of ours do.
    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)


def build_parser() -> argparse.ArgumentParser:
    from .experiment import RunConfig

    d = RunConfig()
    p = argparse.ArgumentParser(prog="avalanche-av", description="Continual audio-video pre-training for Avalanche.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="continual pre-training + retrieval evaluation (the main job)")
    c = sub.add_parser("compare", help="run several strategies over several seeds; table of A/F mean ± std")
    r.add_argument("--strategy", default=d.strategy, help="method: %(default)s by default; see --list-strategies")
    r.add_argument("--list-strategies", action="store_true", help="print the available strategies and exit")
    c.add_argument("--strategies", default="finetune,er,der++,stella,stella+", help="comma-separated (default %(default)s)")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default %(default)s)")
    _add_common(r, d)
    _add_common(c, d, out_default="av_runs/compare")
    from .benchmarks.real.cli import add_prepare_parser, add_stats_parser

    add_prepare_parser(sub)
    add_stats_parser(sub)
    return p


def _add_common(r: argparse.ArgumentParser, d, out_default: Optional[str] = None) -> None:
    r.add_argument("--model", default=d.model, help="model preset (tiny, base, cav_mae_base); default %(default)s")
    r.add_argument("--benchmark", default=d.benchmark, help="stream; default %(default)s")
    r.add_argument("--data-root", default=None, help="dataset root for real benchmarks")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--epochs", type=int, default=d.epochs, help="epochs per experience (default %(default)s)")
    r.add_argument("--batch-size", type=int, default=d.batch_size)
    r.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    r.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default %(default)s for tiny)")
    r.add_argument("--mem-size", type=int, default=d.mem_size, help="replay memory size in clips")
    r.add_argument("--n-tasks", type=int, default=d.n_tasks)
    r.add_argument("--classes-per-task", type=int, default=d.classes_per_task)
    r.add_argument("--train-clips-per-class", type=int, default=d.train_clips_per_class)
    r.add_argument("--eval-clips-per-class", type=int, default=d.eval_clips_per_class)
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: cuda if available")
    r.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "fp16", "off"])
    r.add_argument("--num-workers", type=int, default=d.num_workers)
    r.add_argument("--out", dest="out_dir", default=out_default or d.out_dir, help="output folder (default %(default)s)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    r.add_argument("--tensorboard", action="store_true", help="also log to OUT/tb")
    r.add_argument("--no-csv", dest="csv_log", action="store_false", help="no CSV logs")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    r.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="strategy option, e.g. --option alpha=0.5 (repeatable; values parsed as Python literals)",
    )


def _parse_options(items: Sequence[str]) -> dict:
    import ast

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _config_from_args(args: argparse.Namespace, strategies: Sequence[str]):
    from .experiment import RunConfig
    from .training import list_strategies

    for s in strategies:
        if s not in list_strategies():
            raise ValueError(f"unknown strategy {s!r}; allowed: {list_strategies()}")
    for name in ("epochs", "batch_size", "eval_batch_size", "n_tasks", "classes_per_task", "train_clips_per_class"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    skip = ("command", "list_strategies", "option", "strategies", "seeds")
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    fields.setdefault("strategy", strategies[0])
    return RunConfig(**fields, strategy_options=_parse_options(args.option))


def _cmd_compare(args: argparse.Namespace) -> int:
    from .experiment import compare_strategies

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not strategies or not seeds:
        raise ValueError("need at least one strategy and one seed")
    cfg = _config_from_args(args, strategies)
    table = compare_strategies(cfg, strategies, seeds, ks=cfg.ks)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(f"\n== Comparison over seeds {seeds} (mean ± std), {cfg.benchmark}, {cfg.model} ==")
        print(table.to_string())
    print(f"\nWrote {cfg.out_dir}/compare.csv and one folder per strategy and seed")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiment import run_experiment
    from .training import list_strategies

    if args.list_strategies:
        print("\n".join(list_strategies()))
        return 0
    cfg = _config_from_args(args, [args.strategy])
    summary = run_experiment(cfg)
    import pandas as pd

    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print()
        print(f"== Results: {cfg.strategy} on {cfg.benchmark} ({cfg.model}), final model ==")
        print(summary["table"].to_string(index=False, na_rep="-"))
    print(f"\nWrote {cfg.out_dir}/results.json, results.csv, accuracy_matrix_a2v.png, accuracy_matrix_v2a.png")
    print(f"Total time {summary['wall_seconds']:.0f} s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    _silence_third_party()
    # Progress and metric lines should reach a log file as they happen, not in 8 KB blocks.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(line_buffering=True)
            except (ValueError, OSError):  # pragma: no cover - e.g. a detached stream
                pass
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "prepare":
            from .benchmarks.real.cli import run_prepare

            return run_prepare(args)
        if args.command == "stats":
            from .benchmarks.real.cli import run_stats

            return run_stats(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"avalanche-av: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
