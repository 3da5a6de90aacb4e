"""Avalanche's own regularisation, distillation and replay baselines, label-free, on a small
synthetic stream: each by its registry name, with A and F of R@5 (audio→video) and what its
mechanism did. See docs/baselines_avalanche.md. About a minute on 2 CPU cores. The budget is
far too small to separate the methods (A and F sit near chance); it shows the API and that each
mechanism acts. `avalanche-av compare --strategies ...` runs them at a real budget.

    python examples/avalanche_baselines.py
"""
import time

import torch
from avalanche.core import SupervisedPlugin

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer, make_plugins

bench = sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=32, eval_clips_per_class=8)


class ExtraLoss(SupervisedPlugin):
    """Records, per step, what the method added to the SSL loss (runs after the method's own hooks)."""

    def __init__(self):
        super().__init__()
        self.terms = []

    def before_backward(self, strategy, **kw):
        self.terms.append(float(strategy.loss.detach()) - float(strategy.mb_output.loss.detach()))


class Projections(SupervisedPlugin):
    """Counts the steps whose gradient A-GEM projected (it conflicted with the memory gradient)."""

    def __init__(self, agem):
        super().__init__()
        self.agem, self.steps, self.projected = agem, 0, 0

    def after_backward(self, strategy, **kw):
        if self.agem.last_dot is not None:
            self.steps += 1
            self.projected += self.agem.last_dot < 0
            self.agem.last_dot = None


def run(name: str, probe_fn=None, **options):
    """Train ``name`` over the stream, evaluating after each experience."""
    torch.manual_seed(0)
    model = create_model("tiny")
    evaluator = av_evaluator(loggers=[])
    plugins = make_plugins(name, mem_size=32, batch_size=8, **options)
    probe = probe_fn(plugins[0]) if probe_fn else ExtraLoss()
    strategy = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=8,
                             train_epochs=2, device="cpu", plugins=plugins + [probe], evaluator=evaluator)
    t0 = time.perf_counter()
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    rm = get_retrieval_metrics(evaluator)
    print(f"{name:21s} A = {rm.summary_metric('A', 'a2v', 5):.3f}  F = {rm.summary_metric('F', 'a2v', 5):.3f}  "
          f"({time.perf_counter() - t0:.1f} s)", end="")
    return probe


run("finetune")
print()
# Regularisers and distillation: the term each adds is 0 in the first experience (nothing to
# protect yet) and grows as the weights move away from the anchor in the second.
for name in ("ewc", "si", "mas", "rwalk", "lwf", "lfl"):
    terms = run(name).terms
    half = len(terms) // 2
    print(f"   added to the loss: experience 0 max {max(terms[:half]):.2g}, experience 1 mean "
          f"{sum(terms[half:]) / (len(terms) - half):.2g}")
# A-GEM: how often the step's gradient conflicted with the memory's and was projected.
proj = run("agem", probe_fn=Projections)
print(f"   projected {proj.projected}/{proj.steps} steps of experience 1")
# Reference points: cumulative trains on everything seen so far; multitask once on all tasks
# (its F is 0 by construction: every row of its accuracy matrix is the same model).
run("cumulative")
print()
run("multitask")
print()
