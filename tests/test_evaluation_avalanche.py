"""RetrievalMetrics inside a real Avalanche training loop (tiny linear model, 2 experiences).

Checks how accuracy-matrix rows are assigned under Avalanche's own periodic-eval schedules.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as make_tensor_dataset,
)
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from avalanche_av.evaluation import av_evaluator, average_accuracy, forgetting, get_retrieval_metrics


class _TinyAV(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.v = nn.Linear(4, 8)

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(
            emb_a_unmasked=nn.functional.normalize(self.a(audio), dim=1),
            emb_v_unmasked=nn.functional.normalize(self.v(video), dim=1),
        )


class _Template(SupervisedTemplate):
    # Samples are (audio, target, video, clip_id, task): Avalanche's tensor dataset wants the
    # class target second.
    @property
    def mb_y(self):
        return self.mbatch[1]

    @property
    def mb_clip_id(self):
        return self.mbatch[3]

    def forward(self):
        return self.model(self.mbatch[0], self.mbatch[2])

    def criterion(self):
        out = self.mb_output
        return -(out.emb_a_unmasked * out.emb_v_unmasked).sum(1).mean()


def _benchmark():
    g = torch.Generator().manual_seed(0)

    def ds(task: int, n: int, offset: int):
        x = torch.randn(n, 4, generator=g)
        video = x + 0.1 * torch.randn(n, 4, generator=g)
        target = torch.arange(n) % 2 + 2 * task
        return make_tensor_dataset(x, target, video, torch.arange(n) + offset, targets=1, task_labels=task)

    return benchmark_from_datasets(
        train=[ds(0, 16, 0), ds(1, 16, 100)], test=[ds(0, 8, 1000), ds(1, 8, 2000)]
    )


@pytest.mark.parametrize("eval_every", [1, 0, -1])
def test_rows_under_avalanche_periodic_eval(eval_every):
    torch.manual_seed(0)
    bm = _benchmark()
    ev = av_evaluator(loggers=[], ks=(1, 5))
    model = _TinyAV()
    strategy = _Template(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=8,
        eval_mb_size=4,
        train_epochs=2,
        evaluator=ev,
        eval_every=eval_every,
    )
    for exp in bm.train_stream:
        strategy.train(exp, eval_streams=[bm.test_stream])
        if eval_every < 0:
            strategy.eval(bm.test_stream)
    rm = get_retrieval_metrics(ev)

    m = rm.matrix("a2v", 1)
    assert m.shape == (2, 2) and not np.isnan(m).any()
    rows = [h["row"] for h in rm.history]
    if eval_every == 1:
        # init, then per experience: a stale eval after epoch 1 and the promoted one after epoch 2
        # (Avalanche skips its end-of-experience eval here); train() #2 starts with a re-eval.
        assert rows == ["init", None, 0, 0, None, 1]
        # the promoted eval and the re-eval at the start of train() #2 measured the same model
        assert rm.history[2]["scores"] == rm.history[3]["scores"]
    elif eval_every == 0:
        assert rows == ["init", 0, 0, 1]
    else:
        assert rows == [0, 1]
        assert rm.init_scores("a2v", 1) is None

    last = ev.get_last_metrics()
    assert last["Retrieval_A_R@1_a2v/eval_phase/test_stream"] == pytest.approx(average_accuracy(m))
    assert last["Retrieval_F_R@1_a2v/eval_phase/test_stream"] == pytest.approx(forgetting(m))
    assert "Retrieval_R@5_v2a/eval_phase/test_stream/Task001" in last
    assert "Loss_Stream/eval_phase/test_stream" in last
