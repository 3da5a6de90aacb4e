"""The warm-up + cosine learning-rate option."""
import math

import pytest

from avalanche_av.training.plugins import StellaPlugin
from avalanche_av.training.plugins.schedule import WarmupCosinePlugin, warmup_cosine_factor

from .conftest import make_strategy


def test_factor_by_hand():
    # 10 steps, 2 warm-up: 1/3, 2/3, then cosine from 1 to 0.1 over steps 2..9
    assert warmup_cosine_factor(0, 10, 2, 0.1) == pytest.approx(1 / 3)
    assert warmup_cosine_factor(1, 10, 2, 0.1) == pytest.approx(2 / 3)
    assert warmup_cosine_factor(2, 10, 2, 0.1) == pytest.approx(1.0)
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 7))
    assert warmup_cosine_factor(5, 10, 2, 0.1) == pytest.approx(mid)
    assert warmup_cosine_factor(9, 10, 2, 0.1) == pytest.approx(0.1)


def test_schedule_reaches_every_group_and_restores_base(tiny_stream):
    seen = []

    class _Rec(WarmupCosinePlugin):
        def before_training_iteration(self, strategy, **kw):
            super().before_training_iteration(strategy, **kw)
            seen.append([g["lr"] for g in strategy.optimizer.param_groups])

    sched = _Rec(warmup_fraction=0.25, min_lr_ratio=0.0)
    strategy = make_strategy([StellaPlugin(mem_size=4), sched], mb=4)
    strategy.train(tiny_stream.train_stream[0])
    assert len(seen) == 4 and all(len(lrs) == 2 for lrs in seen)  # backbone + AVM groups
    assert seen[0][0] == pytest.approx(1e-3 / 2) and seen[0][1] == pytest.approx(1e-3 / 2)
    assert seen[-1][0] == pytest.approx(0.0, abs=1e-12)
    assert [g["lr"] for g in strategy.optimizer.param_groups] == [pytest.approx(1e-3)] * 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupCosinePlugin(warmup_fraction=1.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        WarmupCosinePlugin(min_lr_ratio=2.0)
