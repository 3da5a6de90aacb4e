"""Counter-based random numbers keyed by ``(seed, clip_id, stream)``.

Every clip of the synthetic stream must be a pure function of the seed and its index,
independent of how many clips are generated together or in which order. A stateful
generator cannot give that when drawing for many clips at once, so per-clip scalars come
from a SplitMix64-style hash of the key (vectorised over clips), and bulk noise comes from a
``torch.Generator`` re-seeded with a per-clip hash.
"""
from __future__ import annotations

import torch

__all__ = ["mix64", "clip_keys", "hash_uniform", "clip_generator_seeds"]

_M64 = 1 << 64


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 value with the same bits."""
    return c - _M64 if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)
_STREAM = _signed(0xD6E8FEB86659FD93)


def _lshr(x: torch.Tensor, k: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; masking the sign-extended bits makes it logical.
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrap-around multiplication), any shape."""
    x = x ^ _lshr(x, 30)
    x = x * _C1
    x = x ^ _lshr(x, 27)
    x = x * _C2
    return x ^ _lshr(x, 31)


def clip_keys(seed: int, clip_ids: torch.Tensor, stream: int) -> torch.Tensor:
    """One 64-bit key per clip for a named random ``stream``.

    Args:
        seed: benchmark seed.
        clip_ids: ``(N,)`` int64 clip indices.
        stream: small integer naming what the numbers are for (positions, sizes, ...), so
            that different quantities of one clip are independent.

    Returns:
        ``(N,)`` int64 keys.
    """
    base = mix64(
        torch.tensor(seed, dtype=torch.int64) * _GOLDEN + torch.tensor(stream, dtype=torch.int64) * _STREAM
    )
    return mix64(base + clip_ids.to(torch.int64) * _GOLDEN)


def hash_uniform(seed: int, clip_ids: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """Uniform numbers in ``[0, 1)``, ``(N, n)`` float64, a pure function of the key."""
    keys = clip_keys(seed, clip_ids, stream)
    counters = torch.arange(1, n + 1, dtype=torch.int64) * _GOLDEN
    h = mix64(keys.unsqueeze(1) + counters.unsqueeze(0))
    return _lshr(h, 11).to(torch.float64) * (2.0**-53)


def clip_generator_seeds(seed: int, clip_ids: torch.Tensor, stream: int) -> list[int]:
    """Non-negative per-clip seeds for ``torch.Generator.manual_seed``."""
    return (clip_keys(seed, clip_ids, stream) & ((1 << 62) - 1)).tolist()
