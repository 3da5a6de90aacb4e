"""Virtual ("look-ahead") SGD steps for methods that ask what one update would do.

MIR (Aljundi et al., 2019) and GMED (Jin et al., 2021), both baselines of the STELLA paper
(Sec. 5.1, Appendix A), need the model *after* a hypothetical update on the current batch,
``θ' = θ − η·∇θ ℓ(current; θ)``, without changing the real model. This module computes ``θ'``
as a dictionary of tensors and evaluates the model under it with
``torch.func.functional_call``, so

* the real parameters are never written (they stay bit-identical),
* ``.grad`` of the real parameters is never touched (``torch.autograd.grad``, not ``backward``),
* the optimizer state is never read or written beyond each parameter group's current ``lr``.

The look-ahead step is plain SGD (no momentum, no weight decay) with each parameter group's
current learning rate, whatever the real optimizer is (``docs/baselines_replay.md``).

Comparing losses before and after the virtual step is only meaningful on the same random masks:
:func:`masking_generator` gives a CPU generator, and calling it twice with the same seed gives
the two forwards identical masks.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Dict, Optional

import torch
from torch.func import functional_call

__all__ = [
    "optimizer_lrs",
    "virtual_sgd_params",
    "virtual_sgd_step",
    "forward_with",
    "masking_generator",
    "next_seed",
    "check_virtual_lr",
]


def masking_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed``: two forwards given generators made with the
    same seed draw the same MAE masks (``AVMAE`` draws its masking noise on the generator's device)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def check_virtual_lr(virtual_lr, who: str) -> Optional[float]:
    """Validate a plugin's ``virtual_lr`` option: ``None`` (use the optimizer's) or a finite float > 0."""
    if virtual_lr is None:
        return None
    if isinstance(virtual_lr, bool) or not isinstance(virtual_lr, (int, float)) or not (
        math.isfinite(virtual_lr) and virtual_lr > 0
    ):
        raise ValueError(f"{who}: virtual_lr must be a finite float > 0 or None (the optimizer's lr), got {virtual_lr!r}")
    return float(virtual_lr)


def next_seed(generator: torch.Generator) -> int:
    """Draw the seed of one step's masking generators from a plugin's own generator (whose state
    goes into the plugin's checkpoint, so a resumed run draws the same masks)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def optimizer_lrs(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  lr: Optional[float] = None) -> Dict[str, float]:
    """Learning rate of every trainable parameter of ``model``, by parameter name.

    Args:
        model: the module whose parameters the virtual step moves.
        optimizer: the real optimizer; each parameter gets its group's current ``lr``
            (so LR schedulers are followed). Parameters the optimizer does not hold, or that do
            not require grad, are left out: the virtual step does not move them.
        lr: one learning rate for every trainable parameter instead (must be > 0).

    Returns:
        ``{name: lr}`` for the parameters to step.
    """
    if lr is not None and not lr > 0:
        raise ValueError(f"virtual step lr must be > 0, got {lr}")
    group_lr = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            group_lr[id(p)] = float(group["lr"])
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) not in group_lr:
            continue
        out[name] = float(lr) if lr is not None else group_lr[id(p)]
    return out


def virtual_sgd_params(model: torch.nn.Module, loss: torch.Tensor, lrs: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """``θ' = θ − η·∇θ loss`` for the parameters named in ``lrs``, as detached tensors.

    ``loss`` must have been computed by ``model`` with its real parameters. Gradients come from
    ``torch.autograd.grad``, so no ``.grad`` is written. A parameter ``loss`` does not depend on
    keeps its value.

    Returns:
        ``{name: θ'_name}`` (same dtype and device as the parameter); feed it to :func:`forward_with`.
    """
    names = list(lrs)
    params = [model.get_parameter(n) for n in names]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p, g in zip(names, params, grads):
            if g is None:
                out[name] = p.detach()
            else:
                out[name] = (p.detach() - lrs[name] * g.to(p.dtype)).detach()
    return out


def virtual_sgd_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    audio: torch.Tensor,
    video: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    lr: Optional[float] = None,
    autocast: Optional[Callable[[], ContextManager]] = None,
) -> Dict[str, torch.Tensor]:
    """Parameters after one virtual SGD step on the SSL loss of ``(audio, video)``.

    Args:
        model: an ``AVMAE`` (or a module with its ``forward(audio, video, generator=...)``).
        optimizer: gives the per-group learning rates (see :func:`optimizer_lrs`); never stepped.
        audio: ``(B, T, F)`` float32 fbank; video: ``(B, n, 3, H, W)`` normalised frames.
        generator: masking generator of this forward.
        lr: one learning rate instead of the optimizer's.
        autocast: a context factory (``strategy.autocast``) for the forward.

    Returns:
        ``{name: θ'}`` for every parameter that the optimizer holds and that requires grad.
    """
    lrs = optimizer_lrs(model, optimizer, lr)
    ctx = autocast() if autocast is not None else contextlib.nullcontext()
    with torch.enable_grad():
        with ctx:
            loss = model(audio, video, generator=generator).loss
        return virtual_sgd_params(model, loss, lrs)


def forward_with(
    model: torch.nn.Module,
    params: Optional[Dict[str, torch.Tensor]],
    audio: torch.Tensor,
    video: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    detach_rest: bool = True,
):
    """``model(audio, video)`` evaluated with ``params`` replacing its parameters.

    Args:
        params: ``{name: tensor}`` (e.g. from :func:`virtual_sgd_params`); ``None`` evaluates the
            real parameters.
        detach_rest: substitute *detached* copies of the parameters ``params`` does not name
            (and of all of them when ``params`` is None), so a backward through the output reaches
            the inputs only and never builds parameter gradients.
        generator: masking generator (see :func:`masking_generator`).

    Buffers are passed as clones, so a module that updates buffers in its forward (running
    statistics) cannot change the real model either.

    Returns:
        The model's output (an ``AVMAEOutput`` for ``AVMAE``).
    """
    full: Dict[str, torch.Tensor] = {}
    if detach_rest:
        full.update({n: p.detach() for n, p in model.named_parameters()})
    if params:
        full.update(params)
    full.update({n: b.clone() for n, b in model.named_buffers()})
    return functional_call(model, full, (audio, video), {"generator": generator}, strict=False)
