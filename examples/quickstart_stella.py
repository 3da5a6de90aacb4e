"""STELLA on the synthetic stream, straight from Python (the README snippet, a bit smaller).

    python examples/quickstart_stella.py
"""
from avalanche_av.benchmarks import sounding_objects
from avalanche_av.evaluation import av_evaluator, get_retrieval_metrics
from avalanche_av.models import create_model
from avalanche_av.training import AVPretraining, default_optimizer
from avalanche_av.training.plugins import StellaPlugin

bench = sounding_objects(seed=0, n_tasks=2, train_clips_per_class=64)
model = create_model("tiny")
evaluator = av_evaluator()
strategy = AVPretraining(
    model=model,
    optimizer=default_optimizer(model, lr=1e-3),
    train_mb_size=32,
    train_epochs=5,
    evaluator=evaluator,
    plugins=[StellaPlugin(mem_size=32)],
)
for exp in bench.train_stream:
    strategy.train(exp)
    strategy.eval(bench.test_stream)

rm = get_retrieval_metrics(evaluator)
print("R@5 a2v after each experience (rows) on each task (columns):")
print(rm.matrix(direction="a2v", k=5))
print("A =", rm.summary_metric("A", "a2v", 5), " F =", rm.summary_metric("F", "a2v", 5))
