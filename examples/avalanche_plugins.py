"""AVPretraining with Avalanche's own label-free plugins: ReplayPlugin, EWC and an LR scheduler.

    python examples/avalanche_plugins.py
"""
import torch
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer
from avalanche_av.training.plugins import SSLEWCPlugin

bench = sounding_objects(seed=0, n_tasks=2, train_clips_per_class=32)
model = create_model("tiny")
optimizer = default_optimizer(model, lr=1e-3)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
strategy = AVPretraining(
    model=model,
    optimizer=optimizer,
    train_mb_size=16,
    train_epochs=4,
    evaluator=av_evaluator(loggers=[InteractiveLogger()]),
    plugins=[
        ReplayPlugin(mem_size=32, storage_policy=ReservoirSamplingBuffer(max_size=32)),
        SSLEWCPlugin(ewc_lambda=100.0),  # Avalanche's EWC penalty, Fisher from the SSL loss
        LRSchedulerPlugin(scheduler, step_granularity="epoch"),
    ],
)
for exp in bench.train_stream:
    strategy.train(exp)
print(strategy.eval(bench.test_stream)["Retrieval_R@5_a2v/eval_phase/test_stream"])
