"""Exponential-moving-average (EMA) teachers for CLS-ER and ESMER.

CLS-ER (Arani et al., ICLR 2022, Sec. 3 "Stochastic update") keeps a *plastic* and a *stable*
copy of the working model; ESMER (Sarfraz et al., ICLR 2023, Sec. 3.2) keeps one *semantic
memory*. Each is an EMA of the working weights θ_W that is updated **stochastically**:

    after every optimizer step t = 1, 2, ...:
        with probability r (``update_rate``):   θ_E ← a_t · θ_E + (1 − a_t) · θ_W

with ``a_t = min(1 − 1/(t + 1), α)`` (``warmup=True``, the default) or ``a_t = α`` (``warmup=False``),
where α is ``decay``. ``t`` counts the training steps the EMA has seen (updated or not), so the
warm-up follows the stream, not the number of updates. The warm-up is the convention of the
CLS-ER and ESMER reference implementations (the mean-teacher ramp of Tarvainen & Valpola, 2017):
early on the EMA is close to a uniform average of the iterates seen so far instead of staying
at the random initialisation for ~1/(1 − α) updates, which matters on short streams. With
``warmup=False`` the update is the papers' equation with a constant α. Only parameters are
averaged; buffers (non-learned state) are copied from the working model at each update.

Design (``docs/baselines_replay.md``):

* the EMA model lives **outside** the working model and **outside** the optimizer (a plugin
  attribute): Avalanche adds every parameter of ``strategy.model`` missing from the optimizer at
  each experience, so an EMA registered as a sub-module would be trained;
* it is created lazily from the working model (:meth:`EMAModel.attach`) and can be loaded from
  a checkpoint before that (the state waits until the model exists);
* its random update draws come from its own generator, saved in :meth:`EMAModel.state_dict`,
  so checkpoint resume reproduces the update pattern exactly;
* :meth:`EMAModel.swap_in` / :meth:`EMAModel.restore` evaluate the working model *with the EMA
  weights* (copied in place, so every reference to the model and the optimizer's parameter
  identities stay valid) and put the working weights back bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, Optional

import torch
from torch import nn

__all__ = ["EMAModel", "check_unit_interval"]


def check_unit_interval(value, name: str, *, low_open: bool = False, high_open: bool = False) -> float:
    """Validate that ``value`` is a real number in [0, 1] (ends opened as asked); return it as float.

    Raises:
        ValueError: naming ``name`` and the allowed interval.
    """
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {lo}0, 1{hi}, got {value!r}")
    return float(value)


class EMAModel:
    """A stochastically updated EMA copy of a model (CLS-ER's plastic/stable models, ESMER's
    semantic memory).

    Args:
        decay: α in [0, 1): the weight of the old EMA value (0.999 in both papers).
        update_rate: r in (0, 1]: the probability of an update after each training step.
        warmup: use ``a_t = min(1 − 1/(t+1), α)`` (reference-code convention) instead of α.
        seed: seed of the generator drawing the update decisions.
        name: used in error messages (e.g. ``"plastic"``).

    Raises:
        ValueError: ``decay`` or ``update_rate`` out of range (the message names them).
    """

    def __init__(self, decay: float, update_rate: float = 1.0, warmup: bool = True, seed: int = 0,
                 name: str = "ema"):
        self.decay = check_unit_interval(decay, f"{name} decay", high_open=True)
        self.update_rate = check_unit_interval(update_rate, f"{name} update_rate", low_open=True)
        self.warmup = bool(warmup)
        self.name = name
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        #: the EMA network (``None`` until :meth:`attach`); no parameter requires grad
        self.model: Optional[nn.Module] = None
        #: training steps seen (t above), and EMA updates applied
        self.steps = 0
        self.updates = 0
        self._pending: Optional[dict] = None
        self._backup: Optional[Dict[str, torch.Tensor]] = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def attach(self, model: nn.Module) -> nn.Module:
        """Create the EMA as a copy of ``model`` (once), or move it to ``model``'s device.

        A state loaded before the EMA existed (checkpoint resume) is applied here.
        """
        if self.model is None:
            ema = copy.deepcopy(model)
            ema.requires_grad_(False)
            ema.eval()
            self.model = ema
            if self._pending is not None:
                self._load_model_state(self._pending)
                self._pending = None
        device = _device_of(model)
        if device is not None and _device_of(self.model) != device:
            self.model.to(device)
        return self.model

    def decay_at(self, step: int) -> float:
        """``a_t`` for training step ``t = step`` (>= 1)."""
        if not self.warmup:
            return self.decay
        return min(1.0 - 1.0 / (step + 1), self.decay)

    @torch.no_grad()
    def step(self, model: nn.Module) -> bool:
        """Count one training step and update with probability ``update_rate``; True if updated."""
        if self.model is None:
            raise RuntimeError(f"the {self.name} EMA model is not attached; call attach(model) first")
        self.steps += 1
        draw = torch.rand((), generator=self.generator)
        if float(draw) < self.update_rate:
            self.update(model)
            return True
        return False

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA update ``θ_E ← a_t θ_E + (1 − a_t) θ_W`` with ``t = self.steps``; buffers copied."""
        if self.model is None:
            raise RuntimeError(f"the {self.name} EMA model is not attached; call attach(model) first")
        ema_p, live_p = self._matched(self.model.named_parameters(), model.named_parameters(), "parameters")
        a = self.decay_at(max(self.steps, 1))
        if ema_p:
            # One fused kernel per list instead of a Python loop over ~100 tensors.
            torch._foreach_mul_(ema_p, a)
            torch._foreach_add_(ema_p, live_p, alpha=1.0 - a)
        ema_b, live_b = self._matched(self.model.named_buffers(), model.named_buffers(), "buffers")
        for eb, lb in zip(ema_b, live_b):
            eb.copy_(lb)
        self.updates += 1

    def _matched(self, ema_items: Iterator, live_items: Iterator, what: str):
        ema, live = dict(ema_items), dict(live_items)
        if ema.keys() != live.keys():
            diff = sorted(set(ema) ^ set(live))[:5]
            raise RuntimeError(f"the {self.name} EMA model and the working model have different {what}: {diff}")
        names = list(live)
        return [ema[n].data for n in names], [live[n].data for n in names]

    # ------------------------------------------------------------------ evaluation swap
    @torch.no_grad()
    def swap_in(self, model: nn.Module) -> None:
        """Copy the EMA weights into ``model`` in place, keeping a copy of ``model``'s own weights.

        Raises:
            RuntimeError: already swapped in (call :meth:`restore` first).
        """
        if self._backup is not None:
            raise RuntimeError(f"the {self.name} EMA weights are already swapped into the model")
        self.attach(model)
        self._backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.model.state_dict())

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put back the weights saved by :meth:`swap_in` (bit for bit); a no-op when none are saved."""
        if self._backup is None:
            return
        model.load_state_dict(self._backup)
        self._backup = None

    @property
    def swapped_in(self) -> bool:
        return self._backup is not None

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """``with ema.swapped(model): ...`` runs the block with the EMA weights in ``model``."""
        self.swap_in(model)
        try:
            yield model
        finally:
            self.restore(model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """EMA weights (or ``None`` before :meth:`attach`), counters and the generator state."""
        if self.model is not None:
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            weights = None if self._pending is None else self._pending.get("model")
        return {
            "model": weights,
            "steps": int(self.steps),
            "updates": int(self.updates),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])
        if state.get("model") is None:
            return
        if self.model is None:
            self._pending = {"model": state["model"]}
        else:
            self._load_model_state(state)

    @torch.no_grad()
    def _load_model_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])


def _device_of(model: nn.Module) -> Optional[torch.device]:
    for p in model.parameters():
        return p.device
    return None
