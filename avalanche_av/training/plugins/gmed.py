"""GMED: gradient-based editing of memory examples, adapted to self-supervised audio-video.

GMED (Jin et al., NeurIPS 2021, "Gradient-based Editing of Memory Examples for Online Task-free
Continual Learning") is one of the STELLA paper's baselines (Sec. 5.1 and Appendix A; Table 5:
stride α = 0.1, regularisation β = 0.05 on Continual-VS). It makes stored examples "harder" for
the coming update before replaying them. Each training iteration:

1. draw a memory batch ``x_m`` (``batch_size_mem`` clips) from the online reservoir, as ER;
2. take a *virtual* SGD step on the current batch, ``θ' = θ − η·∇θ ℓ(current; θ)``, with the
   optimizer's current learning rate (:mod:`avalanche_av.training.virtual_step`; the real model
   and optimizer are never touched);
3. edit the memory inputs by one gradient-ascent step on GMED's objective (Jin et al., Eq. 3)::

       J(x) = Σ_i [ ℓ_i(x; θ') − ℓ_i(x; θ) ] − β · Σ_i ℓ_i(x; θ)
       x ← x + α · ∇_x J(x)

   the first term is the loss increase the update causes on the memory sample (its
   "interference"); the second keeps the edited sample from simply becoming a high-loss outlier.
   ``ℓ_i`` is our per-sample SSL loss (MAE reconstruction + λ·InfoNCE), and the two forwards
   on the memory batch share one set of random masks so that the difference measures the
   update only;
4. write the edited clips back into the memory (``storage.update_fields``), then replay them as
   ER does (appended to the minibatch; MAE + InfoNCE on ``[current; memory]``).

**Input space.** The gradient is taken, and the step made, in the space the model sees:
the fbank as stored (already mean/std-normalised) and the ImageNet-normalised frames. The memory
stays compact, so the edits are mapped back and quantised: frames to pixels
(``x·std + mean``), clamped to ``[0, 1]`` and rounded to uint8 levels; the fbank clamped to the
finite fp16 range and rounded to fp16. The replayed rows are exactly these quantised clips, i.e.
what the memory now holds. With the default nearest rounding, an edit smaller than half a
quantisation step (half a pixel level; 4.9e-4 for fbank values in ``[1, 2)``) leaves the stored
value unchanged; ``rounding='stochastic'`` keeps such edits in expectation
(``docs/baselines_replay.md`` measures both). A sample whose edit is not finite keeps its
stored clip.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional

import torch
from torch.profiler import record_function

from ...models.inputs import IMAGENET_MEAN, IMAGENET_STD, prepare_audio, prepare_video, to_uint8_frames
from ..storage_policy import CLIP_FIELDS, OnlineReservoirBuffer
from ..virtual_step import check_virtual_lr, forward_with, masking_generator, next_seed, virtual_sgd_step
from .memory import OnlineMemoryPlugin

__all__ = ["GMEDPlugin", "gmed_edit_gradients", "to_compact_clip", "ROUNDINGS"]

_FP16_MAX = float(torch.finfo(torch.float16).max)


def gmed_edit_gradients(
    model: torch.nn.Module,
    theta_after: Dict[str, torch.Tensor],
    audio: torch.Tensor,
    video: torch.Tensor,
    reg: float,
    seed: int,
    autocast=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``∇_x J`` for GMED's editing objective on a memory batch (see the module docstring).

    Args:
        model: the current model (parameters ``θ``; only read).
        theta_after: ``θ'`` from :func:`~avalanche_av.training.virtual_step.virtual_sgd_step`.
        audio: ``(M, T, F)`` float32 fbank; video: ``(M, n, 3, H, W)`` normalised frames.
        reg: ``β``.
        seed: masking seed shared by the two forwards.
        autocast: optional context factory for the forwards.

    Returns:
        ``(grad_audio (M, T, F), grad_video (M, n, 3, H, W), increase (M,))``: the gradients of
        ``J`` with respect to the inputs, and each sample's loss increase ``ℓ_i(θ') − ℓ_i(θ)``
        (detached, float32).
    """
    xa = audio.detach().float().requires_grad_(True)
    xv = video.detach().float().requires_grad_(True)
    ctx = autocast() if autocast is not None else contextlib.nullcontext()
    with torch.enable_grad():
        with ctx:
            # Detached parameters in both forwards: the backward reaches the inputs only.
            before = forward_with(model, None, xa, xv, masking_generator(seed)).per_sample_loss.float()
            after = forward_with(model, theta_after, xa, xv, masking_generator(seed)).per_sample_loss.float()
        objective = (after - before).sum() - reg * before.sum()
        ga, gv = torch.autograd.grad(objective, (xa, xv))
    return ga, gv, (after - before).detach()


