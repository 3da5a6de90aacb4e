"""Continual pre-training on several processes with PyTorch's launcher, from Python.

The same script runs as one process or as N ranks; on CPU the ranks use gloo, on GPUs nccl
(one GPU per rank). Each rank trains on its shard of every experience, the ranks average their
gradients, and the STELLA memory is split over the ranks (``--mem-size`` is the total). Only
rank 0 prints and writes; the checkpoint merges every rank's memory into one file, which a run
on any number of ranks can resume (docs/distributed.md).

    python examples/distributed_torchrun.py                                  # one process
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 examples/distributed_torchrun.py   # 2 CPU ranks
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=3 examples/distributed_torchrun.py --resume

The command line does the same with ``torchrun ... -m avalanche_av.cli run``.
"""
import argparse
from pathlib import Path

import torch

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, load_checkpoint, make_plugins, save_checkpoint
from avalanche_av.training.distributed import distributed_session, memory_share, seed_all

MEM_SIZE = 24  # clips over all ranks
SEED = 0

parser = argparse.ArgumentParser()
parser.add_argument("--resume", action="store_true", help="continue from the checkpoint of an earlier call")
parser.add_argument("--out", default="av_runs/example_ddp")
args = parser.parse_args()
ckpt = Path(args.out) / "checkpoint.pt"

with distributed_session(device="cpu") as ctx:  # a no-op without torchrun's environment
    seed_all(SEED)  # the same initial weights on every rank
    bench = sounding_objects(seed=SEED, n_tasks=3, classes_per_task=2, train_clips_per_class=12,
                             eval_clips_per_class=4)
    model = create_model("tiny")
    evaluator = av_evaluator(loggers=[])
    strategy = AVPretraining(
        model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=4, train_epochs=2,
        eval_mb_size=16, device=ctx.device or "cpu", evaluator=evaluator,
        # this rank's part of the memory (the whole memory in one process)
        plugins=make_plugins("stella", mem_size=memory_share(MEM_SIZE), batch_size=4),
    )
    strategy.shard_seed = SEED  # the data shards follow the run seed, the same on every rank
    seed_all(SEED + ctx.rank)  # different masks and draws per rank

    done = 0
    if args.resume:
        done = int(load_checkpoint(ckpt, strategy)["done"])  # re-deals the memory onto this many ranks
    for t, exp in enumerate(bench.train_stream):
        if t < done:
            continue
        strategy.train(exp)
        save_checkpoint(ckpt, strategy, extra={"done": t + 1})  # every rank calls it; rank 0 writes
        if not args.resume and t == 1:
            break  # stop after two experiences, so that --resume has one left
    strategy.eval(bench.test_stream)  # every rank embeds its shard; the scores use all of them

    store = strategy.plugins[0].storage.store
    held = torch.tensor([store.size])
    if ctx.is_distributed:
        torch.distributed.all_reduce(held)
    if ctx.is_main:
        last = get_retrieval_metrics(evaluator).to_dict()["streams"]["test"]["last"]
        r5 = last["clip"]["a2v"]["5"]
        print(f"{ctx.world_size} rank(s), {strategy.clock.train_exp_counter} experience(s) trained so far; "
              f"memory {int(held)} / {MEM_SIZE} clips over all ranks")
        print("R@5 a2v after the last experience, per task:", {k: round(v, 3) for k, v in r5.items()})
        print("checkpoint:", ckpt)
