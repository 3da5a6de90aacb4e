"""Avalanche's distillation plugins on self-supervised audio-video pre-training: LwF, LFL, feature distillation.

All three keep a frozen copy of the model from the end of the previous experience (the teacher,
a plugin attribute outside the model and the optimizer) and add a term pulling the current
model's output toward the teacher's on the same clips. Avalanche's versions distil class logits
(LwF) or ``model.get_features`` / ``model.features`` (LFL, feature distillation). Ours distil the
**pooled unimodal embeddings**, the model's output in the sense DER++ stores as "logits".

Which view. The training forward masks 80% of the patches at random, so a teacher could not see
the same input as the student's training forward. Both models therefore embed the **unmasked**
clips (:meth:`~avalanche_av.models.AVMAE.embed`: mean-pooled, L2-normalised, the retrieval
embeddings), and the student's embeddings keep their graph. This is one extra unmasked
encoder pass with gradients per step, as Avalanche's LFL also runs its own feature pass.
The unit-norm embeddings are rescaled by ``√D`` (:func:`distillation_features`) so that each
coordinate has unit mean square, the scale of the LayerNorm'd tokens they are pooled from:
then an MSE equals ``2 (1 - cos)`` whatever the width, and softmax temperatures mean what they
mean for logits. The rows distilled are every clip row of the minibatch (current clips and
clips replayed by another plugin), as Avalanche distils on ``mb_x``.

See ``docs/baselines_avalanche.md``.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from avalanche.training.plugins import FeatureDistillationPlugin, LFLPlugin, LwFPlugin

from ..template import require_av_template

__all__ = ["distillation_features", "SSLLwFPlugin", "SSLLFLPlugin", "SSLFeatureDistillationPlugin"]


def distillation_features(model: torch.nn.Module, audio: torch.Tensor, video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unmasked pooled embeddings scaled to unit mean square per coordinate.

    Args:
        model: an :class:`~avalanche_av.models.AVMAE`.
        audio: ``(B, T, F)`` float32 fbank. video: ``(B, n, 3, H, W)`` normalised frames.

    Returns:
        ``(f_a, f_v)``, each ``(B, D)`` with ``‖f‖ = √D``, in float32; with the graph of ``model``
        unless called under ``no_grad``.
    """
    e_a, e_v = model.embed(audio, video)
    scale = math.sqrt(e_a.shape[-1])
    return e_a.float() * scale, e_v.float() * scale


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _check_weight(value, option: str, who: str, allow_list: bool = True) -> None:
    values = value if (allow_list and isinstance(value, (list, tuple))) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values):
        raise ValueError(f"{who}: {option} must be a number >= 0{' (or a non-empty list of them)' if allow_list else ''}, got {value!r}")


def _weight_for(value, exp: int) -> float:
    """Avalanche's per-experience schedule: a list gives one value per experience (the last repeats)."""
    if isinstance(value, (list, tuple)):
        return value[min(exp, len(value) - 1)]
    return value


class _TeacherState:
    """Checkpoint state of a frozen teacher: its ``state_dict``, rebuilt on the strategy's model."""

    @staticmethod
    def save(teacher: Optional[torch.nn.Module]) -> Optional[dict]:
        return None if teacher is None else {k: v.detach().clone() for k, v in teacher.state_dict().items()}

    @staticmethod
    def restore(strategy, state: Optional[dict]) -> Optional[torch.nn.Module]:
        if state is None:
            return None
        teacher = _frozen_copy(strategy.model)
        teacher.load_state_dict(state)
        return teacher


class _FrozenTeacher:
    """A plugin whose teacher is ``self.prev_model``, frozen after every experience and kept in
    checkpoints as a state dict (rebuilt on the strategy's model at the next ``before_training``).
    Listed first among the bases, so it replaces Avalanche's own ``after_training_exp``."""

    prev_model: Optional[torch.nn.Module]
    _pending_teacher: Optional[dict] = None

    def _restore_teacher(self, strategy) -> None:
        if self._pending_teacher is not None:
            self.prev_model = _TeacherState.restore(strategy, self._pending_teacher)
            self._pending_teacher = None

    def after_training_exp(self, strategy, **kwargs):
        self.prev_model = _frozen_copy(strategy.model)

    def state_dict(self) -> dict:
        return {"teacher": _TeacherState.save(self.prev_model) if self.prev_model is not None else self._pending_teacher}

    def load_state_dict(self, state: dict) -> None:
        self.prev_model = None
        self._pending_teacher = state["teacher"]


