"""Avalanche's parameter regularisers on self-supervised audio-video pre-training: SI, MAS, RWalk.

Each class subclasses the Avalanche plugin of the same name and overrides only the part that
assumes a classifier; the penalty, the importance bookkeeping and the defaults stay Avalanche's.
What was adapted, per class (see also ``docs/baselines_avalanche.md``):

* :class:`SSLSynapticIntelligencePlugin`: nothing in SI needs labels (its importance is the path
  integral of the training loss's gradient). The subclass only guards the path integral against a
  step the template skipped (non-finite loss: gradients are ``None`` and the weights unchanged),
  where Avalanche's code would fail.
* :class:`SSLMASPlugin`: MAS's importance is the gradient of the squared L2 norm of the network's
  output; our output is the pair of pooled unimodal embeddings (``pooled_a``, ``pooled_v``, before
  normalisation: the "logits" DER++ stores), so the importance is
  ``mean_x |∂(‖z_a‖² + ‖z_v‖²)/∂θ|``.
* :class:`SSLRWalkPlugin`: RWalk's per-iteration gradient (for its Fisher and its path score) comes
  from the model's SSL loss on the current clips instead of ``criterion(model(x), y)``.

Every class calls ``require_av_template`` in ``before_training`` and has
``state_dict()``/``load_state_dict()`` so a resumed run keeps its anchors and importances.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from avalanche.training.plugins import MASPlugin, RWalkPlugin, SynapticIntelligencePlugin
from avalanche.training.utils import ParamData, copy_params_dict, zerolike_params_dict

from ..template import require_av_template
from .clip_batches import iter_clip_batches
from .param_data import param_dict_from_state, param_dict_state

__all__ = ["SSLSynapticIntelligencePlugin", "SSLMASPlugin", "SSLRWalkPlugin"]


def _check_nonneg(value: Any, option: str, who: str) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values):
        raise ValueError(f"{who}: {option} must be a number >= 0 (or a non-empty list of them), got {value!r}")


def _check_unit(value: Any, option: str, who: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{who}: {option} must be in [0, 1], got {value!r}")


class SSLSynapticIntelligencePlugin(SynapticIntelligencePlugin):
    """Avalanche's Synaptic Intelligence (Zenke et al., 2017) on our SSL loss.

    SI accumulates, per parameter, ``-Σ_t g_t · Δθ_t`` over the experience (the SSL loss's decrease
    attributed to that parameter), divides by ``(Δθ_exp)² + eps`` and penalises
    ``si_lambda/2 · Σ ω (θ - θ*)²`` in later experiences. All of it is Avalanche's, including its
    clamping of ω at 0.001 and its CPU copies of the weights at every iteration.

    Adapted parts.

    * Weight snapshots are copies. Avalanche snapshots the weights with
      ``param.detach().cpu().flatten()``, which on a CPU device is a *view* of the live parameter:
      the anchor ``θ*`` and the per-step snapshots then move with the weights, every ``Δθ`` is 0
      and the penalty is identically zero (on CUDA ``.cpu()`` happens to copy). Avalanche calls
      its snapshot function by class name, so the hooks that take snapshots
      (:meth:`before_training_exp`, :meth:`before_training_iteration`,
      :meth:`after_training_iteration`) are overridden to copy; the importance update at the end
      of an experience is Avalanche's.
    * :meth:`after_training_iteration` skips the path-integral update after a step the template
      dropped (``strategy.step_skipped``: the loss was not finite, the gradients are ``None`` and
      the weights did not move, so the update would add exactly zero) and treats a parameter
      without a gradient as having a zero gradient, where Avalanche's code would fail.

    Args:
        si_lambda: penalty weight ``>= 0``, or one per experience (the last one repeats).
            Default 1.0: neither the paper (no SI row in its Table 5) nor Avalanche gives one.
            With Adam most ω reach Avalanche's clamp (0.001), so the penalty is about
            ``si_lambda · 5e-4 · ‖θ - θ*‖²``; 1.0 puts it on the scale of MAS's default penalty.
        eps: damping ``> 0`` of the importance's denominator (Avalanche's default 1e-7).
        excluded_parameters: parameter-name patterns (``fnmatch``) that get no penalty.
        device: where the penalty is computed; ``'as_strategy'`` by default.
    """

    def __init__(
        self,
        si_lambda: Union[float, Sequence[float]] = 1.0,
        eps: float = 1e-7,
        excluded_parameters: Optional[Sequence[str]] = None,
        device: Any = "as_strategy",
    ):
        who = type(self).__name__
        _check_nonneg(si_lambda, "si_lambda", who)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{who}: eps must be > 0, got {eps!r}")
        super().__init__(si_lambda, eps=eps, excluded_parameters=excluded_parameters, device=device)

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        super().before_training(strategy, **kwargs)

    @torch.no_grad()
    def _snapshot(self, model, target) -> None:
        """Copy every penalised parameter, flattened, into ``target[name].data`` (on the CPU)."""
        for name, p in self.allowed_parameters(model, self.excluded_parameters):
            target[name].data = p.detach().flatten().to("cpu", copy=True)

    def before_training_exp(self, strategy, **kwargs):
        self.create_syn_data(strategy.model, self.ewc_data, self.syn_data, self.excluded_parameters)
        self._snapshot(strategy.model, self.ewc_data[0])  # the anchor θ* of this experience
        for traj in self.syn_data["trajectory"].values():
            traj.data.fill_(0.0)

    def before_training_iteration(self, strategy, **kwargs):
        self._snapshot(strategy.model, self.syn_data["old_theta"])

    def after_training_iteration(self, strategy, **kwargs):
        if strategy.step_skipped:
            return
        params = self.allowed_parameters(strategy.model, self.excluded_parameters)
        syn = self.syn_data
        with torch.no_grad():
            for name, p in params:
                new = p.detach().flatten().to("cpu", copy=True)
                syn["new_theta"][name].data = new
                if p.grad is None:  # unused this step: no gradient, no contribution
                    continue
                syn["grad"][name].data = p.grad.detach().cpu().flatten()
                syn["trajectory"][name].data += syn["grad"][name].data * (new - syn["old_theta"][name].data)

    def state_dict(self) -> dict:
        """What carries over between experiences: the importance ω and the cumulated trajectory.

        The anchor, the per-step snapshots and the running path integral are all re-initialised
        at the start of the next experience, so they are not stored (a checkpoint taken in the
        middle of an experience would lose that experience's path integral so far).
        """
        return {
            "importance": param_dict_state(self.ewc_data[1]),
            "cum_trajectory": param_dict_state(self.syn_data["cum_trajectory"]),
        }

    def load_state_dict(self, state: dict) -> None:
        imp = param_dict_from_state(state["importance"])
        self.ewc_data = (param_dict_from_state({k: torch.zeros_like(v.data) for k, v in imp.items()}), imp)
        self.syn_data = {
            k: param_dict_from_state({n: torch.zeros_like(v.data) for n, v in imp.items()})
            for k in ("old_theta", "new_theta", "grad", "trajectory")
        }
        self.syn_data["cum_trajectory"] = param_dict_from_state(state["cum_trajectory"])


class SSLMASPlugin(MASPlugin):
    """Avalanche's Memory Aware Synapses (Aljundi et al., 2018) with our embeddings as the output.

    MAS needs no labels: a parameter's importance is the mean absolute gradient of the squared L2
    norm of the network's output, computed on the experience after training on it, and later
    experiences pay ``lambda_reg · Σ Ω (θ - θ*)²``. Avalanche blends importances across experiences
    as ``alpha · Ω_old + (1 - alpha) · Ω_new``.

    Adapted part: :meth:`_get_importance`. The network's "output" is the pair of pooled unimodal
    embeddings of the masked view, ``pooled_a (B, D)`` and ``pooled_v (B, D)`` before L2
    normalisation (the normalised ones have a constant norm, hence no gradient), so the importance
    is ``mean_batches |∂ mean_b(‖z_a,b‖² + ‖z_v,b‖²) / ∂θ|``. The decoder does not produce them and
    gets zero importance: only the encoder, whose embeddings are what retrieval evaluates, is
    protected.

    Args:
        lambda_reg: penalty weight ``>= 0`` (Avalanche's default 1.0; the paper's Table 5 has no
            MAS row).
        alpha: importance blending factor in ``[0, 1]`` (Avalanche's default 0.5).
        verbose: show a progress bar over the importance pass.
    """

    def __init__(self, lambda_reg: float = 1.0, alpha: float = 0.5, verbose: bool = False):
        who = type(self).__name__
        _check_nonneg(lambda_reg, "lambda_reg", who)
        if isinstance(lambda_reg, (list, tuple)):
            raise ValueError(f"{who}: lambda_reg must be one number >= 0, got {lambda_reg!r}")
        _check_unit(alpha, "alpha", who)
        super().__init__(lambda_reg=lambda_reg, alpha=alpha, verbose=verbose)

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        super().before_training(strategy, **kwargs)

    def _get_importance(self, strategy):
        """Per-parameter ``mean |∂ ‖output‖² / ∂θ|`` over the experience's minibatches."""
        if strategy.experience is None or strategy.experience.dataset is None:
            raise ValueError(f"{type(self).__name__}: the current experience's dataset is not available")
        model = strategy.model
        importance = dict(zerolike_params_dict(model))
        model.train()
        batches = iter_clip_batches(strategy.experience.dataset, strategy.train_mb_size, strategy.device,
                                    who=type(self).__name__)
        if self.verbose:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="MAS importance")
        n_batches = 0
        for batch in batches:
            strategy.optimizer.zero_grad()
            out = model(batch["audio"], batch["video"])
            sq_norm = out.pooled_a.float().pow(2).sum(dim=1) + out.pooled_v.float().pow(2).sum(dim=1)  # (B,)
            sq_norm.mean().backward()
            for name, param in model.named_parameters():
                if param.requires_grad and param.grad is not None:
                    importance[name].data += param.grad.abs()
            n_batches += 1
        for imp in importance.values():
            imp.data /= float(max(n_batches, 1))
        strategy.optimizer.zero_grad()
        return importance

    def state_dict(self) -> dict:
        return {"params": param_dict_state(self.params), "importance": param_dict_state(self.importance)}

    def load_state_dict(self, state: dict) -> None:
        self.params = param_dict_from_state(state["params"])
        self.importance = param_dict_from_state(state["importance"])


class SSLRWalkPlugin(RWalkPlugin):
    """Avalanche's Riemannian Walk (Chaudhry et al., 2018) on our SSL loss.

    RWalk keeps an online Fisher (EWC++: a moving average of squared gradients) and a path score
    (the loss decrease per unit of Fisher-weighted squared displacement, every ``delta_t``
    iterations); at the end of an experience both are normalised to ``[0, 1]`` and summed into the
    penalty weight of ``ewc_lambda · Σ w (θ - θ*)²``. All of it is Avalanche's.

    Adapted parts.

    * :meth:`_update_grad`, the gradient RWalk takes at the start of each iteration,
      back-propagates the model's SSL loss on the current clips (``strategy.mb_audio``,
      ``strategy.mb_video``; memory rows of other plugins are appended later, in
      ``before_forward``) instead of a supervised criterion. It also restores the model's train
      mode, which Avalanche's version leaves in eval mode.
    * :meth:`after_training_exp` normalises the two terms safely. Avalanche divides by the
      largest path score, which is 0 when no positive score was accumulated (for instance an
      experience shorter than ``delta_t`` iterations): every penalty weight becomes NaN and so
      does the loss of every later step. Here a term whose maximum is not positive contributes 0.

    Args:
        ewc_lambda: penalty weight ``>= 0`` (Avalanche's default 0.1; no RWalk row in the
            paper's Table 5).
        ewc_alpha: Fisher moving-average factor in ``[0, 1]`` (Avalanche's default 0.9).
        delta_t: iterations between path-score updates, ``>= 1`` (Avalanche's default 10).
    """

    def __init__(self, ewc_lambda: float = 0.1, ewc_alpha: float = 0.9, delta_t: int = 10):
        who = type(self).__name__
        _check_nonneg(ewc_lambda, "ewc_lambda", who)
        if isinstance(ewc_lambda, (list, tuple)):
            raise ValueError(f"{who}: ewc_lambda must be one number >= 0, got {ewc_lambda!r}")
        _check_unit(ewc_alpha, "ewc_alpha", who)
        if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t < 1:
            raise ValueError(f"{who}: delta_t must be an int >= 1, got {delta_t!r}")
        super().__init__(ewc_lambda=ewc_lambda, ewc_alpha=ewc_alpha, delta_t=delta_t)

    def before_training(self, strategy, *args, **kwargs):
        require_av_template(strategy, self)
        super().before_training(strategy, *args, **kwargs)

    def _update_grad(self, strategy):
        """Gradient of the SSL loss (without penalties) on the current clips -> ``iter_grad``."""
        model = strategy.model
        was_training = model.training
        model.eval()
        strategy.optimizer.zero_grad()
        model(strategy.mb_audio, strategy.mb_video).loss.backward()
        self.iter_grad = copy_params_dict(model, copy_grad=True)
        model.train(was_training)

    def after_training_exp(self, strategy, *args, **kwargs):
        super().after_training_exp(strategy, *args, **kwargs)
        # Recompute Avalanche's penalty weights imp/max_imp + relu(score)/max_score with a guard
        # against a maximum of 0 (see the class docstring).
        max_score = max(float(s.data.max()) for s in self.exp_scores.values())
        max_imp = max(float(i.data.max()) for i in self.exp_importance.values())
        penalties = {}
        for k, score in self.exp_scores.items():
            if k not in self.exp_importance:
                continue
            imp = self.exp_importance[k].data
            w = imp / max_imp if max_imp > 0 else torch.zeros_like(imp)
            if max_score > 0:
                w = w + torch.relu(score.expand(imp.shape)) / max_score
            penalties[k] = ParamData(k, device=imp.device, init_tensor=w)
        self.exp_penalties = penalties

    #: What carries over between experiences (``checkpoint_*`` restart at every ``train()`` call,
    #: ``exp_importance`` is recomputed from ``iter_importance`` at the end of the experience).
    _STATE = ("iter_importance", "exp_scores", "exp_params", "exp_penalties")

    def state_dict(self) -> dict:
        return {k: param_dict_state(getattr(self, k)) for k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, param_dict_from_state(state[k]))
