"""Localization: where a model looks, as numbers and as pictures (docs/metrics.md, "Localization").

Two kinds of video-patch maps, each a ``(B, Nv)`` row per clip over its frame-major video
patches (``Nv = n_frames * gh * gw``, the order of :func:`~avalanche_av.models.patching.patchify_video`):

* **AVM importance** (STELLA only): :func:`avm_importance` runs the backbone's unmasked joint pass
  and the AVM, and reads the importance of every patch (paper Eq. 2).
* **Audio-to-video cosine maps** (every method, paper Fig. 7 (b)-(c)): :func:`cosine_map` is the
  cosine between a clip's pooled audio retrieval embedding and each of its video patch tokens
  (:func:`unimodal_tokens`), and :func:`cosine_importance` turns it into a map that sums to 1.
  :func:`cosine_from_tokens` takes an audio permutation for the audio-swap control.
* **Pixel intensity** (a reference without audio or model): :func:`intensity_map`.

Scores against ground truth (the synthetic stream has sounding masks; :func:`sounding_patches`):

* :func:`importance_share`: per clip, the share of importance on the sounding patches and that
  share over the uniform one.
* :func:`localization_score`: the mean share over clips with its **chance level** (what a
  uniform map scores: the mean area share of the sounding patches), their ratio, and the
  rank-based :func:`localization_auc` (chance 0.5), which does not depend on how sharp a map is.
* :func:`localization_forgetting`: textbook forgetting of a ``(tasks trained, tasks)`` matrix of
  localization scores.

Pictures: :func:`plot_attention_map` (one map over a clip's frames) and
:func:`plot_attention_rows` (several maps, one row each). :func:`avm_match_accuracy` scores
matched vs. deranged pairs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from ..models.avm import AVMatching, derangement, importance
from ..models.inputs import prepare_audio, prepare_video
from ..models.patching import patchify_video
from .functional import forgetting

__all__ = [
    "avm_importance",
    "importance_share",
    "avm_match_accuracy",
    "plot_attention_map",
    "plot_attention_rows",
    "sounding_patches",
    "unimodal_tokens",
    "cosine_map",
    "cosine_importance",
    "map_to_importance",
    "cosine_from_tokens",
    "intensity_map",
    "video_maps",
    "localization_auc",
    "auc_rows",
    "LocalizationScore",
    "localization_score",
    "localization_forgetting",
]


@torch.no_grad()
def avm_importance(
    model, avm: AVMatching, audio: torch.Tensor, video: torch.Tensor, beta: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Importance of every patch (Eq. 2) and the AVM match logit of true pairs.

    Args:
        audio: ``(B, T, F)`` fbank (any float dtype). video: ``(B, n, 3, H, W)`` uint8 or [0, 1] float.

    Returns:
        ``imp_a (B, Na)``, ``imp_v (B, Nv)`` (each row sums to 1) and ``logit (B,)``.
    """
    fa, fv = model.forward_joint(prepare_audio(audio), prepare_video(video))
    out = avm(fa, fv, return_attn=True)
    return importance(out.attn_logits_va, beta), importance(out.attn_logits_av, beta), out.logit


