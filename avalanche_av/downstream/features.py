"""Frozen-backbone features, extracted once per (checkpoint, dataset) and cached on disk.

Kinds (``D`` = encoder width, ``F`` = frames, ``g`` = patch grid side, ``S`` = segments):

* ``"joint"`` ``(N, 2D)``: ``[mean audio tokens; mean video tokens]`` of the joint (fusion)
  output for the full unmasked clip, after the final joint LayerNorm (CAV-MAE's
  classification input);
* ``"audio"`` / ``"video"`` ``(N, D)``: the unimodal embeddings
  (:meth:`~avalanche_av.models.AVMAE.embed_audio` / ``embed_video``, L2-normalised);
* ``"segments{S}"`` ``(N, S, 4D)``: per one-of-``S`` time segment, ``[audio; video]`` where each
  half is ``[modality-encoder output; normalised joint output]``: the mean of the audio tokens
  whose time index falls in the segment, and the mean of the video tokens of the frame at the
  segment's centre. Two depths because temporal localization needs local evidence (the last
  modality-specific block, before fusion mixes the clip) as well as the fused context;
* ``"multiscale"`` ``(N, L, F, g, g, D)`` float16: video tokens after a few modality-specific
  blocks and after the shared blocks (the joint output), the segmentation decoder's input;
  levels are listed by :func:`default_levels`.

One backbone pass fills every missing kind; each kind is stored as a ``.npy`` file (opened
memory-mapped, so caches larger than memory work) under
``CACHE/<dataset key>/<backbone fingerprint>-<model config hash>/``. The fingerprint hashes the
weights, so retraining a checkpoint in place invalidates its features.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..models import AVMAE
from ..models.inputs import prepare_audio, prepare_video
from .backbone import state_fingerprint
from .data import DownstreamData

__all__ = ["FeatureExtractor", "default_levels", "segment_pool", "segment_assignment", "FEATURE_VERSION"]

#: Bumped when a kind's definition changes, so old caches are not reused.
FEATURE_VERSION = 2


def default_levels(model: AVMAE) -> list[int]:
    """Modality-block outputs used as segmentation levels (plus the joint output, always last).

    Up to three blocks spread over the video encoder's depth ``M``: ``ceil(k M / 3) - 1`` for
    ``k = 1, 2, 3`` (tiny, ``M = 2``: blocks 0 and 1; base, ``M = 10``: blocks 3, 6, 9).
    """
    m = model.config.modality_depth
    return sorted({math.ceil(k * m / 3) - 1 for k in (1, 2, 3) if m > 0})


def segment_assignment(n_items: int, n_segments: int) -> torch.Tensor:
    """``(S, n_items)`` float weights: row ``s`` averages the items whose centre lies in segment ``s``.

    Item ``i`` covers ``[i, i+1) / n_items`` of the clip. A segment that contains no item centre
    (more segments than items) takes the item under its own centre.
    """
    centres = (torch.arange(n_items, dtype=torch.float64) + 0.5) / n_items
    seg_of_item = torch.clamp((centres * n_segments).floor().long(), max=n_segments - 1)
    w = torch.zeros(n_segments, n_items, dtype=torch.float64)
    w[seg_of_item, torch.arange(n_items)] = 1.0
    empty = w.sum(1) == 0
    if empty.any():
        s_centre = (torch.arange(n_segments, dtype=torch.float64) + 0.5) / n_segments
        nearest = torch.clamp((s_centre * n_items).floor().long(), max=n_items - 1)
        w[empty, nearest[empty]] = 1.0
    return (w / w.sum(1, keepdim=True)).float()


def segment_pool(
    tokens_a: Union[torch.Tensor, Sequence[torch.Tensor]],
    tokens_v: Union[torch.Tensor, Sequence[torch.Tensor]],
    n_time: int,
    n_frames: int,
    n_segments: int,
) -> torch.Tensor:
    """Per-segment ``[audio; video]`` means.

    Args:
        tokens_a: ``(B, n_time * n_freq, D)`` audio tokens, time-major (index ``t * n_freq + f``),
            or a sequence of such tensors (e.g. several depths), pooled alike and concatenated.
        tokens_v: ``(B, n_frames * g * g, D)`` video tokens, frame-major (or a sequence).
        n_time, n_frames: token grid sizes along time.
        n_segments: ``S``.

    Returns:
        ``(B, S, (k_a + k_v) D)``; the audio part averages the time steps in each segment, the
        video part the frame at each segment's centre (frames averaged when several fall in a
        segment).
    """
    la = [tokens_a] if isinstance(tokens_a, torch.Tensor) else list(tokens_a)
    lv = [tokens_v] if isinstance(tokens_v, torch.Tensor) else list(tokens_v)
    wa = segment_assignment(n_time, n_segments).to(la[0])
    wv = _frame_of_segment(n_frames, n_segments).to(lv[0])
    parts = []
    for t in la:
        b, _, d = t.shape
        parts.append(torch.einsum("st,btd->bsd", wa, t.reshape(b, n_time, -1, d).mean(2)))
    for t in lv:
        b, _, d = t.shape
        parts.append(torch.einsum("sf,bfd->bsd", wv, t.reshape(b, n_frames, -1, d).mean(2)))
    return torch.cat(parts, dim=-1)


def _frame_of_segment(n_frames: int, n_segments: int) -> torch.Tensor:
    if n_frames >= n_segments:
        return segment_assignment(n_frames, n_segments)
    # Fewer frames than segments: each segment reads the frame covering its centre.
    centre = (torch.arange(n_segments, dtype=torch.float64) + 0.5) / n_segments
    f = torch.clamp((centre * n_frames).floor().long(), max=n_frames - 1)
    w = torch.zeros(n_segments, n_frames)
    w[torch.arange(n_segments), f] = 1.0
    return w


def _load(path: Path) -> torch.Tensor:
    """A cached array: read into memory when small, else memory-mapped copy-on-write (writable, so
    torch does not warn, yet nothing is written back)."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.nbytes < 2**28:
        return torch.from_numpy(np.array(arr))
    return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))


