"""The self-supervised audio-video pre-training template.

:class:`AVPretraining` is an Avalanche ``SupervisedTemplate`` whose "criterion" is the model's
own self-supervised objective L = ℓ_r + λ·ℓ_c (SPEC §2). Labels are never used for training;
task labels are not required. Plugins see the usual hooks plus a few extra attributes:

* ``strategy.mb_audio`` ``(B, T, F)`` float32 fbank, ``strategy.mb_video`` ``(B, n, 3, H, W)``
  ImageNet-normalised float32 (both computed from the compact ``mbatch`` on access),
  ``strategy.mb_y`` class targets (evaluation only), ``strategy.mb_clip_id``.
* ``strategy.mb_patches``: a plugin may set a :class:`~avalanche_av.models.inputs.PatchBatch` in
  ``before_forward``; the template then trains on those patch subsets (STELLA does this).
* ``strategy.mb_output``: the :class:`~avalanche_av.models.AVMAEOutput`; in evaluation it also
  carries ``emb_a_unmasked``/``emb_v_unmasked`` (retrieval embeddings).

Evaluation computes the loss deterministically (the masking draws from a generator re-seeded at
each evaluation experience) under ``no_grad``. On CUDA the forward runs under autocast
(bf16 when supported, else fp16 with a ``GradScaler``); nothing assumes CUDA.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from avalanche.core import BasePlugin
from avalanche.training.plugins.evaluation import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from ..models.inputs import PatchBatch, prepare_audio, prepare_video

__all__ = ["AVPretraining", "default_optimizer", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive training steps produced a NaN/Inf loss."""


