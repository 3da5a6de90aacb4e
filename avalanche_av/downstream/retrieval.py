"""Retrieval fine-tuning (MSR-VTT, paper Table 4a): continue self-supervised training, then retrieve.

The backbone keeps training with its own pre-training objective (masked reconstruction +
InfoNCE, no labels) on the training list. After each epoch audio -> video and video -> audio
retrieval is scored on the validation list (mean of R@1/5/10 over both directions); training
stops after ``patience`` epochs without improvement and the best epoch's weights are kept.
Those weights are then scored on the test list: R@1/5/10 in both directions, each query's
own clip being the only correct answer. The zero-shot scores (before fine-tuning) are
reported next to them.

On the synthetic stream the lists hold clips of held-out classes (tasks after the
pre-training stream; :func:`~avalanche_av.downstream.data.synthetic_data` with
``heldout_tasks``).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset

from ..evaluation.functional import recall_at_k, similarity
from ..models import AVMAE
from ..models.inputs import prepare_audio, prepare_video
from .data import DownstreamData

__all__ = ["embed_clips", "retrieval_scores", "ssl_train", "run_retrieval_finetune"]


def embed_clips(model: AVMAE, data: DownstreamData, idx: torch.Tensor, device: torch.device, batch_size: int = 64,
                num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked unimodal embeddings ``(n, D)`` x2 of clips ``idx`` (eval mode, no grad)."""
    model.eval()
    loader = DataLoader(Subset(data.clips, idx.tolist()), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    ea, ev = [], []
    with torch.no_grad():
        for batch in loader:
            a, v = model.embed(prepare_audio(batch[0].to(device)), prepare_video(batch[1].to(device)))
            ea.append(a.float().cpu())
            ev.append(v.float().cpu())
    return torch.cat(ea), torch.cat(ev)


def retrieval_scores(emb_a: torch.Tensor, emb_v: torch.Tensor, ks: tuple = (1, 5, 10)) -> dict[str, float]:
    """``R@k a2v`` and ``R@k v2a`` (instance level; row ``i`` of each is the positive pair)."""
    target = torch.arange(emb_a.shape[0])
    out = {}
    for name, q, g in (("a2v", emb_a, emb_v), ("v2a", emb_v, emb_a)):
        for k, v in recall_at_k(similarity(q, g), target, ks).items():
            out[f"R@{k} {name}"] = v
    return out


def _mean_recall(scores: dict[str, float]) -> float:
    return float(sum(scores.values()) / len(scores))


def ssl_train(
    model: AVMAE,
    data: DownstreamData,
    idx: torch.Tensor,
    epochs: int,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    device: Optional[torch.device] = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    epoch_end=None,
) -> list[float]:
    """Plain self-supervised training of ``model`` (``model(audio, video).loss``) on clips ``idx``.

    ``epoch_end(epoch) -> bool`` is called after each epoch; returning ``True`` stops. Returns the
    mean training loss per epoch. Used by retrieval fine-tuning and to pre-train backbones in
    tests and benchmarks; continual pre-training itself is :class:`avalanche_av.training.AVPretraining`.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    device = device or next(model.parameters()).device
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    mask_gen = torch.Generator(device=device).manual_seed(seed + 1)
    losses = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = idx[torch.randperm(len(idx), generator=g)]
        loader = DataLoader(Subset(data.clips, order.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, drop_last=len(order) > batch_size)
        total, count = 0.0, 0
        for batch in tqdm(loader, desc=f"ssl epoch {epoch}", disable=not progress, leave=False):
            out = model(prepare_audio(batch[0].to(device)), prepare_video(batch[1].to(device)), generator=mask_gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            total += float(out.loss.detach()) * batch[0].shape[0]
            count += batch[0].shape[0]
        losses.append(total / max(count, 1))
        if epoch_end is not None and epoch_end(epoch):
            break
    model.eval()
    return losses


def run_retrieval_finetune(
    data: DownstreamData,
    model: AVMAE,
    max_epochs: int = 10,
    patience: int = 3,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    eval_batch_size: int = 64,
    device: Optional[str] = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    ks: tuple = (1, 5, 10),
) -> dict:
    """Fine-tune a copy of ``model`` on the training list; test retrieval before and after.

    Returns:
        ``{"metrics": {...}, "fit": {...}}`` with ``R@k a2v`` / ``R@k v2a`` after fine-tuning, the
        same keys prefixed ``zero_shot``, ``val_mean_recall`` of the chosen epoch and the gallery
        size (chance R@k = k / gallery).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tr, va, te = (data.indices(s) for s in ("train", "val", "test"))
    for name, ix in (("train", tr), ("val", va), ("test", te)):
        if len(ix) < 2:
            raise ValueError(f"retrieval fine-tuning needs at least 2 {name} clips in {data.name!r}, got {len(ix)}")
    net = copy.deepcopy(model).to(dev)
    zero = retrieval_scores(*embed_clips(net, data, te, dev, eval_batch_size, num_workers), ks)
    val0 = _mean_recall(retrieval_scores(*embed_clips(net, data, va, dev, eval_batch_size, num_workers), ks))
    state = {"best": val0, "epoch": 0, "since": 0, "weights": copy.deepcopy(net.state_dict()), "val": [val0]}

    def epoch_end(epoch: int) -> bool:
        score = _mean_recall(retrieval_scores(*embed_clips(net, data, va, dev, eval_batch_size, num_workers), ks))
        state["val"].append(score)
        if score > state["best"]:
            state.update(best=score, epoch=epoch, since=0, weights=copy.deepcopy(net.state_dict()))
        else:
            state["since"] += 1
        return state["since"] >= patience

    losses = ssl_train(net, data, tr, max_epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, device=dev,
                       seed=seed, num_workers=num_workers, progress=progress, epoch_end=epoch_end)
    net.load_state_dict(state["weights"])
    after = retrieval_scores(*embed_clips(net, data, te, dev, eval_batch_size, num_workers), ks)
    metrics = {**after, **{f"zero_shot {k}": v for k, v in zero.items()}, "val_mean_recall": state["best"],
               "gallery": len(te), "n_train": len(tr), "n_val": len(va),
               **{f"chance R@{k}": min(1.0, k / len(te)) for k in ks}}
    fit = {"best_epoch": state["epoch"], "epochs_run": len(losses), "train_loss": [round(x, 5) for x in losses],
           "val_score": [round(x, 5) for x in state["val"]]}
    return {"metrics": metrics, "fit": fit}
