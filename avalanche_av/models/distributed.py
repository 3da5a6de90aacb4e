"""Cross-rank helpers the model layer needs: rank queries and the contrastive all-gather.

Everything here is a no-op in a single process (``torch.distributed`` not initialised, or a
world of one): the functions return their input unchanged, so single-process results are
bit-identical with or without this module. ``docs/distributed.md`` explains the whole
multi-process setup; the process group itself is created by
:func:`avalanche_av.training.distributed.distributed_session`.

Global contrastive negatives. With ``N`` ranks each holding ``R`` rows, an InfoNCE computed per
rank sees ``R - 1`` negatives instead of the ``N·R - 1`` of one process holding the whole batch.
:func:`gather_rows` all-gathers the rows of every rank in rank order; the local rows are put
back in their slot as the local tensor itself, so they keep their autograd graph (as the
authors' code does). In addition, the gradient that other ranks' losses send to this rank's
rows (this rank's rows are their negatives) is returned to this rank in the backward pass (one
all-reduce of ``(N·R, D)``). With that term the averaged gradient of ``N`` ranks equals the
gradient of one process over the concatenated batch; without it (the authors' variant) the
cross-rank half of the negatives' gradient is lost.

The gather is active only inside :func:`global_negatives` (the training template enters it for
the main forward of a training step), so extra forwards that plugins run on their own (scoring
passes, virtual steps, evaluation) never communicate.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "global_negatives", "gathering_negatives", "gather_rows"]

_GLOBAL_NEGATIVES: contextvars.ContextVar[bool] = contextvars.ContextVar("avalanche_av_global_negatives",
                                                                         default=False)


def is_distributed() -> bool:
    """True when a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks in the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def global_negatives(enabled: bool = True) -> Iterator[None]:
    """Inside this context, :func:`~avalanche_av.models.av_mae.info_nce` draws its negatives
    from every rank (a no-op in a single process)."""
    token = _GLOBAL_NEGATIVES.set(bool(enabled))
    try:
        yield
    finally:
        _GLOBAL_NEGATIVES.reset(token)


def gathering_negatives() -> bool:
    """True inside :func:`global_negatives` in a multi-rank process group."""
    return _GLOBAL_NEGATIVES.get() and is_distributed()


class _GatherRemote(torch.autograd.Function):
    """All-gather of ``(R_r, D)`` rows (``R_r`` may differ per rank); backward returns to each
    rank the summed gradient of its own rows over every rank's loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # noqa: D401
        me, r_max = dist.get_rank(), max(sizes)
        padded = x.new_zeros((r_max, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.me = sizes, me
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D401
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum over ranks of d(loss_r)/d(row) for every row
        start = sum(ctx.sizes[: ctx.me])
        return grad[start: start + ctx.sizes[ctx.me]], None


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows of every rank, in rank order, with this rank's rows as ``x`` itself.

    Args:
        x: ``(R, ...)`` this rank's rows; ``R`` may differ between ranks (one extra all-gather
            of the row counts finds out, which costs one device-to-host copy).

    Returns:
        ``(rows (sum_r R_r, ...), offset)``: ``rows[offset: offset + R]`` is ``x`` (same graph).
        In a single process: ``(x, 0)``.
    """
    if not is_distributed():
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.empty_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in torch.cat(counts).tolist()]
    me = dist.get_rank()
    offset = sum(sizes[:me])
    remote = _GatherRemote.apply(x, sizes)
    # The local slot is the local tensor itself: its graph is the direct one. The slot of
    # ``remote`` is unused here, so its backward carries only the other ranks' gradients.
    rows = torch.cat([remote[:offset], x, remote[offset + x.shape[0]:]])
    return rows, offset
