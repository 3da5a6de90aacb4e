"""Continual-VS from a local VGGSound copy: statistics, an optional prepare cache, STELLA training.

    # on a tiny fake copy written first (real class names, planted bad files; ~1 s to build)
    python examples/continual_vs.py --make-fake /tmp/fake_vggsound
    python examples/continual_vs.py --make-fake /tmp/fake_vggsound --prepare   # via the cache

    # on your own copy (layout: docs/datasets.md), paper settings, base model
    python examples/continual_vs.py --data-root /data/vggsound --model base --full

Without ``--full`` the stream is cut down (2 tasks, 2 classes per task, 2 training and 1
retrieval clip per class) and the ``tiny`` model trains 1 epoch per task, so the whole
script runs in well under a minute on a CPU.
"""
from __future__ import annotations

import argparse
import warnings

from avalanche_av.benchmarks.real import continual_vs, format_stats, make_fake_vggsound
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model, get_config
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-root", help="a local VGGSound copy")
    src.add_argument("--make-fake", metavar="DIR", help="write a tiny fake VGGSound into DIR and use it")
    ap.add_argument("--prepare", action="store_true", help="decode the clips into DATA_ROOT/prepared first")
    ap.add_argument("--model", default="tiny", help="model preset; decoding follows its input shapes")
    ap.add_argument("--strategy", default="stella")
    ap.add_argument("--full", action="store_true", help="paper sizes: 8 tasks, 20 classes, 400 + 5 clips per class")
    ap.add_argument("--shuffled", action="store_true", help="task order of paper Table 7")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    root = args.data_root
    if args.make_fake:
        info = make_fake_vggsound(args.make_fake)
        root = args.make_fake
        print(f"fake VGGSound in {root}: {len(info.clips)} clip files, {len(info.missing)} rows without a file, "
              f"bad files {sorted(info.bad.values())}")
    if args.prepare:
        from avalanche_av.benchmarks.prepare import prepare  # noqa: PLC0415

        print(prepare(f"{root}/video", f"{root}/prepared", num_workers=args.num_workers,
                      image_size=get_config(args.model).image_size).summary())

    mc = get_config(args.model)
    sizes = {} if args.full else dict(n_tasks=2, classes_per_task=2, max_train_clips_per_class=2,
                                      retrieval_clips_per_class=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the same facts are in the printed statistics
        bench = continual_vs(root, shuffled=args.shuffled, scan=True, n_frames=mc.n_frames, image_size=mc.image_size,
                             target_length=mc.audio_length, num_mel_bins=mc.num_mel_bins, **sizes)
    print(format_stats(bench, per_class=False))

    model = create_model(args.model)
    evaluator = av_evaluator()
    strategy = AVPretraining(
        model=model,
        optimizer=default_optimizer(model, lr=1e-3 if args.model == "tiny" else 1e-4),
        train_mb_size=args.batch_size,
        train_epochs=args.epochs,
        eval_mb_size=16,
        device=args.device,
        evaluator=evaluator,
        plugins=make_plugins(args.strategy, mem_size=8, batch_size=args.batch_size),
    )
    for exp in bench.train_stream:
        strategy.train(exp, num_workers=args.num_workers)
        strategy.eval(bench.test_stream, num_workers=args.num_workers)
    rm = get_retrieval_metrics(evaluator)
    print("R@5 audio->video after each task (rows) on each task (columns):")
    print(rm.matrix(direction="a2v", k=5))
    print(f"A = {rm.summary_metric('A', 'a2v', 5):.3f}  F = {rm.summary_metric('F', 'a2v', 5):.3f}")
    # Clips left out or replaced, before training (missing files, the scan) and while decoding.
    print("data:", bench.data_report.merged(bench.load_time_report()).summary())


if __name__ == "__main__":
    main()
