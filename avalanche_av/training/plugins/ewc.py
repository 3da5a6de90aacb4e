"""EWC for self-supervised audio-video pre-training.

Avalanche's ``EWCPlugin`` penalty is label-free, but its importance estimate hard-codes a
supervised batch (``model(x)`` then ``criterion(out, y)``). :class:`SSLEWCPlugin` keeps the
penalty and replaces only the importance estimate: the squared gradients of the model's own
SSL loss on ``(audio, video)``, averaged over the experience's minibatches. See
``docs/baselines_avalanche.md``.
"""
from __future__ import annotations

from typing import Dict, Optional

from avalanche.training.plugins import EWCPlugin
from avalanche.training.utils import ParamData, zerolike_params_dict

from ..template import require_av_template
from .clip_batches import iter_clip_batches
from .param_data import param_dict_from_state, param_dict_state

__all__ = ["SSLEWCPlugin"]


class SSLEWCPlugin(EWCPlugin):
    """Avalanche's EWC with an SSL-loss Fisher estimate.

    Adapted part: :meth:`compute_importances` (the diagonal Fisher) back-propagates the model's
    SSL loss ``ℓ_r + λ·ℓ_c`` on the experience's clips instead of a supervised criterion. The
    penalty ``ewc_lambda · Σ_k F_k (θ - θ*_k)²`` and both modes are Avalanche's.

    Args:
        ewc_lambda: weight of the penalty, ``>= 0``. Default 100.0: neither the paper (its Table 5
            has no EWC row) nor Avalanche gives one. The Fisher here averages squared gradients
            of the *minibatch-mean* loss, roughly ``1/B`` of the per-sample Fisher, so
            ``ewc_lambda ≈ B`` makes the penalty a second-order estimate of the old tasks'
            mean-loss increase; 100 weighs it a few times that at our batch sizes.
        mode: ``'separate'`` (one penalty per past experience) or ``'online'`` (one running
            Fisher decayed by ``decay_factor``).
        decay_factor: in ``[0, 1]``; required with ``mode='online'``, forbidden otherwise.
        keep_importance_data: keep every experience's Fisher in ``'online'`` mode.

    Raises:
        ValueError: an option out of range, naming it.
    """

    def __init__(
        self,
        ewc_lambda: float = 100.0,
        mode: str = "separate",
        decay_factor: Optional[float] = None,
        keep_importance_data: bool = False,
    ):
        if not ewc_lambda >= 0:
            raise ValueError(f"SSLEWCPlugin: ewc_lambda must be >= 0, got {ewc_lambda!r}")
        if mode not in ("separate", "online"):
            raise ValueError(f"SSLEWCPlugin: mode must be 'separate' or 'online', got {mode!r}")
        if mode == "online" and (decay_factor is None or not 0.0 <= decay_factor <= 1.0):
            raise ValueError(f"SSLEWCPlugin: decay_factor must be in [0, 1] with mode='online', got {decay_factor!r}")
        if mode == "separate" and decay_factor is not None:
            raise ValueError("SSLEWCPlugin: decay_factor is only used with mode='online'")
        super().__init__(ewc_lambda, mode=mode, decay_factor=decay_factor, keep_importance_data=keep_importance_data)

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        parent = getattr(super(), "before_training", None)
        if parent is not None:
            parent(strategy, **kwargs)

    def compute_importances(
        self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0
    ) -> Dict[str, ParamData]:
        """Diagonal Fisher of the SSL loss: mean over minibatches of squared gradients, per parameter."""
        model.eval()
        importances = zerolike_params_dict(model)
        n_batches = 0
        for batch in iter_clip_batches(dataset, batch_size, device, num_workers, who=type(self).__name__):
            if batch["audio"].shape[0] < 2:  # InfoNCE needs a negative
                continue
            optimizer.zero_grad()
            model(batch["audio"], batch["video"]).loss.backward()
            for (name, p), (name2, imp) in zip(model.named_parameters(), importances.items()):
                assert name == name2
                if p.grad is not None:
                    imp.data += p.grad.data.clone().pow(2)
            n_batches += 1
        for imp in importances.values():
            imp.data /= max(n_batches, 1)
        optimizer.zero_grad()
        model.train()
        return importances

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Saved parameters and Fishers per experience, so a resumed run keeps its penalty."""
        return {
            "saved_params": {str(t): param_dict_state(d) for t, d in self.saved_params.items()},
            "importances": {str(t): param_dict_state(d) for t, d in self.importances.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.saved_params.clear()
        self.importances.clear()
        for t, d in state["saved_params"].items():
            self.saved_params[int(t)] = param_dict_from_state(d)
        for t, d in state["importances"].items():
            self.importances[int(t)] = param_dict_from_state(d)