def default_optimizer(model: torch.nn.Module, lr: float = 1e-4) -> torch.optim.Optimizer:
    """STELLA's optimizer (SPEC §3): Adam, betas (0.95, 0.999), weight decay 5e-7, constant lr."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=5e-7)


class _SSLCriterion:
    """Avalanche-compatible ``criterion(output, target)`` that returns the model's SSL loss.

    The target is ignored: the objective is self-supervised.
    """

    def __call__(self, output, target=None):  # noqa: D401
        return output.loss


class AVPretraining(SupervisedTemplate):
    """Continual self-supervised audio-video pre-training as an Avalanche strategy.

    Args:
        model: an :class:`~avalanche_av.models.AVMAE` (or any module with its interface).
        optimizer: defaults to :func:`default_optimizer` (Adam, lr 1e-4).
        train_mb_size, train_epochs, eval_mb_size, plugins, eval_every, peval_mode: as in Avalanche.
        evaluator: an ``EvaluationPlugin`` or a factory; default
            :func:`avalanche_av.evaluation.av_evaluator` (loss + retrieval metrics, progress bars).
        device: ``'cpu'``, ``'cuda'``, a ``torch.device``; ``None`` picks CUDA when available.
        amp: ``'auto'`` (bf16 on CUDA when supported, else fp16; off on CPU), ``'bf16'``,
            ``'fp16'`` or ``None`` / ``'off'``.
        eval_seed: seed of the evaluation masking, so evaluation losses are reproducible.
        nan_policy: ``'skip'`` (drop a step whose loss is NaN/Inf, count it in
            ``skipped_steps``, and raise :class:`NonFiniteLossError` after
            ``max_consecutive_nonfinite`` in a row) or ``'raise'`` (raise at once).
        max_consecutive_nonfinite: see ``nan_policy``.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        train_mb_size: int = 32,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        plugins: Optional[Sequence[BasePlugin]] = None,
        evaluator: Union[EvaluationPlugin, Callable[[], EvaluationPlugin], None] = None,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        amp: Optional[str] = "auto",
        eval_seed: int = 0,
        nan_policy: str = "skip",
        max_consecutive_nonfinite: int = 20,
        **kwargs,
    ):
        if train_mb_size < 2:
            raise ValueError(f"train_mb_size must be >= 2 (the contrastive term needs negatives), got {train_mb_size}")
        if nan_policy not in ("skip", "raise"):
            raise ValueError(f"nan_policy must be 'skip' or 'raise', got {nan_policy!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if evaluator is None:
            from ..evaluation import av_evaluator

            evaluator = av_evaluator
        super().__init__(
            model=model,
            optimizer=optimizer if optimizer is not None else default_optimizer(model),
            criterion=_SSLCriterion(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size or train_mb_size,
            device=device,
            plugins=list(plugins or []),
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
            **kwargs,
        )
        self.amp_dtype = self._resolve_amp(amp, device)
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and device.type == "cuda" else None
        )
        self.eval_seed = eval_seed
        self.nan_policy = nan_policy
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.skipped_steps = 0
        self._consecutive_nonfinite = 0
        self._skip_update = False
        self._eval_generator: Optional[torch.Generator] = None
        self.mb_patches: Optional[PatchBatch] = None

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _resolve_amp(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
        allowed = ("auto", "bf16", "fp16", "off", None)
        if amp not in allowed:
            raise ValueError(f"amp must be one of {allowed}, got {amp!r}")
        if amp in (None, "off") or device.type != "cuda":
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def autocast(self):
        """Autocast context for the current device (a no-op on CPU or with AMP off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ minibatch views
    @property
    def mb_audio(self) -> torch.Tensor:
        """``(B, T, F)`` float32 fbank of the current minibatch."""
        return prepare_audio(self.mbatch[0])

    @property
    def mb_video(self) -> torch.Tensor:
        """``(B, n_frames, 3, H, W)`` ImageNet-normalised float32 frames."""
        return prepare_video(self.mbatch[1])

    @property
    def mb_x(self):
        return self.mb_audio, self.mb_video

    @property
    def mb_y(self) -> torch.Tensor:
        """``(B,)`` class targets; only evaluation metrics read them."""
        return self.mbatch[2]

    @property
    def mb_clip_id(self) -> torch.Tensor:
        return self.mbatch[3]

    def _unpack_minibatch(self):
        mbatch = self.mbatch
        if isinstance(mbatch, tuple):
            mbatch = list(mbatch)
            self.mbatch = mbatch
        if len(mbatch) < 5:
            raise ValueError(
                "an avalanche-av minibatch must be [audio, video, target, clip_id, ..., task_label]; "
                f"got {len(mbatch)} elements"
            )
        for i in range(len(mbatch)):
            mbatch[i] = mbatch[i].to(self.device, non_blocking=True)
        self.mb_patches = None

    # ------------------------------------------------------------------ forward / loss
    def forward(self):
        model = self.model
        gen = None if self.is_training else self._eval_generator
        with self.autocast():
            if self.mb_patches is not None:
                p = self.mb_patches
                out = model.forward_patches(
                    p.audio_patches, p.audio_idx, p.video_patches, p.video_idx, generator=gen
                )
            else:
                out = model(self.mb_audio, self.mb_video, generator=gen)
            if not self.is_training:
                ea, ev = model.embed(self.mb_audio, self.mb_video)
                out.emb_a_unmasked, out.emb_v_unmasked = ea.float(), ev.float()
        return out

    def criterion(self):
        return self.mb_output.loss

    def _before_eval_exp(self, **kwargs):
        # Re-seeded per experience: the evaluation loss of an experience never depends on
        # what was evaluated before it.
        self._eval_generator = torch.Generator(device="cpu").manual_seed(self.eval_seed)
        super()._before_eval_exp(**kwargs)

    # ------------------------------------------------------------------ backward / step
    def backward(self):
        self._skip_update = False
        if not torch.isfinite(self.loss.detach()).all():
            self.skipped_steps += 1
            self._consecutive_nonfinite += 1
            msg = (
                f"non-finite loss ({self.loss.detach().flatten()[0].item()}) at experience "
                f"{self.clock.train_exp_counter}, iteration {self.clock.train_exp_iterations}"
            )
            if self.nan_policy == "raise" or self._consecutive_nonfinite >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    msg + f"; {self._consecutive_nonfinite} consecutive non-finite steps. Check the inputs "
                    "(NaN fbank/frames), lower the learning rate, or disable AMP."
                )
            warnings.warn(msg + "; step skipped (nan_policy='skip')")
            self._skip_update = True
            self.optimizer.zero_grad(set_to_none=True)
            return
        self._consecutive_nonfinite = 0
        if self.scaler is not None:
            self.scaler.scale(self.loss).backward(retain_graph=self.retain_graph)
        else:
            self.loss.backward(retain_graph=self.retain_graph)

    def optimizer_step(self):
        if self._skip_update:
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
