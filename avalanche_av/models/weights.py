"""Loading pre-trained weights into :class:`~avalanche_av.models.av_mae.AVMAE`.

Three sources (``docs/weights.md`` has the walkthrough):

1. **Official CAV-MAE checkpoints** (``cav-mae-scale++.pth`` and friends) into the
   ``cav_mae_base`` preset (11 + 1 blocks, 1 frame). :func:`convert_cav_mae_state_dict`
   maps names and layouts:

   - the ``module.`` prefix (``DataParallel``) is removed;
   - ``patch_embed_a.proj.weight (D, 1, p, p)`` is a conv on the fbank transposed to
     ``(freq, time)``, so its kernel is indexed ``[d, 0, freq, time]``. Our audio patch vector
     is ``(p_time, p_freq)`` flattened, hence ``W_ours[d, t*p + f] = W_conv[d, 0, f, t]``;
   - ``patch_embed_v.proj.weight (D, 3, p, p)`` becomes ``W_ours[d, (r*p + c)*3 + ch] =
     W_conv[d, ch, r, c]`` (our video patch vector is ``(p_row, p_col, channel)``);
   - ``decoder_pred_a`` predicts CAV-MAE's audio patch vector, ``(freq, time)`` ordered; its
     output rows are permuted to our ``(time, freq)`` order so reconstructions keep meaning.
     ``decoder_pred_v`` needs no change (both use ``(row, col, channel)``);
   - the single ``mask_token`` is copied to ``mask_token_a`` and ``mask_token_v``;
   - ``pos_embed_a/v`` and ``decoder_pos_embed_a/v`` are fixed sin-cos tables in CAV-MAE and
     are recomputed by our model, so they are dropped. The loader compares them with ours
     (after reordering CAV-MAE's frequency-major audio tokens to our time-major order) and
     reports the largest difference; ``pos_embed="checkpoint"`` copies them into the model
     instead;
   - ``norm1_a/norm1_v/norm2_a/norm2_v`` of modality-specific and decoder blocks (CAV-MAE
     builds every block with them but only the shared blocks use them) are dropped.

   The token order itself needs no conversion: every token carries the positional embedding
   of its own (time, freq) position.

2. **Our own checkpoints**: a run checkpoint saved by
   :func:`~avalanche_av.training.checkpoint.save_checkpoint` (the model state is under
   ``"model"``) or a bare ``state_dict``.

3. **ImageNet MAE ViT-B** (timm/MAE key names) to initialise the 10 + 2 ``base`` preset
   the way CAV-MAE initialised its model, see :func:`convert_imagenet_mae_state_dict`.

Every file is read with ``torch.load(..., weights_only=True)``. Loading is strict by
default: missing keys, unexpected keys and wrong shapes raise :class:`WeightsError` with the
full :class:`LoadReport` (by key).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import torch

from .av_mae import AVMAE, AVMAEConfig

__all__ = [
    "WeightsError",
    "LoadReport",
    "read_checkpoint",
    "detect_format",
    "cav_mae_state_dict_shapes",
    "convert_cav_mae_state_dict",
    "convert_imagenet_mae_state_dict",
    "load_weights",
    "load_cav_mae_checkpoint",
    "init_from_imagenet_mae",
    "audio_kernel_to_linear",
    "video_kernel_to_linear",
]

Source = Union[str, "os.PathLike[str]", Mapping[str, Any]]
Format = Literal["auto", "avalanche-av", "cav-mae", "imagenet-mae"]
_MAX_LIST = 20


class WeightsError(ValueError):
    """A checkpoint cannot be loaded as asked; the message lists the offending keys."""


@dataclass
class LoadReport:
    """What a weight load did, key by key.

    Attributes:
        source: file name (or ``"<state_dict>"``).
        format: ``"avalanche-av"``, ``"cav-mae"`` or ``"imagenet-mae"``.
        loaded: model keys that received a value.
        missing: model keys with no value in the checkpoint (an error, except ``fresh``).
        unexpected: checkpoint keys that have no place in the model (an error).
        shape_mismatch: key -> ``(checkpoint shape, model shape)`` (an error).
        dropped: checkpoint key -> why it was left out on purpose (not an error).
        converted: model key -> how its value was derived (layout changes, copies).
        fresh: model keys deliberately left at their initial values (ImageNet init).
        notes: other remarks (e.g. positional-table comparison).
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self, verbose: bool = False) -> str:
        def keys(xs: list[str]) -> str:
            xs = list(xs)
            more = f" ... (+{len(xs) - _MAX_LIST})" if len(xs) > _MAX_LIST and not verbose else ""
            return ", ".join(xs if verbose else xs[:_MAX_LIST]) + more

        lines = [f"{self.source} ({self.format}): {len(self.loaded)} tensors loaded"]
        if self.shape_mismatch:
            lines.append(f"  wrong shapes ({len(self.shape_mismatch)}):")
            items = list(self.shape_mismatch.items())
            for k, (have, want) in items if verbose else items[:_MAX_LIST]:
                lines.append(f"    {k}: checkpoint {tuple(have)}, model expects {tuple(want)}")
        if self.missing:
            lines.append(f"  missing from the checkpoint ({len(self.missing)}): {keys(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in the checkpoint ({len(self.unexpected)}): {keys(self.unexpected)}")
        if self.dropped:
            reasons: dict[str, list[str]] = {}
            for k, why in self.dropped.items():
                reasons.setdefault(why, []).append(k)
            for why, ks in reasons.items():
                lines.append(f"  dropped ({why}): {keys(ks)}")
        if self.converted:
            for k, how in self.converted.items():
                lines.append(f"  {k}: {how}")
        if self.fresh:
            lines.append(f"  left at their initial values ({len(self.fresh)}): {keys(self.fresh)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def raise_if_error(self) -> None:
        if not self.ok:
            raise WeightsError("weights do not fit the model:\n" + self.summary())


# --------------------------------------------------------------------------- reading
def read_checkpoint(source: Source) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file (``weights_only=True``) or take a mapping; unwrap containers.

    Unwraps an avalanche-av run checkpoint (``{"format": "avalanche-av-checkpoint/1",
    "model": ...}``), MAE/timm-style ``{"model": ...}`` and ``{"state_dict": ...}``
    wrappers, and removes a ``module.`` prefix present on every key.

    Returns:
        ``(state_dict, source_name)``.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: the file needs pickle (not ``weights_only``-safe) or holds no tensors.
    """
    if isinstance(source, Mapping):
        obj: Any = source
        name = "<state_dict>"
    else:
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{p} could not be loaded with torch.load(weights_only=True): {e}") from e
        name = os.fspath(p)
    if isinstance(obj, Mapping) and obj.get("format") == "avalanche-av-checkpoint/1":
        obj = obj["model"]
    elif isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("model", "state_dict", "module"):
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{name}: expected a state dict, got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{name}: holds no tensors (top-level keys: {list(obj)[:10]})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, name


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """``"avalanche-av"``, ``"cav-mae"`` or ``"imagenet-mae"`` from key names and conv shapes.

    Raises:
        WeightsError: none of the three.
    """
    w = sd.get("patch_embed_a.proj.weight")
    if w is not None:
        return "cav-mae" if w.dim() == 4 else "avalanche-av"
    if "patch_embed.proj.weight" in sd and any(k.startswith("blocks.0.") for k in sd):
        return "imagenet-mae"
    raise WeightsError(f"unknown checkpoint format (first keys: {list(sd)[:8]}); expected CAV-MAE, "
                       f"avalanche-av or ImageNet-MAE (timm) key names")


# --------------------------------------------------------------------------- layout changes (pure)
def audio_kernel_to_linear(w: torch.Tensor) -> torch.Tensor:
    """CAV-MAE audio conv kernel ``(D, 1, p_freq, p_time)`` -> our Linear weight ``(D, p*p)``.

    Our audio patch vector is ``(p_time, p_freq)`` flattened, so entry ``t*p + f`` takes
    kernel tap ``[0, f, t]``.
    """
    return w[:, 0].transpose(1, 2).reshape(w.shape[0], -1).contiguous()


def video_kernel_to_linear(w: torch.Tensor) -> torch.Tensor:
    """RGB conv kernel ``(D, 3, p, p)`` -> our Linear weight ``(D, 3*p*p)`` in ``(row, col, channel)`` order."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()


def _audio_pred_rows_to_ours(w: torch.Tensor, p: int) -> torch.Tensor:
    """Rows of CAV-MAE's ``decoder_pred_a`` (``(freq, time)`` order) -> our ``(time, freq)`` order."""
    rest = w.shape[1:]
    return w.reshape(p, p, *rest).transpose(0, 1).reshape(p * p, *rest).contiguous()


# --------------------------------------------------------------------------- CAV-MAE
_MODALITY_NORM = re.compile(r"^(blocks_a|blocks_v|decoder_blocks)\.\d+\.norm[12]_[av]\.(weight|bias)$")
_POS_KEYS = ("pos_embed_a", "pos_embed_v", "decoder_pos_embed_a", "decoder_pos_embed_v")


def cav_mae_state_dict_shapes(config: AVMAEConfig, prefix: str = "module.",
                              with_unused_norms: bool = False) -> "OrderedDict[str, tuple[int, ...]]":
    """Key -> shape of an official CAV-MAE checkpoint for the model ``config`` describes.

    Derived from our own parameter names (which follow CAV-MAE) by mapping back: conv
    patch embeddings, one ``mask_token``, the four fixed positional tables (audio
    ``(1, Na, D)``, video per frame ``(1, g*g, D)``), and the ``module.`` prefix.
    ``with_unused_norms`` adds the per-modality norms CAV-MAE's modality-specific and decoder
    blocks carry without using them.
    """
    c = config
    p, d, dd = c.patch_size, c.embed_dim, c.decoder_dim
    model_shapes = _model_shapes(config)
    out: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()
    for k, s in model_shapes.items():
        if k in ("mask_token_a", "mask_token_v"):
            out["mask_token"] = (1, 1, dd)
        elif k == "patch_embed_a.proj.weight":
            out[k] = (d, 1, p, p)
        elif k == "patch_embed_v.proj.weight":
            out[k] = (d, 3, p, p)
        else:
            out[k] = s
        if with_unused_norms and re.match(r"^(blocks_a|blocks_v|decoder_blocks)\.\d+\.norm2\.bias$", k):
            blk = k.rsplit(".norm2.bias", 1)[0]
            dim = s[0]
            for n in ("norm1_a", "norm1_v", "norm2_a", "norm2_v"):
                out[f"{blk}.{n}.weight"], out[f"{blk}.{n}.bias"] = (dim,), (dim,)
    out["pos_embed_a"] = (1, c.num_audio_patches, d)
    out["pos_embed_v"] = (1, c.grid * c.grid, d)
    out["decoder_pos_embed_a"] = (1, c.num_audio_patches, dd)
    out["decoder_pos_embed_v"] = (1, c.grid * c.grid, dd)
    return OrderedDict((prefix + k, s) for k, s in out.items())


def _model_shapes(config: AVMAEConfig) -> "OrderedDict[str, tuple[int, ...]]":
    # Built on the meta device (no memory). The per-frame positional table goes through numpy,
    # which meta tensors cannot; it is a non-persistent buffer, absent from the state dict,
    # so switching it off changes no key or shape.
    with torch.device("meta"):
        m = AVMAE(dataclasses.replace(config, frame_pos_embed=False))
    return OrderedDict((k, tuple(v.shape)) for k, v in m.state_dict().items())


def convert_cav_mae_state_dict(
    sd: Mapping[str, torch.Tensor], config: AVMAEConfig
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map an official CAV-MAE state dict onto our names and layouts (module docstring).

    Shapes are not checked against a model here (see :func:`load_weights`), except that the
    conv kernels must be 4-D with the config's patch size; a wrong one is recorded in
    ``shape_mismatch`` under its CAV-MAE key.

    Returns:
        ``(state_dict, report)``. The four positional tables come back under the key prefix
        ``"__pos__."`` (e.g. ``"__pos__.pos_embed_a"``), unconverted, for :func:`load_weights`
        to compare with or copy into the model's buffers.
    """
    p, d = config.patch_size, config.embed_dim
    rep = LoadReport(source="<state_dict>", format="cav-mae")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k in _POS_KEYS:
            out[f"__pos__.{k}"] = v
            continue
        if _MODALITY_NORM.match(k):
            rep.dropped[k] = "per-modality norm of a modality-specific/decoder block, unused by CAV-MAE"
            continue
        if k == "mask_token":
            out["mask_token_a"], out["mask_token_v"] = v.clone(), v.clone()
            rep.converted["mask_token_a"] = "copy of CAV-MAE's single mask_token"
            rep.converted["mask_token_v"] = "copy of CAV-MAE's single mask_token"
        elif k == "patch_embed_a.proj.weight":
            want = (d, 1, p, p)
            if tuple(v.shape) != want:
                rep.shape_mismatch[k] = (tuple(v.shape), want)
                continue
            out[k] = audio_kernel_to_linear(v)
            rep.converted[k] = "conv kernel (D,1,freq,time) -> Linear on (time,freq)-flattened patches"
        elif k == "patch_embed_v.proj.weight":
            want = (d, 3, p, p)
            if tuple(v.shape) != want:
                rep.shape_mismatch[k] = (tuple(v.shape), want)
                continue
            out[k] = video_kernel_to_linear(v)
            rep.converted[k] = "conv kernel (D,3,row,col) -> Linear on (row,col,channel)-flattened patches"
        elif k in ("decoder_pred_a.weight", "decoder_pred_a.bias"):
            if v.shape[0] != p * p:
                rep.shape_mismatch[k] = (tuple(v.shape), (p * p, *v.shape[1:]))
                continue
            out[k] = _audio_pred_rows_to_ours(v, p)
            rep.converted[k] = "output rows reordered from (freq,time) to (time,freq) patch layout"
        else:
            out[k] = v
    return out, rep


# --------------------------------------------------------------------------- ImageNet MAE
_BLOCK_PARTS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                "mlp.fc2.weight", "mlp.fc2.bias")


def convert_imagenet_mae_state_dict(
    sd: Mapping[str, torch.Tensor],
    config: AVMAEConfig,
    audio_kernel: Literal["sum", "mean"] = "sum",
    init_decoder: bool = False,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Initialise our model from an ImageNet-MAE ViT (timm/MAE key names), CAV-MAE style.

    Mapping (``M = config.modality_depth``, ``S = config.shared_depth``; the ViT needs at
    least ``M + S`` blocks, 12 for ViT-B and the 10 + 2 ``base`` preset):

    - ``blocks.{i}`` (``i < M``) -> ``blocks_a.{i}`` **and** ``blocks_v.{i}`` (both branches
      start from the same ImageNet block);
    - ``blocks.{M + j}`` (``j < S``) -> ``blocks_u.{j}``; its ``norm1``/``norm2`` are copied to
      the joint norms and to the audio and video norms (``norm1_a``, ``norm1_v``, ...);
    - ``norm`` -> ``norm_a``, ``norm_v`` and ``norm``;
    - ``patch_embed.proj`` (conv ``(D, 3, p, p)``) -> ``patch_embed_v`` (reordered to our
      ``(row, col, channel)`` patch vector);
    - audio: the RGB kernel **summed** over its 3 input channels (``audio_kernel="sum"``; the
      response of a grey image replicated over channels is unchanged) or averaged
      (``"mean"``), read as a ``(freq, time)`` kernel as CAV-MAE applies it to the transposed
      fbank, then reordered to our ``(time, freq)`` patch vector; the bias is copied;
    - ``cls_token``, ``pos_embed`` (our positional tables are fixed sin-cos), and a
      classifier's ``fc_norm``/``head`` are dropped;
    - decoder keys of a full MAE checkpoint (``decoder_embed``, ``decoder_blocks``,
      ``decoder_norm``, ``decoder_pred``, ``mask_token``) are dropped, or with
      ``init_decoder`` copied (``decoder_pred`` -> ``decoder_pred_v``; ``mask_token`` -> both
      mask tokens; ``decoder_pos_embed`` dropped).

    Everything else (modality embeddings, the decoder unless ``init_decoder``,
    ``decoder_pred_a``) keeps its fresh initialisation and is listed in ``report.fresh`` by
    :func:`load_weights`.

    Raises:
        WeightsError: the ViT has fewer than ``M + S`` blocks or no ``patch_embed.proj``.
        ValueError: unknown ``audio_kernel``.
    """
    if audio_kernel not in ("sum", "mean"):
        raise ValueError(f"audio_kernel must be 'sum' or 'mean', got {audio_kernel!r}")
    m, s = config.modality_depth, config.shared_depth
    rep = LoadReport(source="<state_dict>", format="imagenet-mae")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    n_blocks = len({int(mm.group(1)) for k in sd if (mm := re.match(r"^blocks\.(\d+)\.", k))})
    if n_blocks < m + s:
        raise WeightsError(f"ImageNet checkpoint has {n_blocks} blocks; the model needs {m} modality-specific + "
                           f"{s} shared = {m + s}")
    if "patch_embed.proj.weight" not in sd:
        raise WeightsError("ImageNet checkpoint has no 'patch_embed.proj.weight'")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for i in range(m):
        for part in _BLOCK_PARTS:
            src = f"blocks.{i}.{part}"
            if src in sd:
                out[f"blocks_a.{i}.{part}"], out[f"blocks_v.{i}.{part}"] = sd[src].clone(), sd[src].clone()
                used.add(src)
    for j in range(s):
        for part in _BLOCK_PARTS:
            src = f"blocks.{m + j}.{part}"
            if src not in sd:
                continue
            used.add(src)
            out[f"blocks_u.{j}.{part}"] = sd[src].clone()
            if part.startswith(("norm1.", "norm2.")):
                n, wb = part.split(".")
                out[f"blocks_u.{j}.{n}_a.{wb}"], out[f"blocks_u.{j}.{n}_v.{wb}"] = sd[src].clone(), sd[src].clone()
    rep.converted[f"blocks_a.0..{m - 1}, blocks_v.0..{m - 1}"] = f"from ImageNet blocks.0..{m - 1} (both branches)"
    rep.converted[f"blocks_u.0..{s - 1}"] = (f"from ImageNet blocks.{m}..{m + s - 1}; norm1/norm2 also copied to "
                                             f"the per-modality norms")
    for wb in ("weight", "bias"):
        if f"norm.{wb}" in sd:
            used.add(f"norm.{wb}")
            for n in ("norm_a", "norm_v", "norm"):
                out[f"{n}.{wb}"] = sd[f"norm.{wb}"].clone()
    rep.converted["norm_a, norm_v, norm"] = "from ImageNet norm"
    w = sd["patch_embed.proj.weight"]
    used.add("patch_embed.proj.weight")
    if w.dim() != 4 or w.shape[1] != 3 or w.shape[2] != w.shape[3]:
        rep.shape_mismatch["patch_embed.proj.weight"] = (tuple(w.shape), (config.embed_dim, 3, config.patch_size,
                                                                          config.patch_size))
    else:
        out["patch_embed_v.proj.weight"] = video_kernel_to_linear(w)
        a = w.sum(dim=1, keepdim=True) if audio_kernel == "sum" else w.mean(dim=1, keepdim=True)
        out["patch_embed_a.proj.weight"] = audio_kernel_to_linear(a)
        rep.converted["patch_embed_v.proj.weight"] = "ImageNet conv kernel -> Linear on (row,col,channel) patches"
        rep.converted["patch_embed_a.proj.weight"] = (f"ImageNet RGB kernel {audio_kernel}med over channels, read as "
                                                      f"(freq,time), -> Linear on (time,freq) patches")
    if "patch_embed.proj.bias" in sd:
        used.add("patch_embed.proj.bias")
        out["patch_embed_v.proj.bias"] = sd["patch_embed.proj.bias"].clone()
        out["patch_embed_a.proj.bias"] = sd["patch_embed.proj.bias"].clone()
    for k in sd:
        if k in used:
            continue
        if k in ("cls_token", "pos_embed", "decoder_pos_embed"):
            rep.dropped[k] = "class token / fixed positional table, not used by our model"
        elif k.startswith(("fc_norm.", "head.", "head_drop.")):
            rep.dropped[k] = "classifier head of a fine-tuned ViT"
        elif re.match(r"^blocks\.\d+\.", k) and int(k.split(".")[1]) >= m + s:
            rep.dropped[k] = f"ViT block beyond the {m + s} the model uses"
        elif k.startswith(("decoder_", "mask_token")):
            if not init_decoder:
                rep.dropped[k] = "MAE decoder (pass init_decoder=True to use it)"
            elif k == "decoder_pred.weight" or k == "decoder_pred.bias":
                out[k.replace("decoder_pred", "decoder_pred_v")] = sd[k].clone()
                rep.converted[k.replace("decoder_pred", "decoder_pred_v")] = "from ImageNet MAE decoder_pred"
            elif k == "mask_token":
                out["mask_token_a"], out["mask_token_v"] = sd[k].clone(), sd[k].clone()
                rep.converted["mask_token_a, mask_token_v"] = "copies of ImageNet MAE mask_token"
            else:
                out[k] = sd[k].clone()
        else:
            out[k] = sd[k]  # left for load_weights to report as unexpected
    return out, rep


# --------------------------------------------------------------------------- loading
def _pos_tables_ours(model: AVMAE, tables: dict[str, torch.Tensor], rep: LoadReport, copy: bool) -> None:
    """Compare (or copy) CAV-MAE's fixed positional tables with the model's buffers."""
    c = model.config
    for key, t in tables.items():
        buf: torch.Tensor = getattr(model, key)
        dim = buf.shape[-1]
        t = t.reshape(-1, t.shape[-1]) if t.dim() == 3 else t
        if key.endswith("_a"):
            want = (c.num_audio_patches, dim)
            if tuple(t.shape) != want:
                msg = f"{key}: checkpoint table {tuple(t.shape)} does not fit ({want}); dropped"
                if copy:
                    rep.shape_mismatch[key] = (tuple(t.shape), want)
                else:
                    rep.notes.append(msg)
                continue
            # CAV-MAE's audio tokens are frequency-major (conv on the (freq, time) image).
            ours = t.reshape(c.n_freq, c.n_time, dim).transpose(0, 1).reshape(-1, dim)
        else:
            want = (c.grid * c.grid, dim)
            if tuple(t.shape) != want:
                msg = f"{key}: checkpoint table {tuple(t.shape)} does not fit ({want}); dropped"
                if copy:
                    rep.shape_mismatch[key] = (tuple(t.shape), want)
                else:
                    rep.notes.append(msg)
                continue
            ours = t.repeat(c.n_frames, 1)
        if copy:
            with torch.no_grad():
                buf.copy_(ours.to(buf.dtype))
            rep.converted[key] = "copied from the checkpoint (reordered to our token order)"
        else:
            diff = float((ours.float() - buf.float()).abs().max())
            verdict = "matches" if diff < 1e-4 else "DIFFERS from"
            rep.dropped[key] = "fixed sin-cos table, recomputed by the model"
            rep.notes.append(f"{key}: checkpoint table {verdict} the model's recomputed one (max |diff| = {diff:.3g})"
                             + ("" if diff < 1e-4 else "; pass pos_embed='checkpoint' to use the checkpoint's"))


def load_weights(
    model: AVMAE,
    source: Source,
    format: Format = "auto",
    strict: bool = True,
    pos_embed: Literal["model", "checkpoint"] = "model",
    audio_kernel: Literal["sum", "mean"] = "sum",
    init_decoder: bool = False,
) -> LoadReport:
    """Load a checkpoint into ``model`` (in place), converting CAV-MAE / ImageNet-MAE layouts.

    Args:
        model: the target :class:`AVMAE`.
        source: a file (read with ``weights_only=True``) or a state dict.
        format: ``"auto"`` (detected by :func:`detect_format`), ``"avalanche-av"`` (our run
            checkpoints or state dicts), ``"cav-mae"`` or ``"imagenet-mae"``.
        strict: raise :class:`WeightsError` on missing or unexpected keys or wrong shapes
            (for ``imagenet-mae``, keys the conversion deliberately leaves fresh are not
            missing). With ``strict=False`` every tensor that fits is loaded and the report
            lists the rest.
        pos_embed: CAV-MAE only: ``"model"`` keeps the recomputed sin-cos tables (and reports
            how far the checkpoint's are from them); ``"checkpoint"`` copies the checkpoint's
            tables into the model's buffers.
        audio_kernel, init_decoder: ImageNet-MAE only, see :func:`convert_imagenet_mae_state_dict`.

    Returns:
        The :class:`LoadReport`.
    """
    if pos_embed not in ("model", "checkpoint"):
        raise ValueError(f"pos_embed must be 'model' or 'checkpoint', got {pos_embed!r}")
    sd, name = read_checkpoint(source)
    fmt = detect_format(sd) if format == "auto" else format
    if fmt == "cav-mae":
        sd, rep = convert_cav_mae_state_dict(sd, model.config)
    elif fmt == "imagenet-mae":
        sd, rep = convert_imagenet_mae_state_dict(sd, model.config, audio_kernel=audio_kernel, init_decoder=init_decoder)
    elif fmt == "avalanche-av":
        rep = LoadReport(source=name, format=fmt)
    else:
        raise ValueError(f"format must be 'auto', 'avalanche-av', 'cav-mae' or 'imagenet-mae', got {format!r}")
    rep.source = name
    pos = {k[len("__pos__."):]: sd.pop(k) for k in list(sd) if k.startswith("__pos__.")}

    target = model.state_dict()
    fits: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in target:
            rep.unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            rep.shape_mismatch[k] = (tuple(v.shape), tuple(target[k].shape))
        else:
            fits[k] = v
    absent = [k for k in target if k not in sd]
    if fmt == "imagenet-mae":
        rep.fresh = absent
    else:
        rep.missing = absent
    # A key reported wrong under its checkpoint name is not also "missing".
    rep.missing = [k for k in rep.missing if k not in rep.shape_mismatch]
    if pos:
        _pos_tables_ours(model, pos, rep, copy=(pos_embed == "checkpoint"))
    if strict:
        rep.raise_if_error()
    model.load_state_dict(fits, strict=False)
    rep.loaded = sorted(fits)
    return rep


def load_cav_mae_checkpoint(
    source: Source,
    preset: str = "cav_mae_base",
    strict: bool = True,
    pos_embed: Literal["model", "checkpoint"] = "model",
    **overrides: Any,
) -> tuple[AVMAE, LoadReport]:
    """Build ``preset`` (with config ``overrides``) and load an official CAV-MAE checkpoint into it.

    Returns:
        ``(model, report)``.
    """
    from .presets import create_model  # noqa: PLC0415

    model = create_model(preset, **overrides)
    rep = load_weights(model, source, format="cav-mae", strict=strict, pos_embed=pos_embed)
    return model, rep


def init_from_imagenet_mae(
    model: AVMAE,
    source: Source,
    audio_kernel: Literal["sum", "mean"] = "sum",
    init_decoder: bool = False,
    strict: bool = True,
) -> LoadReport:
    """Initialise ``model`` (e.g. the 10 + 2 ``base`` preset) from an ImageNet-MAE ViT-B checkpoint.

    See :func:`convert_imagenet_mae_state_dict` for exactly what is copied where.
    """
    return load_weights(model, source, format="imagenet-mae", strict=strict, audio_kernel=audio_kernel,
                        init_decoder=init_decoder)

