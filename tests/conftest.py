"""Shared fixtures: a tiny synthetic stream and tiny-model strategies (CPU, seconds)."""
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message="no QP solver found")
warnings.filterwarnings("ignore", message="No loggers specified")
# One thread for the whole suite. Its tensors are small: on the project's 2-core machine a 2-thread
# pool made the suite several times slower (30% done after 9 minutes, against the whole suite in
# 9 minutes on one thread), and the recorded scores of the slow tests are one-thread scores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks_av/gpu_check.py runs the CUDA subset)")
    for item in items:
        # the marker, not the keyword: a parameter id "cuda" is a keyword too
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _debug_checks_on():
    """Validations that read tensor values (a host sync each on a GPU) are off by default for
    speed; the tests run with them on (avalanche_av.models.debug)."""
    from avalanche_av.models import debug_checks

    with debug_checks(True):
        yield


@pytest.fixture(scope="session")
def tiny_stream():
    """2 tasks x 2 classes, 8 training and 4 retrieval clips per class, tiny-model shapes."""
    from avalanche_av.benchmarks import sounding_objects

    return sounding_objects(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=8, eval_clips_per_class=4)


def make_strategy(plugins=(), mb=8, epochs=1, seed=0, **kw):
    from avalanche_av.evaluation import av_evaluator
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer

    torch.manual_seed(seed)
    model = create_model("tiny")
    return AVPretraining(
        model=model,
        optimizer=default_optimizer(model, lr=1e-3),
        train_mb_size=mb,
        train_epochs=epochs,
        eval_mb_size=16,
        plugins=list(plugins),
        evaluator=av_evaluator(loggers=[]),
        **{"device": "cpu", **kw},
    )
