"""Per-clip cache of STELLA's AVM scores, for ``StellaPlugin(score_cache_epochs=k)``.

An option beyond the paper (``docs/stella.md``, "Score cache"; ``docs/deviations.md``): STELLA
scores every current clip at every step with an unmasked pass of the backbone and the AVM
(paper Sec. 3.2). With the cache, the scores a clip got are reused for the next ``k`` epochs:
the importance (Eq. 2), the pooled queries (Eq. 3) and the exclusion probabilities (Eq. 4)
it had when it was scored. The selection then treats a cached clip the way it treats a memory
sample (fresh Bernoulli and multinomial draws from stored scores).

Layout. Values live in ``(capacity, ...)`` tables on the strategy's device (fp16, as the
memory stores the same fields); the index from clip id to table row is kept on the **host**
(a sorted id tensor, looked up with ``searchsorted``), so a lookup reads the loader's host clip
ids and never waits for the device. Cost per cached clip: ``2·(Na + Nv + Na + Nv + 2·D)``
bytes: 8,256 B for ``base``, 448 B for ``tiny``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["ScoreCache", "CACHED_FIELDS"]

#: What one clip's cached scores are: name -> per-clip shape meaning (all stored fp16).
CACHED_FIELDS = ("imp_a", "imp_v", "query_a", "query_v", "p_excl_a", "p_excl_v")


class ScoreCache:
    """AVM scores per clip id, valid for ``max_age`` epochs after they were computed.

    Args:
        max_age: ``k >= 1``: scores computed in epoch ``e`` are reused in epochs
            ``e+1 .. e+k`` (and within epoch ``e``), recomputed in epoch ``e+k+1``.
        dtype: storage dtype of the values (fp16 by default, as in the memory).

    Raises:
        ValueError: ``max_age < 1``.
    """

    def __init__(self, max_age: int, dtype: torch.dtype = torch.float16) -> None:
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1:
            raise ValueError(f"the score cache needs max_age >= 1 epochs, got {max_age!r}")
        self.max_age = max_age
        self.dtype = dtype
        self.ids = torch.empty(0, dtype=torch.int64)  #: ``(n,)`` sorted clip ids (host)
        self.rows = torch.empty(0, dtype=torch.int64)  #: ``(n,)`` table row of ``ids[i]`` (host)
        self.epoch = torch.empty(0, dtype=torch.int64)  #: ``(capacity,)`` epoch each row was scored (host)
        self.tables: Dict[str, Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return int(self.ids.numel())

    def _find(self, clip_ids: Tensor) -> Tuple[Tensor, Tensor]:
        """``(found (B,) bool, rows (B,))`` for host clip ids (``rows`` only valid where found)."""
        n = self.ids.numel()
        if n == 0:
            return torch.zeros(clip_ids.shape[0], dtype=torch.bool), torch.zeros(clip_ids.shape[0], dtype=torch.int64)
        pos = torch.searchsorted(self.ids, clip_ids).clamp_(max=n - 1)
        found = self.ids[pos] == clip_ids
        return found, self.rows[pos]

    def lookup(self, clip_ids: Tensor, epoch: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Split a batch into cached and to-score rows.

        Args:
            clip_ids: ``(B,)`` int64 clip ids **on the host**.
            epoch: the current epoch number.

        Returns:
            ``hit (h,)`` batch positions whose scores are reused, ``rows (h,)`` their table rows,
            ``miss (m,)`` batch positions to score; all host int64.
        """
        clip_ids = clip_ids.to("cpu", torch.int64)
        found, rows = self._find(clip_ids)
        if found.any():
            found &= (epoch - self.epoch[rows.clamp(max=max(self.epoch.numel() - 1, 0))]) <= self.max_age
        hit = torch.nonzero(found).squeeze(1)  # host tensors: no device sync
        miss = torch.nonzero(~found).squeeze(1)
        self.hits += hit.numel()
        self.misses += miss.numel()
        return hit, rows[hit], miss

    def get(self, rows: Tensor, device: torch.device | str | None = None) -> Dict[str, Tensor]:
        """Cached values of table rows ``(h,)``: ``{field: (h, ...)}`` float32 on the tables' device."""
        if not self.tables:
            raise KeyError("the score cache is empty")
        dev = next(iter(self.tables.values())).device
        idx = rows.to(dev, non_blocking=True)
        return {k: t[idx].float() for k, t in self.tables.items()}

    def put(self, clip_ids: Tensor, values: Dict[str, Tensor], epoch: int) -> None:
        """Store (or refresh) the scores of ``clip_ids`` ``(m,)`` (host), computed in ``epoch``.

        ``values``: ``{field: (m, ...)}`` tensors on the device (the tables are allocated on
        the first call, on that device). A clip id repeated in the batch keeps its first row.
        """
        clip_ids = clip_ids.to("cpu", torch.int64)
        m = clip_ids.numel()
        if m == 0:
            return
        uniq, inv = torch.unique(clip_ids, return_inverse=True)
        first = torch.full((uniq.numel(),), m, dtype=torch.int64).scatter_reduce_(
            0, inv, torch.arange(m), reduce="amin")
        found, rows = self._find(uniq)
        new_ids = uniq[~found]
        n_old, cap = self.ids.numel(), self.epoch.numel()
        new_rows = torch.arange(n_old, n_old + new_ids.numel())
        rows = rows.clone()
        rows[~found] = new_rows
        need = n_old + new_ids.numel()
        if need > cap or not self.tables:
            self._grow(values, max(need, 2 * cap, 16))
        if new_ids.numel():
            # merge the new ids into the sorted index, O(n) (both sides are sorted)
            total = n_old + new_ids.numel()
            pos_new = torch.searchsorted(self.ids, new_ids) + torch.arange(new_ids.numel())
            pos_old = torch.arange(n_old) + torch.searchsorted(new_ids, self.ids)
            ids = torch.empty(total, dtype=torch.int64)
            idx_rows = torch.empty(total, dtype=torch.int64)
            ids[pos_old], ids[pos_new] = self.ids, new_ids
            idx_rows[pos_old], idx_rows[pos_new] = self.rows, new_rows
            self.ids, self.rows = ids, idx_rows
        self.epoch[rows] = epoch
        dev = next(iter(self.tables.values())).device
        src, dst = first.to(dev, non_blocking=True), rows.to(dev, non_blocking=True)
        for k, t in self.tables.items():
            t[dst] = values[k].detach()[src].to(t.dtype)

    def _grow(self, values: Dict[str, Tensor], capacity: int) -> None:
        missing = sorted(set(CACHED_FIELDS) - set(values))
        if missing:
            raise ValueError(f"score cache: values lack {missing}")
        old = self.tables
        self.tables = {}
        for k in CACHED_FIELDS:
            v = values[k]
            t = torch.zeros((capacity, *v.shape[1:]), dtype=self.dtype, device=v.device)
            if k in old:
                t[: old[k].shape[0]] = old[k]
            self.tables[k] = t
        epoch = torch.full((capacity,), -(2**62), dtype=torch.int64)
        epoch[: self.epoch.numel()] = self.epoch
        self.epoch = epoch

    def bytes_per_clip(self) -> int:
        """Bytes one cached clip costs over all fields (0 before the first ``put``)."""
        return int(sum(t[0].numel() * t.element_size() for t in self.tables.values()))

    def state_dict(self) -> dict:
        n = self.ids.numel()
        return {
            "max_age": self.max_age, "ids": self.ids.clone(), "rows": self.rows.clone(),
            "epoch": self.epoch[:n].clone(), "tables": {k: t[:n].clone().cpu() for k, t in self.tables.items()},
            "hits": self.hits, "misses": self.misses,
        }

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore a :meth:`state_dict`; ``device``: where the tables go (default CPU)."""
        self.max_age = int(state["max_age"])
        self.ids, self.rows = state["ids"].clone(), state["rows"].clone()
        self.epoch = state["epoch"].clone()
        self.tables = {k: t.to(device or "cpu").to(self.dtype) for k, t in state["tables"].items()}
        self.hits, self.misses = int(state["hits"]), int(state["misses"])
