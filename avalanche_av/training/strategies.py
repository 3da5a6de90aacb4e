"""Named strategies for the command line and the benchmark suite.

A strategy here is just the list of plugins added to :class:`AVPretraining`; every method shares
the template, the SSL loss and (for replay methods) the memory size. New methods register with
:func:`register_strategy`.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from avalanche.core import BasePlugin
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer

__all__ = ["STRATEGIES", "register_strategy", "make_plugins", "list_strategies"]

StrategyFactory = Callable[..., List[BasePlugin]]
STRATEGIES: Dict[str, StrategyFactory] = {}


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    def deco(fn: StrategyFactory) -> StrategyFactory:
        STRATEGIES[name] = fn
        return fn

    return deco


def list_strategies() -> list[str]:
    return sorted(STRATEGIES)


def make_plugins(name: str, *, mem_size: int, batch_size: int, **options) -> List[BasePlugin]:
    """Plugins implementing strategy ``name``.

    Args:
        name: one of :func:`list_strategies`.
        mem_size: replay memory size in clips (ignored by memory-free methods).
        batch_size: current-batch size; replay methods draw memory batches of the same size.
        options: method-specific options, passed to the factory.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {list_strategies()}")
    if mem_size < 0:
        raise ValueError(f"mem_size must be >= 0, got {mem_size}")
    return STRATEGIES[name](mem_size=mem_size, batch_size=batch_size, **options)


@register_strategy("finetune")
def _finetune(**_) -> List[BasePlugin]:
    return []


@register_strategy("er")
def _er(mem_size: int, batch_size: int, **options) -> List[BasePlugin]:
    """ER on the task-free online reservoir shared with DER++ and STELLA."""
    from .plugins import OnlineReplayPlugin

    return [OnlineReplayPlugin(mem_size=mem_size, batch_size_mem=batch_size, **options)]


@register_strategy("der++")
def _derpp(mem_size: int, batch_size: int, **options) -> List[BasePlugin]:
    from .plugins import DERPlugin

    return [DERPlugin(mem_size=mem_size, batch_size_mem=batch_size, **options)]


@register_strategy("stella")
def _stella(mem_size: int, batch_size: int, **options) -> List[BasePlugin]:
    from .plugins import StellaPlugin

    return [StellaPlugin(mem_size=mem_size, batch_size_mem=batch_size, **options)]


@register_strategy("stella+")
def _stella_plus(mem_size: int, batch_size: int, **options) -> List[BasePlugin]:
    from .plugins import StellaPlugin

    return [StellaPlugin(mem_size=mem_size, batch_size_mem=batch_size, store_patches=True, **options)]


@register_strategy("er_exp")
def _er_exp(mem_size: int, batch_size: int, **_) -> List[BasePlugin]:
    """Avalanche's own ``ReplayPlugin`` + ``ReservoirSamplingBuffer``: memory updated after each
    experience (not task-free), memory batch concatenated to every current batch."""
    if mem_size < 1:
        raise ValueError("strategy 'er_exp' needs mem_size >= 1")
    return [
        ReplayPlugin(
            mem_size=mem_size,
            batch_size_mem=batch_size,
            storage_policy=ReservoirSamplingBuffer(max_size=mem_size),
        )
    ]
