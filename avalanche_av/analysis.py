"""Looking inside a trained run: attention maps of chosen clips from a run checkpoint.

This module sits at the experiment layer: it rebuilds the run's benchmark and model from the
settings stored in a run checkpoint (``checkpoint.pt`` of ``avalanche-av run``), then draws the
evaluation layer's maps (:mod:`avalanche_av.evaluation.localization`).

* :func:`load_run`: model (and STELLA's AVM when the run had one) plus the benchmark, from a
  checkpoint, loaded with ``weights_only=True``.
* :func:`clip_batch`: the clips with given ids, from the benchmark's training or retrieval
  sets, and their ground-truth sounding patches where they exist.
* :func:`draw_attention`: what ``avalanche-av attention --checkpoint ... --clip ...`` runs: one
  PNG per clip, one row per map (AVM importance for STELLA; the audio-to-video cosine map for
  every method), the sounding source outlined in white where ground truth exists.
* :func:`draw_tracked_attention`: the same over the stream, from the maps a
  :class:`~avalanche_av.evaluation.LocalizationMetrics` kept for its tracked clips (e.g. after
  task 1 and after the last task, paper Fig. 2, 7 and 14).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .benchmarks import AVBenchmark
from .experiment import RunConfig, _model_for, build_benchmark
from .evaluation.localization import localization_score, plot_attention_rows, sounding_patches, video_maps
from .models import AVMatching
from .training.checkpoint import read_checkpoint

__all__ = ["LoadedRun", "load_run", "clip_batch", "draw_attention", "draw_tracked_attention"]

_MAP_LABELS = {"avm": "AVM importance", "cosine": "audio→video cosine"}


@dataclass
class LoadedRun:
    """A run checkpoint brought back to life.

    Attributes:
        config: the run's settings.
        benchmark: its benchmark, rebuilt from those settings.
        model: the backbone with the checkpoint's weights, in eval mode.
        avm: STELLA's AVM with its weights (eval mode), or ``None`` for other methods.
        completed_experiences: training experiences finished when the checkpoint was written.
    """

    config: RunConfig
    benchmark: AVBenchmark
    model: torch.nn.Module
    avm: Optional[AVMatching]
    completed_experiences: int


def load_run(checkpoint: Union[str, Path], device: str = "cpu", benchmark: Optional[AVBenchmark] = None) -> LoadedRun:
    """Rebuild model, AVM and benchmark from a run checkpoint.

    Args:
        checkpoint: ``OUT/checkpoint.pt`` of ``avalanche-av run``.
        device: where the model goes.
        benchmark: reuse an already built benchmark of the same settings (skips rebuilding).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an avalanche-av run checkpoint, or one without its run settings.
    """
    state = read_checkpoint(checkpoint)
    extra = state.get("extra", {})
    stored = extra.get("run_config")
    if not isinstance(stored, str):
        raise ValueError(f"{checkpoint} does not record the run settings it was made with, so its benchmark and "
                         "model cannot be rebuilt; it must come from `avalanche-av run`")
    saved = json.loads(stored)
    known = set(RunConfig.__dataclass_fields__)
    cfg = RunConfig(**{k: (tuple(v) if k == "ks" else v) for k, v in saved.items() if k in known})
    bench = benchmark if benchmark is not None else build_benchmark(cfg)
    model = _model_for(cfg, bench)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {checkpoint} does not fit the model its settings build: {exc}") from exc
    model.to(device).eval()
    avm = None
    for plugin_state in state.get("plugins", {}).values():
        if isinstance(plugin_state, dict) and plugin_state.get("avm") is not None:
            c = model.config
            heads = cfg.strategy_options.get("avm_heads") or c.num_heads
            avm = AVMatching(c.embed_dim, heads)
            avm.load_state_dict(plugin_state["avm"])
            avm.to(device).eval()
            break
    return LoadedRun(cfg, bench, model, avm, int(extra.get("completed_experiences", 0)))


def _dataset_of(bench: AVBenchmark, clip_id: int) -> tuple[Any, int]:
    """The dataset holding ``clip_id`` and its index there, from the clip table."""
    table = bench.clip_table
    row = table[table["clip_id"] == clip_id]
    if row.empty:
        raise ValueError(f"clip {clip_id} is not a clip of this benchmark "
                         f"(ids {int(table['clip_id'].min())}..{int(table['clip_id'].max())})")
    task = int(row["task"].iloc[0])
    # Synthetic tables say split train/eval; real ones role train/retrieval/pool. Each
    # experience's dataset holds its rows in clip-id order.
    col = "role" if "role" in table.columns else "split"
    kind = str(row[col].iloc[0])
    if kind not in ("train", "eval", "retrieval"):
        raise ValueError(f"clip {clip_id} belongs to the {kind!r} set, which is not part of the stream")
    same = table[(table["task"] == task) & (table[col] == kind)]["clip_id"].sort_values().tolist()
    ds = bench.train_stream[task].dataset if kind == "train" else bench.retrieval_sets[task]
    return ds, same.index(clip_id)


def clip_batch(bench: AVBenchmark, clip_ids: Sequence[int]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """The clips with the given ids, as a batch.

    Args:
        bench: the benchmark.
        clip_ids: ids from ``bench.clip_table`` (training or retrieval clips).

    Returns:
        ``audio (B, T, F)``, ``video (B, n, 3, H, W)`` as loaded (uint8 or [0, 1] float) and
        ``gt (B, Nv)`` bool sounding patches in sounding frames, or ``None`` without ground truth.

    Raises:
        ValueError: an id that is not in the benchmark.
    """
    audio, video = [], []
    for cid in clip_ids:
        ds, idx = _dataset_of(bench, int(cid))
        sample = ds[idx]
        if int(sample[3]) != int(cid):  # a layout this lookup does not know: search the set
            found = next((ds[i] for i in range(len(ds)) if int(ds[i][3]) == int(cid)), None)
            if found is None:
                raise ValueError(f"clip {cid} was not found in its set")
            sample = found
        audio.append(sample[0])
        video.append(sample[1])
    gt = None
    if bench.sounding_masks is not None:
        gt = sounding_patches(bench.sounding_masks, bench.active_frames, torch.as_tensor(list(clip_ids)))
    return torch.stack(audio), torch.stack(video), gt


def _clip_title(bench: AVBenchmark, cid: int) -> str:
    row = bench.clip_table[bench.clip_table["clip_id"] == cid]
    name = str(row["class_name"].iloc[0]) if "class_name" in row.columns and len(row) else ""
    return f"clip {cid}" + (f" ({name})" if name else "")


def draw_attention(
    checkpoint: Union[str, Path],
    clip_ids: Sequence[int],
    out_dir: Union[str, Path, None] = None,
    device: str = "cpu",
    temperature: Optional[float] = None,
    run: Optional[LoadedRun] = None,
) -> List[Dict[str, Any]]:
    """Attention maps of chosen clips for a run checkpoint, one PNG per clip.

    Each figure has one row per map: STELLA's AVM importance (when the run had an AVM) and the
    audio-to-video cosine map (every method), over each frame, with the sounding source outlined
    in white where the benchmark has ground truth.

    Args:
        checkpoint: the run checkpoint.
        clip_ids: clip ids (see the run's ``clip_table``; retrieval clips are held out).
        out_dir: where the PNGs go; default ``<checkpoint folder>/attention``.
        device: where the model runs.
        temperature: the cosine map's softmax temperature (default the model's τ).
        run: an already loaded run (skips :func:`load_run`).

    Returns:
        One record per clip: ``clip_id``, ``path`` and, with ground truth, per map its
        :class:`~avalanche_av.evaluation.LocalizationScore` as a dict (share, chance, lift, auc).
    """
    if not clip_ids:
        raise ValueError("draw_attention needs at least one clip id")
    run = run if run is not None else load_run(checkpoint, device=device)
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent / "attention"
    out.mkdir(parents=True, exist_ok=True)
    audio, video, gt = clip_batch(run.benchmark, clip_ids)
    with torch.no_grad():
        maps = video_maps(run.model, audio.to(device), video.to(device), run.avm, temperature=temperature)
    maps = {k: v.cpu() for k, v in maps.items()}
    p = run.model.config.patch_size
    who = f"{run.config.strategy} after {run.completed_experiences} task(s)"
    records = []
    for i, cid in enumerate(clip_ids):
        rows = {_MAP_LABELS[k]: m[i] for k, m in maps.items()}
        note = "; white: sounding source" if gt is not None else ""
        fig = plot_attention_rows(video[i], rows, p, title=f"{_clip_title(run.benchmark, int(cid))}, {who}{note}",
                                  gt_mask=None if gt is None else gt[i])
        path = out / f"attention_clip{int(cid)}.png"
        fig.savefig(path, dpi=100)
        rec: Dict[str, Any] = {"clip_id": int(cid), "path": str(path)}
        if gt is not None and bool(gt[i].any()):
            rec["scores"] = {k: localization_score(m[i : i + 1], gt[i : i + 1]).to_dict() for k, m in maps.items()}
        records.append(rec)
    return records


def draw_tracked_attention(
    bench: AVBenchmark,
    localization_metric: Any,
    out_dir: Union[str, Path],
    rows: Sequence[int] = (0, -1),
    patch_size: int = 16,
    label: str = "",
) -> List[Path]:
    """Attention maps of the clips a :class:`~avalanche_av.evaluation.LocalizationMetrics` tracked,
    at chosen checkpoints of the stream (default after the first and after the last task).

    Args:
        bench: the benchmark the metric ran on (for the frames and the ground truth).
        localization_metric: the metric, after the run (``track_clips`` set).
        out_dir: where the PNGs go (``tracked_clip{id}.png``).
        rows: matrix rows (training experiences, negative from the last).
        patch_size: the model's patch size.
        label: method name for the titles.

    Returns:
        The paths written (none when nothing was tracked).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip_ids = sorted({c for r in rows for c in localization_metric.tracked_maps(r)})
    if not clip_ids:
        return []
    _, video, gt = clip_batch(bench, clip_ids)
    paths = []
    for i, cid in enumerate(clip_ids):
        note = "; white: sounding source" if gt is not None else ""
        title = f"{_clip_title(bench, cid)}{', ' + label if label else ''}{note}"
        fig = localization_metric.plot_tracked(cid, video[i], None if gt is None else gt[i], rows=rows,
                                               patch_size=patch_size, title=title)
        if fig is None:
            continue
        path = out / f"tracked_clip{cid}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
