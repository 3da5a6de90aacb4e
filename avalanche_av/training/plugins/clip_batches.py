"""Named fields of minibatches that a plugin loads itself (importance passes, A-GEM's memory).

Inside a training step the template names the minibatch (``strategy.mb_audio`` ...). Some
Avalanche plugins also iterate over a dataset on their own: EWC's Fisher and MAS's importance
pass over the experience, A-GEM samples its episodic memory. Those batches arrive in our stream
layout ``[audio, video, target, clip_id, task]``; :func:`clip_fields` names them once, in the one
place outside the template that knows the positions, so no plugin indexes a batch.
"""
from __future__ import annotations

from typing import Dict, Iterator, Sequence, Union

import torch
from torch.utils.data import DataLoader

from ...models.inputs import prepare_audio, prepare_video
from ..template import _MB_INDEX, _MB_LEN

__all__ = ["clip_fields", "iter_clip_batches"]


def clip_fields(batch: Sequence[Union[torch.Tensor, int]], device: Union[str, torch.device, None] = None,
                who: str = "a plugin") -> Dict[str, torch.Tensor]:
    """Name a collated batch of our streams and prepare it for the model.

    Args:
        batch: ``[audio (B, T, F), video (B, n, 3, H, W), target (B,), clip_id (B,), task (B,)]``
            as a DataLoader over one of our experience datasets yields it.
        device: where the fields go (``None`` keeps them where they are).
        who: named in the error message.

    Returns:
        ``audio (B, T, F)`` float32, ``video (B, n, 3, H, W)`` ImageNet-normalised float32,
        ``target (B,)``, ``clip_id (B,)``, ``task (B,)``.

    Raises:
        ValueError: the batch does not have the five fields of our layout.
    """
    if len(batch) != _MB_LEN:
        raise ValueError(
            f"{who}: a batch must be [audio, video, target, clip_id, task_label]; got {len(batch)} elements "
            "(is the dataset an avalanche-av stream?)"
        )

    def to(x):
        x = torch.as_tensor(x)
        return x if device is None else x.to(device, non_blocking=True)

    return {
        "audio": prepare_audio(to(batch[_MB_INDEX["audio"]])),
        "video": prepare_video(to(batch[_MB_INDEX["video"]])),
        "target": to(batch[_MB_INDEX["target"]]),
        "clip_id": to(batch[_MB_INDEX["clip_id"]]),
        "task": to(batch[-1]),
    }


def iter_clip_batches(dataset, batch_size: int, device: Union[str, torch.device], num_workers: int = 0,
                      who: str = "a plugin") -> Iterator[Dict[str, torch.Tensor]]:
    """Iterate once over ``dataset`` in order, yielding :func:`clip_fields` dicts on ``device``.

    Uses the dataset's own ``collate_fn`` when it has one (Avalanche datasets do).
    """
    collate_fn = getattr(dataset, "collate_fn", None)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    for batch in loader:
        yield clip_fields(batch, device, who)
