"""Load any backbone the downstream tasks can evaluate, and fingerprint it for the feature cache.

``--checkpoint`` accepts:

* ``random``: the preset at its random initialisation (seeded), the baseline every pre-trained
  backbone must beat;
* a run checkpoint written by ``avalanche-av run`` (``OUT/checkpoint.pt``) or a bare
  ``state_dict`` of :class:`~avalanche_av.models.AVMAE`;
* an official CAV-MAE checkpoint (``cav-mae-scale++.pth`` ...), loaded into ``cav_mae_base``;
* an ImageNet-MAE ViT-B checkpoint, which initialises the ``base`` preset the way CAV-MAE
  started its pre-training (``imagenet-mae:PATH`` forces the format).

All of it goes through :func:`avalanche_av.models.weights.load_weights`, which reads files with
``torch.load(..., weights_only=True)`` and converts layouts. The preset is taken from
``preset=`` when given, else from a ``config`` entry in the checkpoint, else from the format
(CAV-MAE -> ``cav_mae_base``, ImageNet-MAE -> ``base``), else matched on the layer shapes.
Input shapes (fbank length and bins, frames, image side) are not stored in weights (the
positional tables are recomputed), so they follow the dataset.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..models import PRESETS, AVMAE, create_model, get_config
from ..models.weights import detect_format, load_weights, read_checkpoint

__all__ = [
    "BackboneInfo",
    "CheckpointSource",
    "open_checkpoint",
    "build_backbone",
    "load_backbone",
    "infer_preset",
    "state_fingerprint",
    "INPUT_FIELDS",
]

#: AVMAEConfig fields a dataset decides (the weights do not depend on them).
INPUT_FIELDS = ("audio_length", "num_mel_bins", "n_frames", "image_size")


@dataclass
class BackboneInfo:
    """Where a backbone came from.

    Attributes:
        source: ``"random"`` or the checkpoint path.
        format: ``"random"``, ``"avalanche-av"``, ``"cav-mae"`` or ``"imagenet-mae"``.
        preset: the model preset name.
        overrides: config fields changed from the preset (the dataset's input shapes).
        fingerprint: content hash of the weights (the feature-cache key).
        notes: remarks from the loader (e.g. keys left at their initial values).
    """

    source: str
    format: str
    preset: str
    overrides: dict = field(default_factory=dict)
    fingerprint: str = ""
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"source": self.source, "format": self.format, "preset": self.preset,
                "overrides": dict(self.overrides), "fingerprint": self.fingerprint, "notes": list(self.notes)}


def state_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and persistent buffer, in key order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _structure(sd: Mapping[str, torch.Tensor]) -> dict:
    """Layer counts and widths of an avalanche-av state dict."""
    def depth(prefix: str) -> int:
        ids = {int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".") and k.split(".")[1].isdigit()}
        return max(ids) + 1 if ids else 0

    w = sd.get("patch_embed_a.proj.weight")
    out = {"modality_depth": depth("blocks_a"), "shared_depth": depth("blocks_u"), "decoder_depth": depth("decoder_blocks")}
    if w is not None:
        out["embed_dim"] = int(w.shape[0])
        out["patch_size"] = int(round(float(w.shape[1]) ** 0.5))
    if "decoder_embed.weight" in sd:
        out["decoder_dim"] = int(sd["decoder_embed.weight"].shape[0])
    return out


def infer_preset(sd: Mapping[str, torch.Tensor]) -> str:
    """The preset whose layer counts and widths match an avalanche-av state dict.

    Raises:
        ValueError: no preset matches (pass ``preset=`` explicitly).
    """
    have = _structure(sd)
    for name in sorted(PRESETS):
        c = PRESETS[name]
        if all(getattr(c, k) == v for k, v in have.items()):
            return name
    raise ValueError(f"no model preset matches the checkpoint's layers {have}; pass the preset explicitly "
                     f"(--model), one of {sorted(PRESETS)}")


def _preset_from_config(obj: Any) -> Optional[str]:
    """A preset name stored next to the weights (run checkpoints may carry the run config)."""
    if not isinstance(obj, Mapping):
        return None
    for holder in (obj.get("config"), (obj.get("extra") or {}).get("config") if isinstance(obj.get("extra"), Mapping) else None):
        if isinstance(holder, Mapping):
            name = holder.get("model") or holder.get("preset")
            if isinstance(name, str) and name in PRESETS:
                return name
    return None


@dataclass
class CheckpointSource:
    """A checkpoint read once: its weights, format, preset and any run config stored with it.

    Attributes:
        source: ``"random"`` or the file path.
        format: ``"random"``, ``"avalanche-av"``, ``"cav-mae"`` or ``"imagenet-mae"``.
        preset: the model preset to build.
        state_dict: the weights (``None`` for ``random``).
        run_config: the ``config`` mapping saved with a run checkpoint, if any.
    """

    source: str
    format: str
    preset: str
    state_dict: Optional[dict] = None
    run_config: Optional[dict] = None


def open_checkpoint(checkpoint: Union[str, os.PathLike, None], preset: Optional[str] = None) -> CheckpointSource:
    """Read a checkpoint (``weights_only=True``) and decide its format and preset.

    Args:
        checkpoint: ``"random"``/``None``, a file (run checkpoint, state dict, CAV-MAE or
            ImageNet-MAE), or ``"<format>:<path>"`` with format ``avalanche-av``, ``cav-mae``
            or ``imagenet-mae`` to skip detection.
        preset: model preset; inferred when ``None`` (see the module docstring).

    Raises:
        FileNotFoundError: no such checkpoint file.
        ValueError: unknown preset or format, or a file that needs pickle.
    """
    if preset is not None:
        get_config(preset)  # a clear error for an unknown name
    ckpt_str = None if checkpoint is None else os.fspath(checkpoint)
    if ckpt_str is None or ckpt_str == "random":
        return CheckpointSource(source="random", format="random", preset=preset or "tiny")
    fmt = "auto"
    for prefix in ("avalanche-av:", "cav-mae:", "imagenet-mae:"):
        if ckpt_str.startswith(prefix):
            fmt, ckpt_str = prefix[:-1], ckpt_str[len(prefix):]
    path = Path(ckpt_str)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects or a corrupt file
        raise ValueError(f"checkpoint {path} could not be loaded with torch.load(weights_only=True): {e}") from e
    sd, _ = read_checkpoint(raw)
    if fmt == "auto":
        fmt = detect_format(sd)
    name = preset or _preset_from_config(raw) or {"cav-mae": "cav_mae_base", "imagenet-mae": "base"}.get(fmt) \
        or infer_preset(sd)
    run_cfg = None
    if isinstance(raw, Mapping):
        extra = raw.get("extra") if isinstance(raw.get("extra"), Mapping) else {}
        holder = raw.get("config") if isinstance(raw.get("config"), Mapping) else extra.get("config")
        run_cfg = dict(holder) if isinstance(holder, Mapping) else None
    return CheckpointSource(source=os.fspath(path), format=fmt, preset=name, state_dict=sd, run_config=run_cfg)


def build_backbone(
    src: CheckpointSource,
    input_shapes: Optional[Mapping[str, int]] = None,
    seed: int = 0,
    strict: bool = True,
) -> tuple[AVMAE, BackboneInfo]:
    """Build ``src.preset`` with the dataset's input shapes and load the weights.

    Args:
        src: from :func:`open_checkpoint`.
        input_shapes: dataset input shapes overriding the preset (keys from :data:`INPUT_FIELDS`).
        seed: RNG seed of the random initialisation (also of the fresh layers an ImageNet-MAE
            init leaves).
        strict: see :func:`~avalanche_av.models.weights.load_weights`.

    Returns:
        ``(model, info)``; the model is in eval mode on the CPU.
    """
    shapes = dict(input_shapes or {})
    bad = sorted(set(shapes) - set(INPUT_FIELDS))
    if bad:
        raise ValueError(f"input_shapes may only set {list(INPUT_FIELDS)}, got {bad}")
    overrides = _overrides(src.preset, shapes)
    torch.manual_seed(seed)
    model = create_model(src.preset, **overrides)
    info = BackboneInfo(source=src.source, format=src.format, preset=src.preset, overrides=overrides)
    if src.state_dict is not None:
        rep = load_weights(model, src.state_dict, format=src.format, strict=strict)  # type: ignore[arg-type]
        info.notes = list(rep.notes)
        if rep.fresh:
            info.notes.append(f"{len(rep.fresh)} tensors left at their initial values (not in the checkpoint)")
    model.eval()
    info.fingerprint = state_fingerprint(model)
    return model, info


def load_backbone(
    checkpoint: Union[str, os.PathLike, None],
    preset: Optional[str] = None,
    input_shapes: Optional[Mapping[str, int]] = None,
    seed: int = 0,
    strict: bool = True,
) -> tuple[AVMAE, BackboneInfo]:
    """:func:`open_checkpoint` then :func:`build_backbone`: any checkpoint, ready to evaluate."""
    return build_backbone(open_checkpoint(checkpoint, preset), input_shapes, seed=seed, strict=strict)


def _overrides(preset: str, shapes: Mapping[str, int]) -> dict:
    base = get_config(preset)
    return {k: int(v) for k, v in shapes.items() if getattr(base, k) != int(v)}
