"""A per-experience learning-rate schedule: linear warm-up, then cosine decay.

The paper trains with one Adam optimizer and a **constant** learning rate for the whole stream;
that stays the default of every method. This schedule is an option beyond the paper for short
budgets (the CPU demo): it restarts at every experience, warms up over the first
``warmup_fraction`` of the experience's iterations and decays to ``min_lr_ratio`` of the base
learning rate by its end. It sets every parameter group, including groups that plugins add
after the optimizer was built (STELLA's AVM), which Avalanche's ``LRSchedulerPlugin`` with a
torch scheduler built up front would miss.
"""
from __future__ import annotations

import math
from typing import List, Optional

from avalanche.training.plugins import SupervisedPlugin

__all__ = ["WarmupCosinePlugin", "warmup_cosine_factor"]


def warmup_cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The learning-rate factor at ``step`` (0-based) of ``total``: linear ramp over ``warmup``
    steps from ``1/(warmup+1)`` to 1, then cosine from 1 down to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosinePlugin(SupervisedPlugin):
    """Warm-up + cosine learning rate, restarted at every experience (an option beyond the paper).

    Args:
        warmup_fraction: share of an experience's iterations spent warming up, in [0, 1).
        min_lr_ratio: final learning rate as a fraction of the base one, in [0, 1].
    """

    def __init__(self, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.1):
        super().__init__()
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_fraction = warmup_fraction
        self.min_lr_ratio = min_lr_ratio
        #: base learning rate per parameter group, recorded the first time a group is seen
        self.base_lrs: List[float] = []
        self._step = 0
        self._total = 1
        self._warmup = 0

    def before_training_exp(self, strategy, **kwargs):
        groups = strategy.optimizer.param_groups
        for g in groups[len(self.base_lrs):]:
            self.base_lrs.append(float(g.get("initial_lr", g["lr"])))
        self._total = max(1, strategy.train_epochs * len(strategy.dataloader))
        self._warmup = int(self.warmup_fraction * self._total)
        self._step = 0

    def before_training_iteration(self, strategy, **kwargs):
        groups = strategy.optimizer.param_groups
        for g in groups[len(self.base_lrs):]:  # a group added mid-experience (STELLA's AVM)
            self.base_lrs.append(float(g["lr"]))
        f = warmup_cosine_factor(self._step, self._total, self._warmup, self.min_lr_ratio)
        for g, base in zip(groups, self.base_lrs):
            g["lr"] = base * f
        self._step += 1

    def after_training_exp(self, strategy, **kwargs):
        # Leave the optimizer at its base rates between experiences (evaluation, checkpoints).
        for g, base in zip(strategy.optimizer.param_groups, self.base_lrs):
            g["lr"] = base

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = [float(x) for x in state["base_lrs"]]
