"""The paper's replay-based baselines on a small synthetic stream, each by its registry name,
with A and F of R@5 (audio→video) and what each method's mechanism did. See
docs/baselines_replay.md. Takes about a minute on 2 CPU cores for these three.

    python examples/replay_baselines.py
"""
import torch

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

bench = sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=32, eval_clips_per_class=8)


def run(name: str, **options):
    """Train ``name`` over the stream, evaluating after each experience; returns (plugin, metrics)."""
    torch.manual_seed(0)
    model = create_model("tiny")
    evaluator = av_evaluator(loggers=[])
    plugins = make_plugins(name, mem_size=32, batch_size=8, **options)
    strategy = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=8,
                             train_epochs=2, device="cpu", plugins=plugins, evaluator=evaluator)
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    rm = get_retrieval_metrics(evaluator)
    print(f"{name:8s} A = {rm.summary_metric('A', 'a2v', 5):.3f}  F = {rm.summary_metric('F', 'a2v', 5):.3f}")
    return plugins[0], rm


# CLS-ER: two EMA teachers updated at different rates; evaluation uses the stable one.
clser, _ = run("cls-er")
print(f"  plastic EMA: {clser.plastic.updates}/{clser.plastic.steps} steps updated, "
      f"stable EMA: {clser.stable.updates}/{clser.stable.steps}; "
      f"last step took the stable teacher for {float(clser.last_stable_fraction):.0%} of memory samples")

# LUMP: one Beta(alpha, alpha) lambda per step, shared by audio and video.
lump, _ = run("lump", alpha=0.4)
print(f"  last lambda {lump.last_lambda:.3f}; the memory stores real clips ({len(lump.storage)} of them)")

# ESMER: high-loss current clips are down-weighted and kept out of the memory.
esmer, _ = run("esmer")
print(f"  running mean loss {esmer.running_loss:.3f}; {esmer.storage.n_seen} of "
      f"{esmer.ema.steps * 8} current clips were admitted to the memory")