def _config_hash(model: AVMAE) -> str:
    d = dataclasses.asdict(model.config)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


class FeatureExtractor:
    """Runs a frozen backbone over a :class:`DownstreamData` and caches what the heads read.

    Args:
        model: the backbone (left in eval mode, never trained here).
        cache_dir: where the ``.npy`` files go; ``None`` keeps features in memory only.
        device: ``None`` = CUDA when available, else CPU.
        batch_size: clips per backbone pass.
        num_workers: DataLoader workers decoding real clips.
        progress: show a progress bar.
        levels: modality blocks for ``"multiscale"`` (default :func:`default_levels`).
        amp: autocast in bfloat16 on CUDA (features are stored as float32 / float16 anyway).

    Attributes:
        passes: number of backbone passes run (tests check the cache avoids them).
    """

    def __init__(
        self,
        model: AVMAE,
        cache_dir: Union[str, os.PathLike, None] = None,
        device: Optional[str] = None,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
        levels: Optional[Sequence[int]] = None,
        amp: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size, self.num_workers, self.progress = int(batch_size), int(num_workers), bool(progress)
        self.levels = list(default_levels(model) if levels is None else levels)
        bad = [l for l in self.levels if not 0 <= l < model.config.modality_depth]
        if bad:
            raise ValueError(f"levels {bad} are not modality blocks of this model (0..{model.config.modality_depth - 1})")
        self.amp = bool(amp)
        self.fingerprint = state_fingerprint(model) + "-" + _config_hash(model)
        self.passes = 0
        self._memory: dict[tuple[str, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ cache paths
    def _kind_id(self, kind: str) -> str:
        if kind == "multiscale":
            return "multiscale-L" + "_".join(map(str, self.levels))
        return kind

    def _path(self, data: DownstreamData, kind: str) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        return self.cache_dir / data.key / self.fingerprint / f"v{FEATURE_VERSION}-{self._kind_id(kind)}.npy"

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind in ("joint", "audio", "video", "multiscale"):
            return
        if kind.startswith("segments") and kind[len("segments"):].isdigit() and int(kind[len("segments"):]) > 0:
            return
        raise ValueError(f"unknown feature kind {kind!r}; allowed: joint, audio, video, multiscale, segments<S>")

    # ------------------------------------------------------------------ public
    def get(self, data: DownstreamData, kinds: Iterable[str]) -> dict[str, torch.Tensor]:
        """Features of every clip of ``data``, one tensor per kind, in clip order.

        Cached kinds are read (memory-mapped); the missing ones are computed in one pass.
        """
        kinds = list(dict.fromkeys(kinds))
        for k in kinds:
            self._check_kind(k)
        out: dict[str, torch.Tensor] = {}
        todo = []
        for k in kinds:
            mem = self._memory.get((data.key, self._kind_id(k)))
            path = self._path(data, k)
            if mem is not None:
                out[k] = mem
            elif path is not None and path.is_file():
                out[k] = _load(path)
                if out[k].shape[0] != len(data):
                    raise ValueError(f"feature cache {path} holds {out[k].shape[0]} clips, the dataset {len(data)}; "
                                     f"delete it")
            else:
                todo.append(k)
        if todo:
            out.update(self._extract(data, todo))
        for k in kinds:
            self._memory[(data.key, self._kind_id(k))] = out[k]
        return {k: out[k] for k in kinds}

    # ------------------------------------------------------------------ extraction
    def _shapes(self, kind: str, n: int) -> tuple[tuple[int, ...], np.dtype]:
        c = self.model.config
        d = c.embed_dim
        if kind == "joint":
            return (n, 2 * d), np.dtype(np.float32)
        if kind in ("audio", "video"):
            return (n, d), np.dtype(np.float32)
        if kind == "multiscale":
            return (n, len(self.levels) + 1, c.n_frames, c.grid, c.grid, d), np.dtype(np.float16)
        s = int(kind[len("segments"):])
        return (n, s, 4 * d), np.dtype(np.float32)

    def _extract(self, data: DownstreamData, kinds: list[str]) -> dict[str, torch.Tensor]:
        from tqdm.auto import tqdm  # noqa: PLC0415

        model, c = self.model, self.model.config
        n = len(data)
        arrays: dict[str, np.ndarray] = {}
        tmp_paths: dict[str, Path] = {}
        for k in kinds:
            shape, dtype = self._shapes(k, n)
            path = self._path(data, k)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
                arrays[k] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                tmp_paths[k] = tmp
            else:
                arrays[k] = np.empty(shape, dtype=dtype)
        captured: dict[Any, torch.Tensor] = {}
        hooks = []
        if "multiscale" in kinds:
            for lvl in self.levels:
                hooks.append(model.blocks_v[lvl].register_forward_hook(
                    lambda _m, _i, o, lvl=lvl: captured.__setitem__(lvl, o)))
        if any(k.startswith("segments") for k in kinds):
            if c.modality_depth == 0:
                raise ValueError("segment features need at least one modality-specific block")
            # Modality-encoder outputs: the last block of each tower, seen during forward_joint.
            for name, blocks in (("mod_a", model.blocks_a), ("mod_v", model.blocks_v)):
                hooks.append(blocks[-1].register_forward_hook(
                    lambda _m, _i, o, name=name: captured.__setitem__(name, o)))
        model.to(self.device)
        loader = DataLoader(data.clips, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        use_amp = self.amp and self.device.type == "cuda"
        lo = 0
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                bar = tqdm(loader, desc=f"features {data.name}", disable=not self.progress, leave=False)
                for batch in bar:
                    audio = prepare_audio(batch[0].to(self.device, non_blocking=True))
                    video = prepare_video(batch[1].to(self.device, non_blocking=True))
                    b = audio.shape[0]
                    ja = jv = None
                    if any(k == "joint" or k.startswith("segments") or k == "multiscale" for k in kinds):
                        ja, jv = model.forward_joint(audio, video)
                        ja, jv = model.norm(ja), model.norm(jv)
                    for k in kinds:
                        if k == "joint":
                            val = torch.cat([ja.mean(1), jv.mean(1)], dim=-1)
                        elif k == "audio":
                            val = model.embed_audio(audio)
                        elif k == "video":
                            val = model.embed_video(video)
                        elif k == "multiscale":
                            lv = [captured[l] for l in self.levels] + [jv]
                            val = torch.stack(lv, 1).view(b, len(lv), c.n_frames, c.grid, c.grid, c.embed_dim)
                        else:
                            val = segment_pool((captured["mod_a"], ja), (captured["mod_v"], jv), c.n_time, c.n_frames,
                                               int(k[len("segments"):]))
                        arrays[k][lo:lo + b] = val.float().cpu().numpy().astype(arrays[k].dtype, copy=False)
                    lo += b
                    self.passes += 1
        finally:
            for h in hooks:
                h.remove()
        if lo != n:
            raise RuntimeError(f"extracted {lo} clips, expected {n}")
        out = {}
        for k in kinds:
            if k in tmp_paths:
                arrays[k].flush()
                del arrays[k]
                path = self._path(data, k)
                assert path is not None
                os.replace(tmp_paths[k], path)
                out[k] = _load(path)
            else:
                out[k] = torch.from_numpy(arrays[k])
        return out