#: How edited clips are rounded back to the memory's fp16 / uint8 storage.
ROUNDINGS = ("nearest", "stochastic")


def _stochastic_fp16(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Round float32 ``x`` to one of its two fp16 neighbours, the farther one with probability
    proportional to the distance (so ``E[result] = x``); ``u`` uniform in ``[0, 1)``, same shape."""
    near = x.to(torch.float16)
    nf = near.float()
    toward = torch.where(nf > x, float("-inf"), float("inf")).to(torch.float16)
    other = torch.nextafter(near, toward)
    gap = (other.float() - nf).abs()
    p_other = torch.where(gap > 0, (x - nf).abs() / gap, torch.zeros_like(gap))
    return torch.where(u < p_other, other, near)


def to_compact_clip(
    audio: torch.Tensor,
    video: torch.Tensor,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map model-space clips back to the memory's storage form.

    Args:
        audio: ``(M, T, F)`` float fbank; video: ``(M, n, 3, H, W)`` ImageNet-normalised frames.
        rounding: ``'nearest'`` rounds to the nearest fp16 value / pixel level. ``'stochastic'``
            rounds up or down with probabilities that make the stored value equal the edited one
            in expectation, so edits smaller than one quantisation step are kept on average
            instead of being lost.
        generator: draws of the stochastic rounding (a generator on the tensors' device).

    Returns:
        ``(audio (M, T, F) fp16, video (M, n, 3, H, W) uint8)``: fbank clamped to the finite fp16
        range, frames de-normalised and clamped to ``[0, 1]`` (``[0, 255]`` levels), both rounded.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    a = audio.float().clamp(-_FP16_MAX, _FP16_MAX)
    mean = torch.tensor(IMAGENET_MEAN, device=video.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=video.device).view(1, 1, 3, 1, 1)
    pix = video.float() * std + mean
    if rounding == "nearest":
        return a.to(torch.float16), to_uint8_frames(pix)
    ua = torch.rand(a.shape, generator=generator, device=a.device)
    uv = torch.rand(pix.shape, generator=generator, device=pix.device)
    levels = pix.clamp(0, 1) * 255.0
    low = levels.floor()
    v8 = (low + (uv < levels - low).float()).clamp(0, 255).to(torch.uint8)
    return _stochastic_fp16(a, ua), v8


class GMEDPlugin(OnlineMemoryPlugin):
    """GMED on the shared online memory (task-free reservoir updated every iteration).

    Stores the clip only, as ER (65,552 bytes per sample on ``tiny``); edits overwrite it.

    Args:
        mem_size, batch_size_mem, storage_policy, memory_device, seed: as
            :class:`~avalanche_av.training.plugins.OnlineMemoryPlugin`. ``seed`` also seeds the
            masking generator of the editing forwards.
        edit_stride: ``α``, the editing step size (paper Table 5: 0.1). ``0`` disables editing
            (ER with GMED's extra cost).
        edit_reg: ``β``, the weight of the pre-update loss subtracted from the editing objective
            (paper Table 5: 0.05 on Continual-VS, 0.01 on Continual-AS).
        virtual_lr: learning rate of the virtual SGD step; ``None`` (default) uses each parameter
            group's current ``lr``. An option beyond the paper (see ``MIRPlugin``).
        rounding: how edited clips are quantised back into the memory: ``'nearest'`` (default)
            or ``'stochastic'`` (unbiased; keeps sub-quantum edits on average). An option beyond
            the paper, whose memory held float inputs (see :func:`to_compact_clip`).

    Attributes:
        last_increase: ``(M,)`` loss increase of the memory batch under the virtual step, before
            the edit.
        last_edit_norm: ``(M,)`` L2 norm of the model-space edit ``α·∇_x J`` per sample
            (audio and video together), before quantisation.
        last_changed: ``(M,)`` bool, whether the stored clip changed after quantisation.
        last_changed_audio, last_changed_video: ``(M,)`` fraction of each clip's stored fbank
            values / pixel values that the edit changed.

    Raises:
        ValueError: a bad ``edit_stride``, ``edit_reg``, ``virtual_lr`` or ``rounding``.
    """

    MEMORY_FIELDS: Dict[str, torch.dtype] = {}

    def __init__(
        self,
        mem_size: int = 2000,
        batch_size_mem: Optional[int] = None,
        edit_stride: float = 0.1,
        edit_reg: float = 0.05,
        virtual_lr: Optional[float] = None,
        rounding: str = "nearest",
        storage_policy: Optional[OnlineReservoirBuffer] = None,
        memory_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__(mem_size, batch_size_mem, storage_policy, memory_device, seed)
        for name, value in (("edit_stride", edit_stride), ("edit_reg", edit_reg)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"GMEDPlugin: {name} must be a finite float >= 0, got {value!r}")
        self.edit_stride = float(edit_stride)
        self.edit_reg = float(edit_reg)
        self.virtual_lr = check_virtual_lr(virtual_lr, "GMEDPlugin")
        if rounding not in ROUNDINGS:
            raise ValueError(f"GMEDPlugin: rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding
        #: the masking generator's seed source; its state is checkpointed
        self.mask_generator = torch.Generator(device="cpu").manual_seed(seed)
        self.last_increase: Optional[torch.Tensor] = None
        self.last_edit_norm: Optional[torch.Tensor] = None
        self.last_changed: Optional[torch.Tensor] = None
        self.last_changed_audio: Optional[torch.Tensor] = None
        self.last_changed_video: Optional[torch.Tensor] = None

    def replay(self, strategy, mem: Dict[str, torch.Tensor]) -> None:
        """Edit the drawn memory clips, write them back, and append the edited clips (ER)."""
        if self.edit_stride > 0:
            with record_function("gmed.edit"):
                mem = self.edit_memory(strategy, mem)
            self.mem_batch = mem
        strategy.append_memory(self, {k: mem[k] for k in CLIP_FIELDS})

    def edit_memory(self, strategy, mem: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One GMED edit of the memory batch ``mem`` (slots ``self.mem_slots``).

        Returns:
            ``mem`` with ``audio`` (fp16) and ``video`` (uint8) replaced by the edited, quantised
            clips, which are also written into the memory.
        """
        n = strategy.mb_n_current
        model = strategy.model
        seed = next_seed(self.mask_generator)
        theta = virtual_sgd_step(
            model, strategy.optimizer, strategy.mb_audio[:n], strategy.mb_video[:n],
            generator=masking_generator(seed), lr=self.virtual_lr, autocast=strategy.autocast,
        )
        audio, video = prepare_audio(mem["audio"]), prepare_video(mem["video"])
        ga, gv, increase = gmed_edit_gradients(
            model, theta, audio, video, self.edit_reg, seed + 1, autocast=strategy.autocast
        )
        da, dv = self.edit_stride * ga, self.edit_stride * gv
        with torch.no_grad():
            # A non-finite edit (overflowing loss, NaN input) keeps that sample's stored clip.
            ok = torch.isfinite(da).flatten(1).all(1) & torch.isfinite(dv).flatten(1).all(1)
            gen = None
            if self.rounding == "stochastic":
                gen = torch.Generator(device=audio.device).manual_seed(seed + 2)
            a16, v8 = to_compact_clip(audio + da, video + dv, self.rounding, gen)
            a16 = torch.where(ok.view(-1, 1, 1), a16, mem["audio"].to(torch.float16))
            v8 = torch.where(ok.view(-1, 1, 1, 1, 1), v8, to_uint8_frames(mem["video"]))
            diff_a = (a16 != mem["audio"].to(torch.float16)).flatten(1)
            diff_v = (v8 != to_uint8_frames(mem["video"])).flatten(1)
            self.last_increase = increase
            self.last_edit_norm = torch.sqrt(da.flatten(1).pow(2).sum(1) + dv.flatten(1).pow(2).sum(1))
            self.last_changed = diff_a.any(1) | diff_v.any(1)
            self.last_changed_audio = diff_a.float().mean(1)
            self.last_changed_video = diff_v.float().mean(1)
        self.storage.update_fields(self.mem_slots, {"audio": a16, "video": v8})
        return {**mem, "audio": a16, "video": v8}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask_generator": self.mask_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mask_generator.set_state(state["mask_generator"])
