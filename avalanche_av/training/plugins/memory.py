"""The online-memory base shared by every replay method (ER, DER++, STELLA, the baselines).

:class:`OnlineMemoryPlugin` writes once what every memory-based method needs: validating the
memory size, an injectable storage policy (as Avalanche's ``ReplayPlugin(storage_policy=...)``,
with ``mem_size`` as a shortcut), drawing a memory batch before each forward, offering the
**current** clips to the memory after each iteration (task-free, paper Sec. 3.3), state for
checkpoints and the bytes one stored sample costs.

A method subclasses it and

* declares what it stores beyond the clip in ``MEMORY_FIELDS`` (name -> storage dtype), next to
  the code that fills those fields (:meth:`OnlineMemoryPlugin.insert_fields`);
* overrides :meth:`OnlineMemoryPlugin.replay` to change how a memory batch enters the step
  (the default appends the stored clips to the minibatch, which is ER).

Composition. Every online-memory plugin replays only its own memory, finds its rows through
``strategy.memory_rows(self)`` and stores only the current rows (``strategy.current_clips()``),
so ER and DER++ (or any two non-exclusive methods) run together correctly. A method that rewrites
the whole minibatch (STELLA selects patches of every row) sets ``exclusive = True``: it raises
``ValueError`` at ``before_training`` when another online-memory plugin is present.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from avalanche.training.plugins import SupervisedPlugin
from torch.profiler import record_function

from ..storage_policy import CLIP_FIELDS, OnlineReservoirBuffer
from ..template import require_av_template

__all__ = ["OnlineMemoryPlugin", "check_mem_size"]


def check_mem_size(mem_size, who: str = "memory") -> int:
    """The one place the memory size is validated: an ``int >= 1``."""
    if isinstance(mem_size, bool) or not isinstance(mem_size, int) or mem_size < 1:
        raise ValueError(f"{who} needs mem_size >= 1 (an int, in clips), got {mem_size!r}")
    return mem_size


class OnlineMemoryPlugin(SupervisedPlugin):
    """Base of the task-free replay methods: a reservoir updated after every iteration.

    Args:
        mem_size: memory size in clips (``>= 1``); ignored when ``storage_policy`` is given
            (its ``max_size`` is the size).
        batch_size_mem: memory batch size; default the current batch size. While the memory
            holds fewer samples, all of them are replayed.
        storage_policy: an :class:`~avalanche_av.training.storage_policy.OnlineReservoirBuffer`
            (or subclass) to use instead of a new one.
        memory_device: where a new memory lives (CPU by default).
        seed: seed of the memory's sampling generator.

    Raises:
        ValueError: a bad ``mem_size`` / ``batch_size_mem``.
        TypeError: a storage policy that is not an online buffer. Avalanche's per-experience
            buffers (``ReservoirSamplingBuffer``, ``ExperienceBalancedBuffer``...) hold datasets
            updated once per experience; use them with Avalanche's ``ReplayPlugin`` (strategy
            ``er_exp``).
    """

    #: Per-sample fields stored beyond the clip (:data:`CLIP_FIELDS`): name -> storage dtype.
    MEMORY_FIELDS: Dict[str, torch.dtype] = {}
    #: True when the method rewrites every row of the minibatch and cannot share it.
    exclusive: bool = False

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__()
        name = type(self).__name__
        if storage_policy is None:
            storage_policy = self.make_storage(check_mem_size(mem_size, name), memory_device)
        elif not isinstance(storage_policy, OnlineReservoirBuffer):
            raise TypeError(
                f"{name} needs an online storage policy (avalanche_av OnlineReservoirBuffer or a subclass), "
                f"got {type(storage_policy).__name__}. Avalanche's per-experience buffers work with "
                "Avalanche's ReplayPlugin (strategy 'er_exp')."
            )
        if batch_size_mem is not None and (not isinstance(batch_size_mem, int) or batch_size_mem < 1):
            raise ValueError(f"{name}: batch_size_mem must be an int >= 1 or None, got {batch_size_mem!r}")
        storage_policy.declare_fields(self.memory_fields())
        storage_policy.seed(seed)
        self.storage = storage_policy
        self.batch_size_mem = batch_size_mem
        #: the memory batch of the current step (fields on the strategy's device), or None
        self.mem_batch: Optional[Dict[str, torch.Tensor]] = None
        #: memory slots of ``mem_batch`` ``(m,)``
        self.mem_slots: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ layout
    def make_storage(self, mem_size: int, device: str) -> OnlineReservoirBuffer:
        """The storage used when none is injected."""
        return OnlineReservoirBuffer(mem_size, device=device)

    def memory_fields(self) -> Dict[str, torch.dtype]:
        """The fields this method declares beyond the storage's base fields (the clip): :attr:`MEMORY_FIELDS`."""
        return dict(self.MEMORY_FIELDS)

    @property
    def storage_policy(self) -> OnlineReservoirBuffer:
        """Avalanche's name for :attr:`storage`."""
        return self.storage

    @property
    def mem_size(self) -> int:
        """Memory size in clips; always the storage's ``max_size`` (so ``resize`` keeps them equal)."""
        return self.storage.max_size

    def memory_bytes_per_sample(self) -> int:
        """Bytes one stored sample costs over all fields (0 before the first insertion)."""
        return self.storage.bytes_per_sample()

    # ------------------------------------------------------------------ hooks
    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        others = [p for p in strategy.plugins if isinstance(p, OnlineMemoryPlugin) and p is not self]
        exclusive = [p for p in [self, *others] if p.exclusive]
        if others and exclusive:
            raise ValueError(
                f"{type(exclusive[0]).__name__} rewrites every row of the minibatch and cannot share it with "
                f"another online-memory plugin ({', '.join(type(p).__name__ for p in others if p is not exclusive[0]) or type(self).__name__}); "
                "use one memory-based method per strategy"
            )

    def before_forward(self, strategy, **kwargs):
        self.mem_batch = self.draw_memory(strategy)
        if self.mem_batch is not None:
            self.replay(strategy, self.mem_batch)

    def after_training_iteration(self, strategy, **kwargs):
        # A step whose loss was not finite is dropped whole: nothing of it enters the memory, so
        # one poisoned clip cannot make later steps fail again. Between host checks
        # (nan_check_every > 1) the step's finiteness is a device flag that travels with the write.
        if not strategy.step_skipped:
            with record_function("memory.add"):
                self.storage.add(self.insert_fields(strategy), keep=getattr(strategy, "step_finite", None))
        self.mem_batch = None
        self.mem_slots = None

    # ------------------------------------------------------------------ overridable steps
    def draw_memory(self, strategy) -> Optional[Dict[str, torch.Tensor]]:
        """Draw this step's memory batch (``batch_size_mem`` or the current batch size)."""
        if len(self.storage) == 0:
            return None
        with record_function("memory.sample"):
            self.mem_slots, mem = self.storage.sample(
                self.batch_size_mem or strategy.mb_n_current, device=strategy.device
            )
        return mem

    def replay(self, strategy, mem: Dict[str, torch.Tensor]) -> None:
        """How a memory batch enters the step; default: append the stored clips (ER)."""
        strategy.append_memory(self, {k: mem[k] for k in CLIP_FIELDS})

    def insert_fields(self, strategy) -> Dict[str, torch.Tensor]:
        """What the current rows offer to the memory: the clips plus :attr:`MEMORY_FIELDS`."""
        return strategy.current_clips()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"storage": self.storage.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.storage.load_state_dict(state["storage"])
