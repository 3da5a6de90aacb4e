"""The paper's replay-based baselines on a small synthetic stream, each by its registry name,
with A and F of R@5 (audio→video) and what each method's mechanism did. See
docs/baselines_replay.md. Takes about three minutes on 2 CPU cores.

    python examples/replay_baselines.py
"""
import time

import torch
from avalanche.core import SupervisedPlugin

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

SEED = 0  # the run's seed: the data, the initialisation and (run_seed) each memory's draws
bench = sounding_objects(seed=SEED, n_tasks=2, classes_per_task=2, train_clips_per_class=32, eval_clips_per_class=8)


def run(name: str, extra=(), **options):
    """Train ``name`` over the stream, evaluating after each experience; returns (plugin, metrics).
    ``extra``: more plugins (after the method's own)."""
    torch.manual_seed(SEED)
    model = create_model("tiny")
    evaluator = av_evaluator(loggers=[])
    plugins = make_plugins(name, mem_size=32, batch_size=8, run_seed=SEED, **options)
    strategy = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=8,
                             train_epochs=2, device="cpu", plugins=plugins + list(extra), evaluator=evaluator)
    train_s = 0.0
    for exp in bench.train_stream:
        t0 = time.perf_counter()
        strategy.train(exp)
        train_s += time.perf_counter() - t0
        strategy.eval(bench.test_stream)
    rm = get_retrieval_metrics(evaluator)
    print(f"{name:8s} A = {rm.summary_metric('A', 'a2v', 5):.3f}  F = {rm.summary_metric('F', 'a2v', 5):.3f}  "
          f"(training {train_s:.1f} s)")
    return plugins[0], rm


# ER and DER++: the reference points (uniform memory batch; DER++ adds the embedding penalty).
run("er")
run("der++")

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


class Track(SupervisedPlugin):
    """Calls ``read(method_plugin)`` after every training iteration and keeps what it returns."""

    def __init__(self, read):
        super().__init__()
        self.read, self.rows = read, []

    def after_training_iteration(self, strategy, **kwargs):
        row = self.read(strategy.plugins[0])
        if row is not None:
            self.rows.append(row)


# MIR: score 5x the memory batch by the loss increase a virtual SGD step causes, replay the top.
def mir_gain(p):
    if p.last_scores is None:  # the memory held no more than one memory batch: nothing to score
        return None
    return float(p.last_scores.topk(8).values.mean()), float(p.last_scores.mean())


track = Track(mir_gain)
run("mir", extra=[track])
top, mean = (sum(r[i] for r in track.rows) / len(track.rows) for i in (0, 1))
print(f"  {len(track.rows)} scored steps; replayed candidates' mean loss increase {top:+.2e} "
      f"vs {mean:+.2e} over all candidates")

# GMED: edit memory clips up the gradient of the update's loss increase, write them back, replay.
for rounding in ("nearest", "stochastic"):
    track = Track(lambda p: None if p.last_changed is None else
                  (float(p.last_changed_audio.mean()), float(p.last_changed_video.mean())))
    run("gmed", extra=[track], rounding=rounding)
    audio, video = (sum(r[i] for r in track.rows) / len(track.rows) for i in (0, 1))
    print(f"  rounding={rounding}: an edit changed {audio:.2%} of a stored clip's fbank values "
          f"and {video:.4%} of its pixels (mean over {len(track.rows)} edits)")
