"""STELLA's score cache (an option beyond the paper): reuse a clip's AVM scores for k epochs.

Trains the same tiny STELLA run twice on one synthetic experience, with the paper's behaviour
(``score_cache_epochs=0``: every clip scored at every step) and with ``score_cache_epochs=2``,
and prints the process CPU time, the cache's hits and misses, and the retrieval after training.
See docs/stella.md ("Score cache") and benchmarks_av/results/score_cache.md for the measured
trade-off at base shapes.

    OMP_NUM_THREADS=1 python examples/stella_score_cache.py

The command line: ``avalanche-av run --option score_cache_epochs=2``.
"""
import time

import torch

from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer
from avalanche_av.training.plugins import StellaPlugin

bench = sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=16, eval_clips_per_class=4)

for k in (0, 2):
    torch.manual_seed(0)
    model = create_model("tiny")
    stella = StellaPlugin(mem_size=16, batch_size_mem=8, score_cache_epochs=k)
    evaluator = av_evaluator(loggers=[])
    strategy = AVPretraining(model=model, optimizer=default_optimizer(model, lr=1e-3), train_mb_size=8,
                             train_epochs=6, eval_mb_size=16, device="cpu", plugins=[stella], evaluator=evaluator)
    t0 = time.process_time()
    for exp in bench.train_stream:
        strategy.train(exp)
    cpu = time.process_time() - t0
    strategy.eval(bench.test_stream)
    r5 = get_retrieval_metrics(evaluator).to_dict()["streams"]["test"]["last"]["clip"]["a2v"]["5"]
    cache = stella.score_cache
    hits = f"{cache.hits} hits, {cache.misses} misses, {len(cache)} clips cached" if cache is not None else "off"
    print(f"score_cache_epochs={k}: {cpu:.1f} s CPU for 2 experiences x 6 epochs; cache: {hits}; "
          f"R@5 a2v per task: {{{', '.join(f'{t}: {v:.3f}' for t, v in r5.items())}}}")
