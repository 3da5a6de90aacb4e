"""``avalanche-av`` command line: argument parsing, printing and exit codes only.

``avalanche-av run`` is the main job: continual pre-training on a stream (the built-in
synthetic one by default), evaluated by zero-shot retrieval after each experience, ending with
a results table. ``compare`` runs several strategies over several seeds; ``prepare`` decodes a
folder of videos into a cache; ``stats`` prints the statistics of a real benchmark; ``attention``
draws the attention maps of chosen clips from a run checkpoint. The work itself lives in
:mod:`avalanche_av.experiment`, :mod:`avalanche_av.analysis` and the benchmark layer.

Exit codes: 0 success; 2 a user error (bad flag, bad input file, refused resume), printed as
one line ``avalanche-av: error: ...`` without a traceback; 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import ast
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .experiment import RunConfig

    d = RunConfig()
    p = argparse.ArgumentParser(prog="avalanche-av", description="Continual audio-video pre-training for Avalanche.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="continual pre-training + retrieval evaluation (the main job)")
    c = sub.add_parser("compare", help="run several strategies over several seeds; table of A/F mean ± std")
    r.add_argument("--strategy", default=d.strategy, help="method: %(default)s by default; see --list-strategies")
    r.add_argument("--list-strategies", action="store_true", help="print the available strategies and exit")
    c.add_argument("--strategies", default="finetune,er,der++,stella,stella+",
                   help="comma-separated methods (default %(default)s); `run --list-strategies` lists them all")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default %(default)s)")
    c.add_argument("--forgetting", choices=["textbook", "paper"], default="textbook",
                   help="which F the table shows (both are in compare.json/csv; default %(default)s)")
    c.add_argument("--run-progress", choices=["compact", "full"], default="compact",
                   help="inside each run: one bar over tasks x epochs (compact), or Avalanche's "
                        "InteractiveLogger (full); default %(default)s")
    c.add_argument("--isolate", action="store_true",
                   help="train each (method, seed) in its own Python process: exact per-run memory figures, "
                        "at the cost of one torch import per run")
    _add_common(r, d)
    _add_common(c, d, out_default="av_runs/compare")
    _add_prepare_parser(sub)
    _add_stats_parser(sub)
    _add_attention_parser(sub)
    _add_downstream_parser(sub)
    return p


def _add_common(r: argparse.ArgumentParser, d: Any, out_default: Optional[str] = None) -> None:
    from .experiment import BENCHMARKS, SAFE_TO_CHANGE_ON_RESUME

    r.add_argument("--model", default=d.model, help="model preset (tiny, base, cav_mae_base); default %(default)s")
    r.add_argument("--benchmark", default=d.benchmark, help=f"stream, one of {', '.join(BENCHMARKS)}; "
                                                            "default %(default)s")
    r.add_argument("--data-root", default=None, help="dataset root for real benchmarks")
    r.add_argument("--allow-outside-root", action="store_true",
                   help="read prepare-cache manifest entries whose paths resolve outside --data-root (refused by default)")
    r.add_argument("--seed", type=int, default=d.seed)
    # None = not given: the benchmark preset (continual-vs/as, see docs/compare.md) or the default applies.
    preset = "; continual-vs/as: the paper's value, see docs/compare.md"
    r.add_argument("--epochs", type=int, default=None, help=f"epochs per experience (default {d.epochs}{preset})")
    r.add_argument("--batch-size", type=int, default=None, help=f"current-batch size (default {d.batch_size}{preset})")
    r.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    r.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {d.lr} for tiny{preset})")
    r.add_argument("--lr-schedule", default=None, choices=["constant", "warmup-cosine"],
                   help=f"learning-rate schedule per experience (default {d.lr_schedule}{preset}; warmup-cosine is "
                        "an option beyond the paper, see docs/deviations.md)")
    r.add_argument("--mem-size", type=int, default=None,
                   help=f"replay memory size in clips (default {d.mem_size}{preset})")
    r.add_argument("--n-tasks", type=int, default=d.n_tasks)
    r.add_argument("--classes-per-task", type=int, default=d.classes_per_task)
    r.add_argument("--train-clips-per-class", type=int, default=d.train_clips_per_class)
    r.add_argument("--eval-clips-per-class", type=int, default=d.eval_clips_per_class)
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: cuda if available")
    r.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "fp16", "off"])
    r.add_argument("--num-workers", type=int, default=d.num_workers)
    r.add_argument("--out", dest="out_dir", default=out_default or d.out_dir, help="output folder (default %(default)s)")
    r.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt if present; refused when a setting that changes the "
                        f"experiment differs (only {', '.join(SAFE_TO_CHANGE_ON_RESUME)} may change)")
    r.add_argument("--tensorboard", action="store_true", help="also log to OUT/tb")
    r.add_argument("--no-csv", dest="csv_log", action="store_false", help="no CSV logs")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    r.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                   help="record only retrieval: no training diagnostics, localization or attention maps")
    r.add_argument("--track-clips", type=int, default=d.track_clips, metavar="N",
                   help="retrieval clips (first of each of the first N tasks) whose attention maps are drawn after "
                        "the first and the last task (default %(default)s; 0: none)")
    r.add_argument(
        "--synthetic", action="append", default=[], metavar="KEY=VALUE",
        help="synthetic stream setting (SoundingObjectsConfig field), e.g. --synthetic image_size=128 "
             "--synthetic object_cells=2 for base-like shapes; the model preset adapts (repeatable)",
    )
    r.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="strategy option, e.g. --option alpha=0.5, or for one method only --option stella:rho_v=0.6 "
             "(repeatable; values parsed as Python literals). Without a method prefix an option goes to every "
             "listed method that accepts it",
    )


def _parse_options(items: Sequence[str]) -> tuple[dict, dict]:
    """``--option`` items -> ``(shared, per_method)``: ``KEY=VALUE`` goes to ``shared``,
    ``METHOD:KEY=VALUE`` to ``per_method[METHOD]`` (method names never contain ``:``)."""
    shared: dict = {}
    per_method: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option expects KEY=VALUE or METHOD:KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        method, _, key = k.strip().rpartition(":")
        if not key.strip() or (":" in k and not method.strip()):
            raise ValueError(f"--option expects KEY=VALUE or METHOD:KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            value = v
        target = per_method.setdefault(method.strip(), {}) if method else shared
        target[key.strip()] = value
    return shared, per_method


def _parse_synthetic(items: Sequence[str]) -> dict:
    """``--synthetic KEY=VALUE`` items -> ``{key: value}``, values parsed as Python literals."""
    out: dict = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"--synthetic expects KEY=VALUE, got {item!r}")
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _config_from_args(args: argparse.Namespace, strategies: Sequence[str]):
    """The run config of ``run`` / ``compare`` and each strategy's options, fully validated:
    strategy names and options, sizes, model, device, output folder. The benchmark preset fills
    the settings and options the user did not give. Nothing has been built when this raises.

    Returns:
        ``(cfg, options)``: the config (of the first strategy) and strategy -> its options.
    """
    import dataclasses

    from .experiment import RunConfig
    from .presets import PRESET_SETTINGS, get_preset, resolve_settings, resolve_strategy_options
    from .training.distributed import is_main_process

    skip = ("command", "list_strategies", "option", "synthetic", "strategies", "seeds", "forgetting", "run_progress", "isolate",
            *PRESET_SETTINGS)
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    fields.setdefault("strategy", strategies[0])
    d = RunConfig()
    settings, applied = resolve_settings(args.benchmark, {n: getattr(args, n) for n in PRESET_SETTINGS},
                                         {n: getattr(d, n) for n in PRESET_SETTINGS})
    shared, per_method = _parse_options(args.option)
    options = resolve_strategy_options(list(strategies), shared, per_method, benchmark=args.benchmark)
    cfg = RunConfig(**fields, **settings, strategy_options=options[fields["strategy"]],
                    synthetic_options=_parse_synthetic(args.synthetic))
    for s in strategies:
        dataclasses.replace(cfg, strategy=s, strategy_options=options[s]).validate()
    preset = get_preset(args.benchmark)
    if preset is not None and is_main_process():
        print(f"[avalanche-av] {args.benchmark} preset ({preset.source}): "
              + (", ".join(f"{k}={v}" for k, v in applied.items()) or "no run setting (all given)")
              + "; method options from Table 5 unless given: "
              + (", ".join(s for s in strategies if s in preset.method_options) or "none of these methods"))
    return cfg, options


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_strategies, render_markdown
    from .training.distributed import is_main_process

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not strategies or not seeds:
        raise ValueError("--strategies and --seeds need at least one value each")
    cfg, options = _config_from_args(args, strategies)
    data = compare_strategies(
        cfg, strategies, seeds, method_options=options,
        progress=args.run_progress if cfg.progress else "none",
        forgetting="F_paper" if args.forgetting == "paper" else "F",
        isolate=args.isolate,
    )
    if not is_main_process():  # under torchrun rank 0 prints
        return 0
    print()
    print(render_markdown(data))
    paths = data["paths"]
    print(f"Trained {data['executed']} run(s), read back {len(strategies) * len(seeds) - data['executed']}. "
          f"Wrote {cfg.out_dir}/compare.json (the source), compare.md, compare.csv, compare_bars.png, "
          f"{len(paths['heatmaps'])} heatmap(s) in {cfg.out_dir}/heatmaps/, and one folder per method and seed")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiment import run_experiment
    from .training.distributed import is_main_process
    from .training import list_strategies

    if args.list_strategies:
        print("\n".join(list_strategies()))
        return 0
    cfg, _ = _config_from_args(args, [args.strategy])
    summary = run_experiment(cfg)
    if not is_main_process():  # under torchrun rank 0 prints (every rank has the same summary)
        return 0
    import pandas as pd

    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print()
        print(f"== Results: {cfg.strategy} on {cfg.benchmark} ({cfg.model}), final model ==")
        print(summary["table"].to_string(index=False, na_rep="-"))
    data = summary["data"]
    if data["missing"] or data["bad_total"] or data["duplicated"] or data["leaked_dropped"] or data["skipped_steps"]:
        print(f"\nData: missing {data['missing']}, bad {data['bad_total']} {data['bad'] or ''}, replaced "
              f"{data['replaced']}, duplicated {data['duplicated']}, leaked and dropped {data['leaked_dropped']}; "
              f"skipped steps {data['skipped_steps']} (results.json 'data')")
    print(f"\nWrote {cfg.out_dir}/results.json, results.csv, accuracy_matrix_a2v.png, accuracy_matrix_v2a.png")
    print(f"Total time {summary['wall_seconds']:.0f} s")
    return 0


# --------------------------------------------------------------------------- prepare
def _add_prepare_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    from .benchmarks.prepare import PrepareConfig

    d = PrepareConfig()
    p = sub.add_parser(
        "prepare", help="decode a folder of raw videos into a cache of frames + 16 kHz audio (resumable)",
        description="Decode every video under SRC into OUT: frames at a fixed fps (resized), 16 kHz mono audio "
                    "(wav/flac, or the raw fbank), a manifest.json and a bad-clip report (prepare_report.csv). "
                    "Clips finished by an earlier run are skipped.",
    )
    p.add_argument("src", help="folder of raw videos (searched recursively)")
    p.add_argument("out", help="cache folder, e.g. DATA_ROOT/prepared (found there automatically by the benchmarks)")
    p.add_argument("--fps", type=float, default=d.fps, help="frames kept per second (default %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="shorter side after resizing (default %(default)s)")
    p.add_argument("--square", action="store_true", help="resize to IMAGE_SIZE x IMAGE_SIZE instead")
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="most frames per clip (default %(default)s)")
    p.add_argument("--audio", choices=["wav", "flac", "fbank"], default=d.audio, help="audio cache format")
    p.add_argument("--num-mel-bins", type=int, default=d.num_mel_bins, help="mel bins with --audio fbank")
    p.add_argument("--min-duration", type=float, default=d.min_duration, help="shorter clips are bad (seconds)")
    p.add_argument("--allow-no-audio", action="store_true",
                   help="keep clips without an audio stream (frames only; their manifest wav is empty)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    p.add_argument("--num-workers", type=int, default=4, help="worker processes (0: none; default %(default)s)")
    p.add_argument("--only", default=None, metavar="FILE", help="text file of clip stems to prepare (one per line)")
    p.add_argument("--retry-bad", action="store_true", help="decode again the clips an earlier run found bad")
    p.add_argument("--clip-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a worker decoding one clip longer than this is killed, the clip reported as 'timeout' "
                        "(default %(default)s; see docs/reliability.md)")
    p.add_argument("--overwrite", action="store_true", help="accept a cache made with other settings (redo it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .benchmarks.prepare import PrepareConfig, prepare
    from .experiment import check_output_dir

    check_output_dir(args.out, "prepare OUT")
    cfg = PrepareConfig(fps=args.fps, image_size=args.image_size, square=args.square, max_frames=args.max_frames,
                        audio=args.audio, num_mel_bins=args.num_mel_bins, min_duration=args.min_duration,
                        require_audio=not args.allow_no_audio, jpeg_quality=args.jpeg_quality)
    only = None
    if args.only is not None:
        only = [s.strip() for s in Path(args.only).read_text().splitlines() if s.strip()]
    res = prepare(args.src, args.out, cfg, num_workers=args.num_workers, progress=args.progress,
                  retry_bad=args.retry_bad, overwrite=args.overwrite, only=only, clip_timeout=args.clip_timeout)
    print(res.summary())
    return 0


# --------------------------------------------------------------------------- stats
def _add_stats_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    from .benchmarks.real import REAL_BENCHMARKS

    p = sub.add_parser("stats", help="per-task and per-class statistics of Continual-VS / Continual-AS on local data")
    p.add_argument("--benchmark", required=True, choices=list(REAL_BENCHMARKS))
    p.add_argument("--data-root", required=True, help="dataset root (see docs/datasets.md)")
    p.add_argument("--n-tasks", type=int, default=None, help="only the first N tasks")
    p.add_argument("--classes-per-task", type=int, default=None, help="override the definition's class count")
    p.add_argument("--max-train-clips-per-class", type=int, default=None, help="override the training cap")
    p.add_argument("--retrieval-clips-per-class", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan", action="store_true", help="probe the chosen clips' headers to find bad files")
    p.add_argument("--min-duration", type=float, default=1.0)
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read prepare-cache manifest entries that lie outside --data-root (refused by default)")
    p.add_argument("--no-per-class", dest="per_class", action="store_false", help="only the per-task table")
    p.add_argument("--csv-dir", default=None, help="also write task_stats.csv, class_stats.csv, bad_clips.csv here")
    return p


def _cmd_stats(args: argparse.Namespace) -> int:
    """Builds the benchmark (no decoding) and prints its tables, data report and warnings."""
    from .benchmarks.real import format_stats, real_benchmark
    from .experiment import check_output_dir

    if args.csv_dir:
        check_output_dir(args.csv_dir, "--csv-dir")
    kw: dict[str, Any] = dict(retrieval_clips_per_class=args.retrieval_clips_per_class, seed=args.seed,
                              scan=args.scan, min_duration=args.min_duration,
                              allow_outside_root=args.allow_outside_root)
    if args.n_tasks is not None:
        kw["n_tasks"] = args.n_tasks
    if args.classes_per_task is not None:
        kw["classes_per_task"] = args.classes_per_task
    if args.max_train_clips_per_class is not None:
        kw["max_train_clips_per_class"] = args.max_train_clips_per_class
    with warnings.catch_warnings(record=True) as caught:
        # Printed after the tables, once each, instead of interleaved with them.
        warnings.simplefilter("always", RuntimeWarning)
        bm = real_benchmark(args.benchmark, args.data_root, **kw)
    print(format_stats(bm, per_class=args.per_class))
    if len(bm.bad_clips):
        print(f"\nbad clips ({len(bm.bad_clips)}):")
        print(bm.bad_clips[["video_id", "reason"]].to_string(index=False))
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if notes:
        print("\nwarnings:")
        for n in notes:
            print(f"  {n}")
    if args.csv_dir:
        out = Path(args.csv_dir)
        out.mkdir(parents=True, exist_ok=True)
        bm.task_table.to_csv(out / "task_stats.csv", index=False)
        bm.class_table.to_csv(out / "class_stats.csv", index=False)
        bm.bad_clips.to_csv(out / "bad_clips.csv", index=False)
        print(f"\nwrote {out}/task_stats.csv, class_stats.csv, bad_clips.csv")
    return 0


# --------------------------------------------------------------------------- attention
def _add_attention_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    p = sub.add_parser(
        "attention", help="draw attention maps of chosen clips from a run checkpoint",
        description="Rebuild a run's model (and STELLA's AVM) and benchmark from OUT/checkpoint.pt and draw, for "
                    "each clip, the AVM importance (STELLA) and the audio-to-video cosine map over its frames, with "
                    "the sounding source outlined where ground truth exists (docs/metrics.md, Localization).",
    )
    p.add_argument("--checkpoint", required=True, help="a run checkpoint (OUT/checkpoint.pt of `avalanche-av run`)")
    p.add_argument("--clip", type=int, action="append", required=True, metavar="ID",
                   help="clip id from the run's clip table (repeatable)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: CHECKPOINT's folder/attention)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default %(default)s)")
    p.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature of the cosine map (default the model's contrastive τ)")
    return p


def _cmd_attention(args: argparse.Namespace) -> int:
    from .analysis import draw_attention
    from .experiment import check_device, check_output_dir

    check_device(args.device)
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if args.temperature is not None and not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    for rec in draw_attention(args.checkpoint, args.clip, out_dir=args.out, device=args.device,
                              temperature=args.temperature):
        scores = rec.get("scores", {})
        text = "; ".join(f"{k}: share {v['share']:.3f} (chance {v['chance']:.3f}), AUC {v['auc']:.2f}"
                         for k, v in scores.items())
        print(f"clip {rec['clip_id']}: {rec['path']}" + (f"  [{text}]" if text else ""))
    return 0


# --------------------------------------------------------------------------- downstream
def _add_downstream_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    from .downstream.classify import CLASSIFY_FEATURES
    from .downstream.data import DATASETS
    from .downstream.runner import TASKS

    p = sub.add_parser(
        "downstream", help="evaluate a checkpoint on classification, event localization, segmentation or retrieval",
        description="Downstream evaluation of any backbone (docs/downstream.md): heads on frozen, cached features "
                    "(classify, event, segment) or self-supervised fine-tuning (retrieval-ft), selected on a "
                    "validation split and scored once on the test split.",
    )
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--checkpoint", default="random",
                   help="random, a run checkpoint, a state dict, a CAV-MAE file or imagenet-mae:PATH (default %(default)s)")
    p.add_argument("--model", default=None, help="preset (default: from the checkpoint; tiny for random)")
    p.add_argument("--data", default="synthetic", choices=["synthetic", *sorted(DATASETS)])
    p.add_argument("--data-root", default=None, help="dataset root for real data")
    p.add_argument("--head", default="linear", choices=["linear", "mlp"], help="classify / event head")
    p.add_argument("--features", default="joint", choices=[*CLASSIFY_FEATURES, "all"], help="classify features")
    p.add_argument("--no-audio", dest="use_audio", action="store_false", help="segment: no audio input to the decoder")
    p.add_argument("--seed", type=int, default=0, help="head init and batch order (and the random backbone)")
    for name in ("stream-seed", "n-tasks", "classes-per-task", "train-clips-per-class", "eval-clips-per-class"):
        p.add_argument(f"--{name}", type=int, default=None,
                       help="synthetic stream (default: the checkpoint's run config, else the `run` defaults)")
    p.add_argument("--heldout-tasks", type=int, default=None,
                   help="synthetic: tasks of new classes after the stream (default 1 for retrieval-ft, else 0)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (default per task)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience on the validation split")
    p.add_argument("--min-epochs", type=int, default=None, help="segment: no early stop before this epoch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None, help="few-shot: labelled training clips per class")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train (default %(default)s)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", dest="out_dir", default="av_runs/downstream", help="output folder (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default OUT/../feature_cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--extract-batch-size", type=int, default=64)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _cmd_downstream(args: argparse.Namespace) -> int:
    from .downstream import DownstreamConfig, run_downstream

    fields = {k: v for k, v in vars(args).items() if k != "command"}
    res = run_downstream(DownstreamConfig(**fields))
    metrics = res["metrics"]
    groups = metrics if all(isinstance(v, dict) for v in metrics.values()) else {args.task: metrics}
    print(f"\n== downstream {args.task} on {res['data']['name']}, backbone {res['backbone']['source']} "
          f"({res['backbone']['preset']}) ==")
    for name, m in groups.items():
        scalars = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        print(f"{name}: {scalars}")
    print(f"Wrote {args.out_dir}/results.json, results.csv; {res['timings']['wall_seconds']:.0f} s")
    return 0


# --------------------------------------------------------------------------- entry point
def _error_line(exc: BaseException) -> str:
    # One line whatever the message: multi-line messages are joined.
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    # Progress and metric lines should reach a log file as they happen, not in 8 KB blocks.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(line_buffering=True)
            except (ValueError, OSError):  # pragma: no cover - e.g. a detached stream
                pass
    commands = {"run": _cmd_run, "compare": _cmd_compare, "prepare": _cmd_prepare, "stats": _cmd_stats,
                "attention": _cmd_attention, "downstream": _cmd_downstream}
    # Warning filters are ours to set only for the duration of our own command: importing the
    # package never touches the caller's filters.
    with warnings.catch_warnings():
        # Avalanche imports qpsolvers, which warns when no QP solver is installed; only
        # GEM-style strategies need one, and none of ours do.
        warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
        args = build_parser().parse_args(argv)
        try:
            return commands[args.command](args)
        except (ValueError, OSError) as exc:  # user errors: bad input, files, refused resume
            print(f"avalanche-av: error: {_error_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            how = ("the same `compare` command continues (finished runs are kept)" if args.command == "compare"
                   else "`run --resume` continues from the last checkpoint")
            print(f"avalanche-av: interrupted; {how}", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
