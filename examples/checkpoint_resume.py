"""Checkpoint a run after each experience and resume it (weights_only-safe files).

    python examples/checkpoint_resume.py
"""
from pathlib import Path

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, load_checkpoint, save_checkpoint
from avalanche_av.training.plugins import StellaPlugin


def make_strategy():
    model = create_model("tiny")
    return AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=16,
                         train_epochs=2, evaluator=av_evaluator(loggers=[]), plugins=[StellaPlugin(mem_size=16)])


bench = sounding_objects(seed=0, n_tasks=3, train_clips_per_class=16)
ckpt = Path("av_runs/example_ckpt/checkpoint.pt")

strategy = make_strategy()
strategy.train(bench.train_stream[0])
save_checkpoint(ckpt, strategy, extra={"completed_experiences": 1})
print("saved", ckpt, "memory:", len(strategy.plugins[0].storage), "clips")

# ... later, in a new process: rebuild the same strategy and restore everything
resumed = make_strategy()
extra = load_checkpoint(ckpt, resumed)
for exp in bench.train_stream[extra["completed_experiences"]:]:
    resumed.train(exp)
print("resumed and finished; memory:", len(resumed.plugins[0].storage), "clips")