def importance_share(imp: torch.Tensor, gt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of importance on ground-truth patches, and that share over the uniform one.

    Args:
        imp: ``(B, N)`` non-negative importance.
        gt_mask: ``(B, N)`` bool, True on sounding patches (rows without any are ignored).

    Returns:
        ``share (B',)`` = Σ_gt imp / Σ imp and ``ratio (B',)`` = share / (|gt| / N), over the
        ``B'`` rows with at least one ground-truth patch. A ratio of 1 means no localization.
    """
    if imp.shape != gt_mask.shape:
        raise ValueError(f"imp {tuple(imp.shape)} and gt_mask {tuple(gt_mask.shape)} must have the same shape")
    keep = gt_mask.any(dim=1)
    imp, gt = imp[keep].float(), gt_mask[keep].float()
    share = (imp * gt).sum(1) / imp.sum(1).clamp_min(1e-12)
    uniform = gt.sum(1) / gt.shape[1]
    return share, share / uniform


@torch.no_grad()
def avm_match_accuracy(model, avm: AVMatching, audio: torch.Tensor, video: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> float:
    """Accuracy of the AVM on ``B`` true pairs plus ``B`` deranged pairs (chance = 0.5)."""
    a, v = prepare_audio(audio), prepare_video(video)
    perm = derangement(a.shape[0], generator).to(a.device)
    pos = avm(*model.forward_joint(a, v), return_attn=False).logit
    neg = avm(*model.forward_joint(a, v, video_perm=perm), return_attn=False).logit
    return float(torch.cat([(pos > 0), (neg <= 0)]).float().mean())


def _frames_float(frames: Tensor) -> Tensor:
    img = frames.detach().cpu()
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def plot_attention_map(
    frames: torch.Tensor, imp_v: torch.Tensor, patch_size: int = 16, title: Optional[str] = None,
    gt_mask: Optional[torch.Tensor] = None, axes: Optional[Sequence[Axes]] = None,
    row_label: Optional[str] = None, vmax: Optional[float] = None, frame_titles: bool = True,
) -> Figure:
    """Draw video importance over a clip's frames, one panel per frame.

    Args:
        frames: ``(n, 3, H, W)`` uint8 (or [0, 1] float) frames of one clip.
        imp_v: ``(n * H/p * W/p,)`` importance of its video patches (frame-major).
        patch_size: ``p``.
        title: figure title (only when this function makes the figure).
        gt_mask: optional ``(n * H/p * W/p,)`` bool ground truth, outlined in white.
        axes: ``n`` axes to draw into (e.g. one row of a larger figure); default a new figure.
        row_label: written left of the first panel (the map's name in a multi-row figure).
        vmax: top of the colour scale; default the map's maximum.
        frame_titles: title each panel ``frame i`` (plus ``sounding`` / ``silent`` from ``gt_mask``).

    Returns:
        The figure holding the panels.
    """
    n, _, h, w = frames.shape
    gh, gw = h // patch_size, w // patch_size
    if imp_v.numel() != n * gh * gw:
        raise ValueError(f"imp_v has {imp_v.numel()} values; frames {tuple(frames.shape)} with patch size "
                         f"{patch_size} have {n * gh * gw} patches")
    heat = imp_v.detach().float().cpu().view(n, gh, gw)
    img = _frames_float(frames)
    own = axes is None
    if own:
        fig = Figure(figsize=(2.6 * n, 2.8))
        FigureCanvasAgg(fig)
        axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    elif len(axes) != n:
        raise ValueError(f"axes has {len(axes)} entries for {n} frames")
    fig = axes[0].figure
    vmax = float(heat.max()) if vmax is None else float(vmax)
    for i, ax in enumerate(axes):
        ax.imshow(img[i].permute(1, 2, 0).numpy())
        up = np.kron(heat[i].numpy(), np.ones((patch_size, patch_size)))
        ax.imshow(up, cmap="inferno", alpha=0.55, vmin=0, vmax=vmax)
        state = ""
        if gt_mask is not None:
            g = gt_mask.detach().cpu().view(n, gh, gw)[i]
            state = ", sounding" if bool(g.any()) else ", silent"
            for r, c in torch.nonzero(g).tolist():
                ax.add_patch(Rectangle((c * patch_size - 0.5, r * patch_size - 0.5), patch_size, patch_size,
                                       fill=False, edgecolor="white", linewidth=1.5))
        if frame_titles:
            ax.set_title(f"frame {i}{state}", fontsize=10)
        # Ticks off but the axes kept, so that a row label can sit on the first panel.
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0 and row_label:
            ax.set_ylabel(row_label, fontsize=10)
    if own:
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
    return fig


def plot_attention_rows(
    frames: Tensor, maps: Mapping[str, Tensor], patch_size: int = 16, title: Optional[str] = None,
    gt_mask: Optional[Tensor] = None, shared_scale: bool = False,
) -> Figure:
    """Several video maps of one clip, one row each (e.g. AVM vs. cosine, or after task 1 vs. after
    the last task), drawn with :func:`plot_attention_map`.

    Args:
        frames: ``(n, 3, H, W)`` uint8 (or [0, 1] float) frames.
        maps: row label -> ``(Nv,)`` map (frame-major video patches).
        gt_mask: optional ``(Nv,)`` bool ground truth, outlined in white in every row.
        shared_scale: one colour scale for all rows (comparable maps, e.g. the same map type at
            two checkpoints); default each row on its own scale.

    Returns:
        A ``len(maps) x n`` figure.
    """
    if not maps:
        raise ValueError("plot_attention_rows needs at least one map")
    n = frames.shape[0]
    rows = len(maps)
    fig = Figure(figsize=(2.6 * n + 0.4, 2.6 * rows + (0.5 if title else 0.0)))
    FigureCanvasAgg(fig)
    top = max(float(m.detach().float().max()) for m in maps.values()) if shared_scale else None
    for r, (label, m) in enumerate(maps.items()):
        axes = [fig.add_subplot(rows, n, r * n + i + 1) for i in range(n)]
        plot_attention_map(frames, m, patch_size, gt_mask=gt_mask, axes=axes, row_label=label, vmax=top,
                           frame_titles=r == 0)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- ground truth
def sounding_patches(
    sounding_masks: Tensor, active_frames: Optional[Tensor] = None, clip_ids: Optional[Tensor] = None
) -> Tensor:
    """Ground-truth sounding video patches, flattened in the model's patch order.

    Args:
        sounding_masks: ``(N_clips, n, gh, gw)`` bool, the source's patch cells in every frame
            (``AVBenchmark.sounding_masks``, indexed by clip id).
        active_frames: optional ``(N_clips, n)`` bool, the frames where the source sounds
            (``AVBenchmark.active_frames``); when given, only those frames count.
        clip_ids: optional ``(B,)`` clip ids to select (any device; indexing happens on the
            masks' device).

    Returns:
        ``(B, n * gh * gw)`` bool (``B = N_clips`` without ``clip_ids``), frame-major like
        :func:`~avalanche_av.models.patching.patchify_video`.
    """
    if sounding_masks.dim() != 4:
        raise ValueError(f"sounding_masks must be (N_clips, n_frames, gh, gw), got {tuple(sounding_masks.shape)}")
    m = sounding_masks.bool()
    if active_frames is not None:
        if tuple(active_frames.shape) != tuple(m.shape[:2]):
            raise ValueError(f"active_frames {tuple(active_frames.shape)} must be (N_clips, n_frames) = "
                             f"{tuple(m.shape[:2])}")
        m = m & active_frames.bool().to(m.device)[..., None, None]
    if clip_ids is not None:
        ids = clip_ids.to(m.device).long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= m.shape[0]):
            raise ValueError(f"clip ids must lie in [0, {m.shape[0]}); got {int(ids.min())}..{int(ids.max())}")
        m = m[ids]
    return m.flatten(1)


# ---------------------------------------------------------------------------- cosine maps
def unimodal_tokens(model, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token outputs of the unimodal (retrieval) pass, unmasked, without gradients.

    Each modality goes through its modality blocks, then the shared blocks with **that
    modality's** LayerNorms, then its final norm (``norm_a`` / ``norm_v``): the tokens whose
    mean, L2-normalised, is the retrieval embedding of :meth:`AVMAE.embed`. The cosine maps use
    these rather than the modality-block tokens because retrieval, and hence the contrastive
    alignment being measured, lives in this space.

    Args:
        model: an :class:`~avalanche_av.models.AVMAE`.
        audio: ``(B, T, F)`` fbank (any float dtype). video: ``(B, n, 3, H, W)`` uint8 or [0, 1] float.

    Returns:
        ``tok_a (B, Na, D)``, ``tok_v (B, Nv, D)``, not normalised.
    """
    a, v = prepare_audio(audio), prepare_video(video)
    with torch.no_grad():
        pa, pv = model.patchify(a, v)
        tok_a, tok_v = model.encode_full(pa, pv)
        for blk in model.blocks_u:
            tok_a, tok_v = blk(tok_a, "a"), blk(tok_v, "v")
        return model.norm_a(tok_a), model.norm_v(tok_v)


def cosine_map(model, audio: Tensor, video: Tensor) -> Tensor:
    """Audio-to-video cosine map (paper Fig. 7 (b)-(c)): for each clip, the cosine between its
    pooled audio embedding and each of its own video patch tokens.

    The audio embedding is the retrieval one (mean of :func:`unimodal_tokens`' audio tokens,
    L2-normalised, as :meth:`AVMAE.embed_audio`); the video tokens are the unimodal video tokens
    of the same unmasked pass.

    Args:
        audio: ``(B, T, F)`` fbank. video: ``(B, n, 3, H, W)`` uint8 or [0, 1] float.

    Returns:
        ``(B, Nv)`` float32 cosines in ``[-1, 1]``.
    """
    tok_a, tok_v = unimodal_tokens(model, audio, video)
    return cosine_from_tokens(tok_a, tok_v)


def cosine_from_tokens(tok_a: Tensor, tok_v: Tensor, audio_perm: Optional[Tensor] = None) -> Tensor:
    """Cosine between each clip's pooled audio embedding and each of its video tokens.

    Args:
        tok_a: ``(B, Na, D)`` and tok_v: ``(B, Nv, D)`` from :func:`unimodal_tokens`.
        audio_perm: optional ``(B,)``: row ``i`` uses the audio of clip ``audio_perm[i]`` (the
            audio-swap control of :class:`~avalanche_av.evaluation.LocalizationMetrics`).

    Returns:
        ``(B, Nv)`` float32 in ``[-1, 1]``.
    """
    emb_a = F.normalize(tok_a.float().mean(dim=1), dim=-1)
    if audio_perm is not None:
        emb_a = emb_a[audio_perm.to(emb_a.device)]
    return torch.einsum("bd,bnd->bn", emb_a, F.normalize(tok_v.float(), dim=-1))


def intensity_map(video: Tensor, patch_size: int) -> Tensor:
    """A vision-only reference map: each video patch's mean pixel intensity, normalised per clip.

    It uses no audio and no model. On the synthetic stream the sound source is bright in the
    frames where it sounds, so this map shows how far plain visual saliency gets against the
    ground truth. An audio-driven map should be judged against it and against its own
    audio-swapped version.

    Args:
        video: ``(B, n, 3, H, W)`` uint8 or [0, 1] float. patch_size: the model's ``p``.

    Returns:
        ``(B, n * H/p * W/p)`` float32, rows sum to 1.
    """
    x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
    m = patchify_video(x, patch_size).mean(dim=-1)
    return m / m.sum(dim=1, keepdim=True).clamp_min(1e-12)


def map_to_importance(scores: Tensor, temperature: float) -> Tensor:
    """Softmax over each row's patches: ``softmax(scores / temperature)``.

    Args:
        scores: ``(B, N)`` e.g. cosines. temperature: ``> 0``; lower is sharper.

    Returns:
        ``(B, N)`` float32, each row sums to 1.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(scores.float() / temperature, dim=-1)


def cosine_importance(model, audio: Tensor, video: Tensor, temperature: Optional[float] = None) -> Tensor:
    """:func:`cosine_map` as a map that sums to 1 per clip (``softmax(cos / temperature)``).

    Args:
        temperature: default the model's contrastive temperature τ (``model.config.temperature``,
            0.05): the scale at which the InfoNCE itself turns these cosines into probabilities.

    Returns:
        ``(B, Nv)`` float32, rows sum to 1.
    """
    tau = float(model.config.temperature) if temperature is None else float(temperature)
    return map_to_importance(cosine_map(model, audio, video), tau)


def video_maps(
    model, audio: Tensor, video: Tensor, avm: Optional[AVMatching] = None, beta: float = 0.4,
    temperature: Optional[float] = None,
) -> dict[str, Tensor]:
    """Every video map of a batch: ``{"avm": ..., "cosine": ...}`` (``"avm"`` only with an AVM).

    Args:
        audio: ``(B, T, F)`` fbank. video: ``(B, n, 3, H, W)`` uint8 or [0, 1] float.
        avm: STELLA's AVM, or ``None``. beta: its importance temperature β.
        temperature: the cosine map's softmax temperature (default the model's τ).

    Returns:
        map name -> ``(B, Nv)`` float32, rows sum to 1.
    """
    out: dict[str, Tensor] = {}
    if avm is not None:
        out["avm"] = avm_importance(model, avm, audio, video, beta)[1]
    out["cosine"] = cosine_importance(model, audio, video, temperature)
    return out


# ---------------------------------------------------------------------------- scores
def auc_rows(scores: Tensor, gt_mask: Tensor) -> Tensor:
    """:func:`localization_auc` for every row, ``NaN`` where a row has no sounding patch or no
    other patch; no boolean indexing, so it never waits for the device (for per-step metrics).

    Args:
        scores: ``(B, N)``. gt_mask: ``(B, N)`` bool.

    Returns:
        ``(B,)`` float32.
    """
    if scores.shape != gt_mask.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and gt_mask {tuple(gt_mask.shape)} must be the same (B, N)")
    gt = gt_mask.bool()
    s = scores.float()
    n_pos = gt.sum(1).float()
    n_neg = gt.shape[1] - n_pos
    srt = s.sort(dim=1).values
    lo = torch.searchsorted(srt, s, right=False).float()  # values strictly below
    hi = torch.searchsorted(srt, s, right=True).float()  # values below or equal
    rank = (lo + hi + 1) / 2  # 1-based average rank: ties count one half
    u = (rank * gt).sum(1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)  # 0/0 = NaN for rows without both kinds of patch


def localization_auc(scores: Tensor, gt_mask: Tensor) -> Tensor:
    """Per clip, the probability that a random sounding patch outscores a random other patch.

    The Mann-Whitney AUC over each row's patches (ties count one half), computed from average
    ranks, vectorised over the batch. It depends only on the order of the scores, so maps of any
    sharpness (an AVM softmax at β = 0.4, raw cosines) compare on one scale. Chance is 0.5.

    Args:
        scores: ``(B, N)`` any real scores. gt_mask: ``(B, N)`` bool.

    Returns:
        ``(B',)`` over the rows with at least one sounding and one other patch.
    """
    auc = auc_rows(scores, gt_mask)
    return auc[~torch.isnan(auc)]


@dataclass
class LocalizationScore:
    """How well a set of maps falls on the sounding patches.

    Attributes:
        share: mean over clips of the share of the map on the sounding patches.
        chance: what a uniform map scores: the mean over clips of the sounding patches' area share.
        lift: ``share / chance`` (1 = no localization).
        auc: mean :func:`localization_auc` (chance 0.5); ``nan`` when not computed.
        n_clips: clips with at least one sounding patch (the others are left out).
    """

    share: float
    chance: float
    lift: float
    auc: float
    n_clips: int

    def to_dict(self) -> dict:
        return asdict(self)


def localization_score(imp: Tensor, gt_mask: Tensor, scores: Optional[Tensor] = None) -> LocalizationScore:
    """The localization score of maps against ground truth, with its chance level.

    Args:
        imp: ``(B, N)`` non-negative maps (e.g. :func:`cosine_importance`, AVM importance).
        gt_mask: ``(B, N)`` bool sounding patches; clips without any are left out.
        scores: optional ``(B, N)`` scores for the AUC; default ``imp`` (a softmax keeps the order,
            so both give the same AUC).

    Returns:
        A :class:`LocalizationScore`. A map equal to the normalised mask scores ``share = 1``;
        a uniform map scores ``share = chance``. With no clip left, every field is ``nan``
        and ``n_clips = 0``.
    """
    share, _ = importance_share(imp, gt_mask)
    n = int(share.numel())
    if n == 0:
        nan = float("nan")
        return LocalizationScore(nan, nan, nan, nan, 0)
    gt = gt_mask[gt_mask.any(dim=1)].float()
    chance = float((gt.sum(1) / gt.shape[1]).mean())
    auc = localization_auc(imp if scores is None else scores, gt_mask)
    s = float(share.mean())
    return LocalizationScore(s, chance, s / chance, float(auc.mean()) if auc.numel() else float("nan"), n)


def localization_forgetting(matrix: "np.ndarray | Tensor", n_tasks: Optional[int] = None) -> float:
    """Textbook forgetting of a localization-score matrix.

    Args:
        matrix: ``(R, C)``; entry ``[t, i]`` is the score on task ``i``'s clips after training
            experience ``t`` (``NaN`` where unknown).
        n_tasks: leading task columns considered; default ``min(R, C)``.

    Returns:
        ``mean over i < R-1 of max over t in [i, R-2] of (L[t, i] - L[R-1, i])``, as
        :func:`~avalanche_av.evaluation.functional.forgetting`; ``NaN`` with fewer than 2 rows.
    """
    return forgetting(matrix, n_tasks)
