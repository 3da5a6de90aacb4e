"""EWC for self-supervised audio-video pre-training.

Avalanche's ``EWCPlugin`` penalty is label-free, but its importance estimate hard-codes a
supervised batch (``model(x)`` then ``criterion(out, y)``). :class:`SSLEWCPlugin` keeps the
penalty and replaces only the importance estimate: the squared gradients of the model's own
SSL loss on ``(audio, video)``, averaged over the experience's minibatches.
"""
from __future__ import annotations

from typing import Dict

import torch
from avalanche.training.plugins import EWCPlugin
from avalanche.training.utils import ParamData, zerolike_params_dict
from torch.utils.data import DataLoader

from ...models.inputs import prepare_audio, prepare_video
from ..template import require_av_template

__all__ = ["SSLEWCPlugin"]


class SSLEWCPlugin(EWCPlugin):
    """Avalanche's EWC with an SSL-loss Fisher estimate. Arguments as ``EWCPlugin``."""

    def before_training(self, strategy, **kwargs):
        require_av_template(strategy, self)
        parent = getattr(super(), "before_training", None)
        if parent is not None:
            parent(strategy, **kwargs)

    def compute_importances(
        self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0
    ) -> Dict[str, ParamData]:
        model.eval()
        importances = zerolike_params_dict(model)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        n_batches = 0
        for batch in loader:
            audio = prepare_audio(batch[0].to(device))
            video = prepare_video(batch[1].to(device))
            if audio.shape[0] < 2:  # InfoNCE needs a negative
                continue
            optimizer.zero_grad()
            model(audio, video).loss.backward()
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