class SSLLwFPlugin(LwFPlugin):
    """Avalanche's Learning without Forgetting (Li & Hoiem, 2017), distilling pooled embeddings.

    LwF adds ``alpha · KL(softmax(y_old / T) ‖ softmax(y / T))`` between the previous model's
    outputs ``y_old`` and the current model's ``y`` on the current inputs; Avalanche computes it
    with ``LearningWithoutForgetting._distillation_loss``, which is used here unchanged.

    Adapted parts. The outputs ``y`` are the pooled embeddings (:func:`distillation_features`,
    ``(B, D)`` per modality) instead of class logits, every embedding coordinate playing the role
    of a class unit, and the loss is the sum over audio and video. Avalanche's LwF restricts the
    distillation to the units of classes seen so far (from the experiences' targets); embeddings
    have no classes, so all ``D`` coordinates are distilled. The teacher is saved at the end of
    each experience without reading targets or task labels.

    Args:
        alpha: distillation weight ``>= 0``, or one per experience (Avalanche's default 1.0; the
            paper's Table 5 has no LwF row).
        temperature: softmax temperature ``> 0`` (Avalanche's default 2.0).
    """

    def __init__(self, alpha: Union[float, Sequence[float]] = 1.0, temperature: float = 2.0):
        who = type(self).__name__
        _check_weight(alpha, "alpha", who)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"{who}: temperature must be > 0, got {temperature!r}")
        super().__init__(alpha=alpha, temperature=temperature)
        self._pending_teacher: Optional[dict] = None
        #: the last distillation term added to the loss (a detached tensor), or None
        self.last_penalty: Optional[torch.Tensor] = None

    @property
    def prev_model(self) -> Optional[torch.nn.Module]:
        """The frozen teacher (Avalanche keeps it in ``self.lwf.prev_model``)."""
        return self.lwf.prev_model

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        if self._pending_teacher is not None:
            self.lwf.prev_model = _TeacherState.restore(strategy, self._pending_teacher)
            self._pending_teacher = None
        super().before_training(strategy, **kwargs)

    def distillation_loss(self, model: torch.nn.Module, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """``KD(student, teacher)`` summed over audio and video, unweighted; ``()``. 0 without a teacher."""
        teacher = self.lwf.prev_model
        if teacher is None:
            return torch.zeros((), device=audio.device)
        with torch.no_grad():
            t_a, t_v = distillation_features(teacher, audio, video)
        s_a, s_v = distillation_features(model, audio, video)
        units = list(range(s_a.shape[-1]))
        return self.lwf._distillation_loss(s_a, t_a, units) + self.lwf._distillation_loss(s_v, t_v, units)

    def before_backward(self, strategy, **kwargs):
        if self.lwf.prev_model is None:
            return
        alpha = _weight_for(self.lwf.alpha, self.lwf.expcount)
        with strategy.autocast():
            loss = alpha * self.distillation_loss(strategy.model, strategy.mb_audio, strategy.mb_video)
        self.last_penalty = loss.detach()
        strategy.loss = strategy.loss + loss

    def after_training_exp(self, strategy, **kwargs):
        self.lwf.expcount += 1
        self.lwf.prev_model = _frozen_copy(strategy.model)

    def state_dict(self) -> dict:
        teacher = self.lwf.prev_model
        return {"expcount": int(self.lwf.expcount), "teacher": _TeacherState.save(teacher)
                if teacher is not None else self._pending_teacher}

    def load_state_dict(self, state: dict) -> None:
        self.lwf.expcount = int(state["expcount"])
        self.lwf.prev_model = None
        self._pending_teacher = state["teacher"]


class SSLLFLPlugin(_FrozenTeacher, LFLPlugin):
    """Avalanche's Less-Forgetful Learning (Jung et al., 2016) on pooled embeddings.

    LFL adds ``lambda_e · MSE(f, f_old)`` between the current and previous model's features of the
    current inputs (Avalanche's ``_euclidean_loss``, used unchanged).

    Adapted parts. :meth:`compute_features` returns ``[f_a, f_v]`` ``(B, 2D)``, the two pooled
    embeddings of :func:`distillation_features`, instead of ``model.get_features(x)``, so the
    penalty is ``lambda_e · (2 - cos(a) - cos(v))`` averaged over rows. It leaves the model's
    train/eval mode as it found it (Avalanche's switches the model to eval). At the end of an
    experience the teacher is saved; Avalanche's LFL also freezes the model's last linear layer
    (a classifier): our model has none, so nothing is frozen. ``before_training`` checks the
    template instead of ``avalanche.models.BaseModel``.

    Args:
        lambda_e: penalty weight ``>= 0``, or one per experience. Default 1.0: Avalanche has no
            default and the paper's Table 5 has no LFL row.
    """

    def __init__(self, lambda_e: Union[float, Sequence[float]] = 1.0):
        _check_weight(lambda_e, "lambda_e", type(self).__name__)
        super().__init__(lambda_e)
        self._pending_teacher: Optional[dict] = None
        self.last_penalty: Optional[torch.Tensor] = None

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        self._restore_teacher(strategy)

    def compute_features(self, model, x):
        """``x = (audio (B, T, F), video (B, n, 3, H, W))`` -> student and teacher features ``(B, 2D)``."""
        audio, video = x
        with torch.no_grad():
            prev = torch.cat(distillation_features(self.prev_model, audio, video), dim=1)
        cur = torch.cat(distillation_features(model, audio, video), dim=1)
        return cur, prev

    def distillation_loss(self, model: torch.nn.Module, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """The unweighted Euclidean term ``MSE(f, f_old)``; ``()``. 0 without a teacher."""
        if self.prev_model is None:
            return torch.zeros((), device=audio.device)
        cur, prev = self.compute_features(model, (audio, video))
        return self._euclidean_loss(cur, prev)

    def before_backward(self, strategy, **kwargs):
        if self.prev_model is None:
            return
        lambda_e = _weight_for(self.lambda_e, strategy.clock.train_exp_counter)
        with strategy.autocast():
            loss = self.penalty((strategy.mb_audio, strategy.mb_video), strategy.model, lambda_e)
        self.last_penalty = loss.detach()
        strategy.loss = strategy.loss + loss



class SSLFeatureDistillationPlugin(_FrozenTeacher, FeatureDistillationPlugin):
    """Avalanche's feature distillation (cosine or MSE to the previous model's features) on pooled embeddings.

    Adapted part: :meth:`before_backward` reads the features from :func:`distillation_features`
    (audio and video, each ``(B, D)``) instead of ``model.features`` after an
    ``avalanche_forward`` with task labels, and sums the term over the two modalities:
    ``alpha · (1 - mean cos)`` per modality in ``'cosine'`` mode, ``alpha · MSE`` in ``'mse'``
    mode (Avalanche's ``'mse'`` branch passes an argument ``F.mse_loss`` does not take; ours is a
    plain MSE). The teacher is saved after every experience.

    Args:
        alpha: distillation weight ``>= 0``, or one per experience (Avalanche's default 1.0).
        mode: ``'cosine'`` (Avalanche's default) or ``'mse'``.
    """

    def __init__(self, alpha: Union[float, Sequence[float]] = 1.0, mode: str = "cosine"):
        who = type(self).__name__
        _check_weight(alpha, "alpha", who)
        if mode not in ("cosine", "mse"):
            raise ValueError(f"{who}: mode must be 'cosine' or 'mse', got {mode!r}")
        super().__init__(alpha=alpha, mode=mode)
        self._pending_teacher: Optional[dict] = None
        self.last_penalty: Optional[torch.Tensor] = None

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        self._restore_teacher(strategy)
        super().before_training(strategy, **kwargs)

    def distillation_loss(self, model: torch.nn.Module, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """The unweighted term summed over audio and video; ``()``. 0 without a teacher."""
        if self.prev_model is None:
            return torch.zeros((), device=audio.device)
        with torch.no_grad():
            old = distillation_features(self.prev_model, audio, video)
        new = distillation_features(model, audio, video)
        if self.mode == "cosine":
            return sum(1 - F.cosine_similarity(n, o, dim=1).mean() for n, o in zip(new, old))
        return sum(F.mse_loss(n, o) for n, o in zip(new, old))

    def before_backward(self, strategy, **kwargs):
        if self.prev_model is None:
            return
        alpha = _weight_for(self.alpha, strategy.clock.train_exp_counter)
        with strategy.autocast():
            loss = alpha * self.distillation_loss(strategy.model, strategy.mb_audio, strategy.mb_video)
        self.last_penalty = loss.detach()
        strategy.loss = strategy.loss + loss

