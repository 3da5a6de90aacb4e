"""CAV-MAE-family audio-video masked autoencoder, with patch-subset inputs.

The backbone is the one STELLA pre-trains (paper Sec. 3.1, its objectives in Appendix C).

Shapes used throughout (base preset in brackets):

* ``Na``  audio patches of the full clip [512 = 64 time x 8 freq], patch vector ``Pa = p*p`` [256]
* ``Nv``  video patches of the full clip [784 = 4 frames x 14 x 14], ``Pv = 3*p*p`` [768]
* ``Ka``/``Kv`` patches in the per-sample subset the encoder/decoder see
  (all patches without STELLA; ``ρ·N`` with it)
* ``D`` encoder width [768], ``Dd`` decoder width [512]

Three forward paths, as in CAV-MAE:

* **Masked autoencoding** (:meth:`AVMAE.forward` / :meth:`AVMAE.forward_patches`): visible tokens
  of both modalities go through the modality blocks, then jointly through the shared blocks and
  into the decoder, which runs one pass per modality with that modality's mask token.
* **Unimodal** (contrastive term, DER "logits", retrieval): each modality alone through the
  shared blocks with its own LayerNorms, then mean-pooled.
* **Joint, unmasked** (:meth:`AVMAE.forward_joint`): the full ``[audio; video]`` sequence through
  the shared blocks, outputs taken before the final norm. This feeds STELLA's AVM module.

Patch subsets. ``forward_patches`` takes gathered patches plus their *original* indices
``(B, K)``; every token gets the positional embedding of its original index. Masking happens
inside the subset: ``floor((1 - mask_ratio) * N_full)`` tokens are visible (the same count as
without a subset, as in the authors' code; docs/models.md "Patch subsets"), the rest of the
subset is masked, decoded and scored. Without a subset, the subset is the whole clip and this is
plain MAE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention

from .distributed import gather_rows, gathering_negatives
from .debug import debug_checks_enabled
from .patching import (
    gather_patches,
    patchify_audio,
    patchify_video,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
)

__all__ = ["AVMAEConfig", "AVMAE", "AVMAEOutput", "FusionBlock", "info_nce"]


@dataclass(frozen=True)
class AVMAEConfig:
    """All shape and loss knobs of :class:`AVMAE`. Presets live in :mod:`avalanche_av.models.presets`."""

    audio_length: int = 1024  #: fbank frames T
    num_mel_bins: int = 128  #: fbank mel bins F
    n_frames: int = 4
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    num_heads: int = 12
    modality_depth: int = 10  #: blocks per modality before the shared blocks
    shared_depth: int = 2  #: shared (fusion) blocks
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.8
    contrastive_weight: float = 0.1  #: λ in L = ℓ_r + λ·ℓ_c
    temperature: float = 0.05  #: τ of the InfoNCE
    norm_pix_loss: bool = True
    #: Extension beyond the paper (off in ``base``/``cav_mae_base``; docs/deviations.md): add a 1-D
    #: sin-cos embedding of the frame index to video tokens, so the model can tell frames apart.
    #: CAV-MAE repeats the 2-D embedding over frames; the tiny synthetic stream's timing cue needs
    #: frame identity.
    frame_pos_embed: bool = False

    def __post_init__(self) -> None:
        p = self.patch_size
        checks = {
            "audio_length": self.audio_length % p == 0 and self.audio_length > 0,
            "num_mel_bins": self.num_mel_bins % p == 0 and self.num_mel_bins > 0,
            "image_size": self.image_size % p == 0 and self.image_size > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive multiple of patch_size={p}")
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {self.n_frames}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.embed_dim % self.num_heads or self.embed_dim % 4:
            raise ValueError(
                f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads} and by 4"
            )
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ValueError(
                f"decoder_dim={self.decoder_dim} must be divisible by decoder_heads={self.decoder_heads} and by 4"
            )
        if self.modality_depth < 0 or self.shared_depth < 1 or self.decoder_depth < 1:
            raise ValueError("need modality_depth >= 0, shared_depth >= 1 and decoder_depth >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    # Derived shapes -------------------------------------------------------------------------
    @property
    def n_time(self) -> int:
        return self.audio_length // self.patch_size

    @property
    def n_freq(self) -> int:
        return self.num_mel_bins // self.patch_size

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_audio_patches(self) -> int:
        return self.n_time * self.n_freq

    @property
    def num_video_patches(self) -> int:
        return self.n_frames * self.grid * self.grid

    @property
    def audio_patch_dim(self) -> int:
        return self.patch_size**2

    @property
    def video_patch_dim(self) -> int:
        return 3 * self.patch_size**2

    def num_visible(self, n_full: int, mask_ratio: Optional[float] = None) -> int:
        """Visible tokens for a clip of ``n_full`` patches: ``floor((1 - mask_ratio) * n_full)``, at least 1.

        The floor matches the authors' code and CAV-MAE (``int(L * (1 - mask_ratio))``): 156 of 784
        video tokens and 102 of 512 audio tokens in ``base``. A 1e-9 tolerance keeps float error in
        ``1 - mask_ratio`` from dropping a token where the exact product is an integer: a bare
        ``int()`` gives 1 for ``mask_ratio=0.8, n_full=10``, this gives 2.
        """
        r = self.mask_ratio if mask_ratio is None else mask_ratio
        return max(1, math.floor((1.0 - r) * n_full + 1e-9))

    def replace(self, **overrides) -> "AVMAEConfig":
        known = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown AVMAEConfig field(s) {bad}; allowed: {sorted(known)}")
        return AVMAEConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **overrides})


class FusionBlock(nn.Module):
    """Pre-norm transformer block with a joint LayerNorm and one per modality (CAV-MAE's shared block).

    ``forward(x, modality)`` picks ``norm1``/``norm2`` (joint), ``norm1_a``/``norm2_a`` or
    ``norm1_v``/``norm2_v``; attention and MLP weights are shared. Parameter names follow
    CAV-MAE so released checkpoints map one to one. Modality-specific blocks use the same class
    and only ever take the joint norms.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, modality_norms: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if modality_norms:
            self.norm1_a, self.norm2_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.norm1_v, self.norm2_v = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, modality: Optional[str] = None) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, N, D)``; ``modality`` is ``None`` (joint), ``'a'`` or ``'v'``."""
        if modality is None:
            n1, n2 = self.norm1, self.norm2
        else:
            n1, n2 = getattr(self, f"norm1_{modality}"), getattr(self, f"norm2_{modality}")
        x = x + self.attn(n1(x))
        return x + self.mlp(n2(x))


class _PatchEmbed(nn.Module):
    """Linear patch embedding; equivalent to CAV-MAE's stride-p Conv2d on flattened patches."""

    def __init__(self, patch_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(patch_dim, dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj(patches)


def info_nce(emb_a: torch.Tensor, emb_v: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional InfoNCE on L2-normalised embeddings.

    Args:
        emb_a, emb_v: ``(B, D)``, already L2-normalised; row ``i`` of each is a positive pair.
        temperature: τ.

    Returns:
        ``(loss, per_sample)``: the scalar mean of the a→v and v→a cross-entropies, and
        ``(B,)`` per-sample values of the same.

    Inside :func:`avalanche_av.models.distributed.global_negatives` with several ranks, every
    rank's rows are negatives too (all-gathered; local rows keep their gradient and receive the
    other ranks' gradient), so ``per_sample`` equals the rows of a single-process InfoNCE over the
    concatenated batch (``docs/distributed.md``).
    """
    if gathering_negatives():
        return _info_nce_global(emb_a, emb_v, temperature)
    logits = emb_a @ emb_v.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    a2v = F.cross_entropy(logits.float(), target, reduction="none")
    v2a = F.cross_entropy(logits.float().t(), target, reduction="none")
    per_sample = 0.5 * (a2v + v2a)
    return per_sample.mean(), per_sample


def _info_nce_global(emb_a: torch.Tensor, emb_v: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`info_nce` of this rank's ``(R, D)`` rows against the rows of every rank."""
    both, offset = gather_rows(torch.cat([emb_a, emb_v], dim=1))
    d = emb_a.shape[1]
    all_a, all_v = both[:, :d], both[:, d:]
    target = torch.arange(offset, offset + emb_a.shape[0], device=emb_a.device)
    a2v = F.cross_entropy((emb_a @ all_v.t() / temperature).float(), target, reduction="none")
    v2a = F.cross_entropy((emb_v @ all_a.t() / temperature).float(), target, reduction="none")
    per_sample = 0.5 * (a2v + v2a)
    return per_sample.mean(), per_sample


@dataclass
class AVMAEOutput:
    """What one masked-autoencoding forward returns. All tensors keep their graph.

    ``pooled_a``/``pooled_v`` are the mean-pooled unimodal embeddings of the masked (and selected)
    view before L2 normalisation: DER's "logits". ``emb_a``/``emb_v`` are their normalised
    versions used by the contrastive term. The ``*_unmasked`` fields are filled by the template
    during evaluation (retrieval embeddings), not by the model.
    """

    loss: torch.Tensor  #: ()  ℓ_r + λ·ℓ_c
    loss_rec: torch.Tensor  #: ()  ℓ_r = ℓ_r,a + ℓ_r,v
    loss_rec_a: torch.Tensor
    loss_rec_v: torch.Tensor
    loss_c: torch.Tensor  #: ()  InfoNCE
    per_sample_loss: torch.Tensor  #: (B,) same objective per sample (MIR/ESMER use it)
    pooled_a: torch.Tensor  #: (B, D)
    pooled_v: torch.Tensor  #: (B, D)
    emb_a: torch.Tensor  #: (B, D) L2-normalised
    emb_v: torch.Tensor  #: (B, D)
    audio_idx: torch.Tensor  #: (B, Ka) original indices of the subset
    video_idx: torch.Tensor  #: (B, Kv)
    audio_masked_idx: torch.Tensor  #: (B, Ka - n_visible_a) original indices that were reconstructed
    video_masked_idx: torch.Tensor  #: (B, Kv - n_visible_v)
    emb_a_unmasked: Optional[torch.Tensor] = None  #: (B, D) filled at eval
    emb_v_unmasked: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)


class AVMAE(nn.Module):
    """Audio-video masked autoencoder with contrastive alignment (CAV-MAE family).

    Args:
        config: an :class:`AVMAEConfig`; see :func:`avalanche_av.models.create_model` for presets.

    Inputs everywhere: ``audio (B, T, F)`` normalised fbank, ``video (B, n_frames, 3, H, W)``
    ImageNet-normalised float frames.
    """

    def __init__(self, config: AVMAEConfig):
        super().__init__()
        self.config = c = config
        d = c.embed_dim
        self.patch_embed_a = _PatchEmbed(c.audio_patch_dim, d)
        self.patch_embed_v = _PatchEmbed(c.video_patch_dim, d)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, d))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks_a = nn.ModuleList(
            FusionBlock(d, c.num_heads, c.mlp_ratio, modality_norms=False) for _ in range(c.modality_depth)
        )
        self.blocks_v = nn.ModuleList(
            FusionBlock(d, c.num_heads, c.mlp_ratio, modality_norms=False) for _ in range(c.modality_depth)
        )
        self.blocks_u = nn.ModuleList(FusionBlock(d, c.num_heads, c.mlp_ratio) for _ in range(c.shared_depth))
        self.norm_a, self.norm_v, self.norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

        dd = c.decoder_dim
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token_a = nn.Parameter(torch.zeros(1, 1, dd))
        self.mask_token_v = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_blocks = nn.ModuleList(
            FusionBlock(dd, c.decoder_heads, c.mlp_ratio, modality_norms=False) for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred_a = nn.Linear(dd, c.audio_patch_dim)
        self.decoder_pred_v = nn.Linear(dd, c.video_patch_dim)

        # Fixed sin-cos tables are buffers, not parameters: nothing to optimise, and Avalanche's
        # optimizer reset cannot pick them up. Non-persistent: they follow from the config.
        self.register_buffer("pos_embed_a", self._audio_pos(d), persistent=False)
        self.register_buffer("pos_embed_v", self._video_pos(d), persistent=False)
        self.register_buffer("decoder_pos_embed_a", self._audio_pos(dd), persistent=False)
        self.register_buffer("decoder_pos_embed_v", self._video_pos(dd), persistent=False)
        self._init_weights()

    # ------------------------------------------------------------------ construction helpers
    def _audio_pos(self, dim: int) -> torch.Tensor:
        # time fills the first half, as in CAV-MAE's table on the (freq, time) image
        return sincos_pos_embed_2d(dim, self.config.n_time, self.config.n_freq, first="row")  # (Na, dim)

    def _video_pos(self, dim: int) -> torch.Tensor:
        c = self.config
        frame = sincos_pos_embed_2d(dim, c.grid, c.grid, first="col")  # (g*g, dim), MAE's convention
        pos = frame.repeat(c.n_frames, 1)  # (Nv, dim), frame-major like the patch order
        if c.frame_pos_embed:
            t = torch.from_numpy(sincos_pos_embed_1d(dim, torch.arange(c.n_frames).numpy())).float()
            pos = pos + t.repeat_interleave(c.grid * c.grid, dim=0)
        return pos

    def _init_weights(self) -> None:
        for p in (self.modality_a, self.modality_v, self.decoder_modality_a, self.decoder_modality_v,
                  self.mask_token_a, self.mask_token_v):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ input helpers
    def patchify(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,T,F)``, ``(B,n,3,H,W)`` -> audio ``(B, Na, Pa)``, video ``(B, Nv, Pv)``; checks shapes."""
        self._check_inputs(audio, video)
        p = self.config.patch_size
        return patchify_audio(audio, p), patchify_video(video, p)

    def _check_inputs(self, audio: torch.Tensor, video: torch.Tensor) -> None:
        c = self.config
        want_a = (c.audio_length, c.num_mel_bins)
        want_v = (c.n_frames, 3, c.image_size, c.image_size)
        if audio.dim() != 3 or tuple(audio.shape[1:]) != want_a:
            raise ValueError(f"audio must be (B, {want_a[0]}, {want_a[1]}), got {tuple(audio.shape)}")
        if video.dim() != 5 or tuple(video.shape[1:]) != want_v:
            raise ValueError(f"video must be (B, {', '.join(map(str, want_v))}), got {tuple(video.shape)}")
        if audio.shape[0] != video.shape[0]:
            raise ValueError(f"audio and video batch sizes differ: {audio.shape[0]} vs {video.shape[0]}")

    def _embed(self, patches: torch.Tensor, idx: torch.Tensor, modality: str) -> torch.Tensor:
        """Patch + positional (of the original index) + modality embedding: ``(B,K,P)`` -> ``(B,K,D)``."""
        embed = self.patch_embed_a if modality == "a" else self.patch_embed_v
        pos = self.pos_embed_a if modality == "a" else self.pos_embed_v
        mod = self.modality_a if modality == "a" else self.modality_v
        return embed(patches) + pos[idx].to(patches.dtype) + mod

    def _modality_blocks(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        for blk in self.blocks_a if modality == "a" else self.blocks_v:
            x = blk(x)
        return x

    def _shared(self, x: torch.Tensor, modality: Optional[str]) -> torch.Tensor:
        for blk in self.blocks_u:
            x = blk(x, modality)
        return x

    def _pool_unimodal(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Modality tokens ``(B,K,D)`` -> shared blocks with that modality's norms -> mean ``(B,D)``."""
        norm = self.norm_a if modality == "a" else self.norm_v
        return norm(self._shared(x, modality)).mean(dim=1)

    # ------------------------------------------------------------------ public paths
    def encode_modalities(
        self,
        audio_patches: torch.Tensor,
        audio_idx: torch.Tensor,
        video_patches: torch.Tensor,
        video_idx: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the modality-specific blocks: -> ``(B, Ka, D)``, ``(B, Kv, D)``."""
        a = self._modality_blocks(self._embed(audio_patches, audio_idx, "a"), "a")
        v = self._modality_blocks(self._embed(video_patches, video_idx, "v"), "v")
        return a, v

    def fuse(self, a_tokens: torch.Tensor, v_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint pass of ``[audio; video]`` through the shared blocks, **before** the final norm.

        ``(B, Ka, D)``, ``(B, Kv, D)`` -> the same shapes. This is the AVM's input.
        """
        ka = a_tokens.shape[1]
        x = self._shared(torch.cat([a_tokens, v_tokens], dim=1), None)
        return x[:, :ka], x[:, ka:]

    def forward_joint(
        self, audio: torch.Tensor, video: torch.Tensor, video_perm: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmasked joint features for the AVM: ``(B, Na, D)``, ``(B, Nv, D)``.

        ``video_perm (B,)`` optionally re-pairs video with audio *after* the modality blocks and
        before fusion (how the AVM's negatives are built). Callers wrap this in ``no_grad``.
        """
        pa, pv = self.patchify(audio, video)
        a, v = self.encode_modalities(pa, self._full_idx(pa), pv, self._full_idx(pv))
        if video_perm is not None:
            v = v[video_perm]
        return self.fuse(a, v)

    def encode_full(
        self, audio_patches: torch.Tensor, video_patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmasked modality-specific pass over every patch (the first half of the joint pass).

        ``(B, Na, Pa)``, ``(B, Nv, Pv)`` patches from :meth:`patchify` -> modality tokens
        ``(B, Na, D)``, ``(B, Nv, D)``. Follow with :meth:`fuse` for the AVM's input; STELLA runs
        both without gradients to score patches.
        """
        return self.encode_modalities(
            audio_patches, self._full_idx(audio_patches), video_patches, self._full_idx(video_patches)
        )

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Unmasked unimodal audio embedding, mean-pooled and L2-normalised: ``(B,T,F)`` -> ``(B, D)``."""
        pa = patchify_audio(audio, self.config.patch_size)
        a = self._modality_blocks(self._embed(pa, self._full_idx(pa), "a"), "a")
        return F.normalize(self._pool_unimodal(a, "a"), dim=-1)

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """Unmasked unimodal video embedding: ``(B, n, 3, H, W)`` -> ``(B, D)``, L2-normalised."""
        pv = patchify_video(video, self.config.patch_size)
        v = self._modality_blocks(self._embed(pv, self._full_idx(pv), "v"), "v")
        return F.normalize(self._pool_unimodal(v, "v"), dim=-1)

    def embed(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Retrieval embeddings (paper Sec. 5 "Evaluation Protocol"; docs/metrics.md).

        Both ``(B, D)``, unmasked, L2-normalised.
        """
        self._check_inputs(audio, video)
        return self.embed_audio(audio), self.embed_video(video)

    @staticmethod
    def _full_idx(patches: torch.Tensor) -> torch.Tensor:
        b, n = patches.shape[:2]
        return torch.arange(n, device=patches.device).unsqueeze(0).expand(b, n)

    def forward(
        self,
        audio: torch.Tensor,
        video: torch.Tensor,
        audio_idx: Optional[torch.Tensor] = None,
        video_idx: Optional[torch.Tensor] = None,
        mask_ratio: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> AVMAEOutput:
        """Masked-autoencoding forward on full clips, optionally restricted to patch subsets.

        Args:
            audio: ``(B, T, F)``. video: ``(B, n_frames, 3, H, W)``.
            audio_idx: ``(B, Ka)`` long, original audio patch indices to keep (unique per row);
                ``None`` keeps all ``Na``.
            video_idx: ``(B, Kv)`` likewise for video.
            mask_ratio: overrides ``config.mask_ratio``.
            generator: RNG for the random masking (evaluation passes a seeded one).
        """
        pa, pv = self.patchify(audio, video)
        if audio_idx is None:
            audio_idx = self._full_idx(pa)
        else:
            self._check_index_range(audio_idx, pa.shape[1], "audio")
            pa = gather_patches(pa, audio_idx)
        if video_idx is None:
            video_idx = self._full_idx(pv)
        else:
            self._check_index_range(video_idx, pv.shape[1], "video")
            pv = gather_patches(pv, video_idx)
        return self.forward_patches(pa, audio_idx, pv, video_idx, mask_ratio=mask_ratio, generator=generator)

    def forward_patches(
        self,
        audio_patches: torch.Tensor,
        audio_idx: torch.Tensor,
        video_patches: torch.Tensor,
        video_idx: torch.Tensor,
        mask_ratio: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> AVMAEOutput:
        """Masked-autoencoding forward on gathered patches (STELLA+ memory stores exactly these).

        Args:
            audio_patches: ``(B, Ka, Pa)`` raw (un-embedded) patches; ``audio_idx (B, Ka)`` their
                original indices in ``[0, Na)``.
            video_patches: ``(B, Kv, Pv)``; ``video_idx (B, Kv)``.

        Visible tokens per modality: ``config.num_visible(N_full)``; must be ``< K`` so that at
        least one patch of the subset is reconstructed.

        Index values are checked to lie in ``[0, N)`` only with the debug checks on
        (:func:`avalanche_av.models.set_debug_checks`, ``AVALANCHE_AV_DEBUG_CHECKS=1``): the
        check reads them on the host, a sync per step on a GPU. Shapes and dtypes are always
        checked.
        """
        c = self.config
        b = audio_patches.shape[0]
        self._check_subset(audio_patches, audio_idx, c.num_audio_patches, c.audio_patch_dim, "audio")
        self._check_subset(video_patches, video_idx, c.num_video_patches, c.video_patch_dim, "video")
        if video_patches.shape[0] != b:
            raise ValueError(f"audio and video batch sizes differ: {b} vs {video_patches.shape[0]}")
        nva = c.num_visible(c.num_audio_patches, mask_ratio)
        nvv = c.num_visible(c.num_video_patches, mask_ratio)

        vis_a, msk_a = self._split_visible(audio_idx.shape[1], nva, b, audio_patches.device, generator, "audio")
        vis_v, msk_v = self._split_visible(video_idx.shape[1], nvv, b, video_patches.device, generator, "video")
        idx_vis_a, idx_msk_a = torch.gather(audio_idx, 1, vis_a), torch.gather(audio_idx, 1, msk_a)
        idx_vis_v, idx_msk_v = torch.gather(video_idx, 1, vis_v), torch.gather(video_idx, 1, msk_v)

        a, v = self.encode_modalities(
            gather_patches(audio_patches, vis_a), idx_vis_a, gather_patches(video_patches, vis_v), idx_vis_v
        )
        # Joint path -> decoder.
        ja, jv = self.fuse(a, v)
        x = self.norm(torch.cat([ja, jv], dim=1))
        pred_a = self._decode(x[:, :nva], idx_vis_a, idx_msk_a, "a")  # (B, Ka - nva, Pa)
        pred_v = self._decode(x[:, nva:], idx_vis_v, idx_msk_v, "v")
        rec_a = self._rec_loss(pred_a, gather_patches(audio_patches, msk_a))  # (B,)
        rec_v = self._rec_loss(pred_v, gather_patches(video_patches, msk_v))

        # Unimodal path -> contrastive term and DER logits.
        pooled_a, pooled_v = self._pool_unimodal(a, "a"), self._pool_unimodal(v, "v")
        emb_a, emb_v = F.normalize(pooled_a.float(), dim=-1), F.normalize(pooled_v.float(), dim=-1)
        loss_c, c_per_sample = info_nce(emb_a, emb_v, c.temperature)

        lam = c.contrastive_weight
        per_sample = rec_a + rec_v + lam * c_per_sample
        return AVMAEOutput(
            loss=per_sample.mean(),
            loss_rec=(rec_a + rec_v).mean(),
            loss_rec_a=rec_a.mean(),
            loss_rec_v=rec_v.mean(),
            loss_c=loss_c,
            per_sample_loss=per_sample,
            pooled_a=pooled_a,
            pooled_v=pooled_v,
            emb_a=emb_a,
            emb_v=emb_v,
            audio_idx=audio_idx,
            video_idx=video_idx,
            audio_masked_idx=idx_msk_a,
            video_masked_idx=idx_msk_v,
        )

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_subset(patches: torch.Tensor, idx: torch.Tensor, n_full: int, pdim: int, name: str) -> None:
        if patches.dim() != 3 or patches.shape[-1] != pdim:
            raise ValueError(f"{name} patches must be (B, K, {pdim}), got {tuple(patches.shape)}")
        if idx.shape != patches.shape[:2]:
            raise ValueError(f"{name} indices must be (B, K)={tuple(patches.shape[:2])}, got {tuple(idx.shape)}")
        AVMAE._check_index_range(idx, n_full, name)

    @staticmethod
    def _check_index_range(idx: torch.Tensor, n_full: int, name: str) -> None:
        """Shape and dtype always; the value range only with the debug checks on
        (:mod:`avalanche_av.models.debug`): reading ``min``/``max`` is a host sync per call."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"{name} indices must be a (B, K) int64 tensor, got {tuple(idx.shape)} {idx.dtype}")
        if idx.numel() and debug_checks_enabled():
            lo, hi = torch.stack(torch.aminmax(idx)).tolist()  # one read for both ends
            if lo < 0 or hi >= n_full:
                raise ValueError(f"{name} indices must lie in [0, {n_full}), got [{lo}, {hi}]")

    @staticmethod
    def _split_visible(
        k: int, n_vis: int, b: int, device: torch.device, generator: Optional[torch.Generator], name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random visible/masked split of subset positions: ``(B, n_vis)``, ``(B, k - n_vis)``."""
        if n_vis >= k:
            raise ValueError(
                f"{name}: the subset keeps {k} patches but {n_vis} must stay visible (mask ratio of the "
                f"full clip); keep more patches (larger ρ) or raise mask_ratio so that something is masked"
            )
        gdev = generator.device if generator is not None else device
        noise = torch.rand(b, k, generator=generator, device=gdev).to(device)
        order = noise.argsort(dim=1)
        return order[:, :n_vis], order[:, n_vis:]

    def _decode(self, x_vis: torch.Tensor, idx_vis: torch.Tensor, idx_msk: torch.Tensor, modality: str) -> torch.Tensor:
        """One modality's decoder pass over the subset only; returns predictions for masked tokens."""
        b, nv, _ = x_vis.shape
        nm = idx_msk.shape[1]
        tok = self.mask_token_a if modality == "a" else self.mask_token_v
        pos = self.decoder_pos_embed_a if modality == "a" else self.decoder_pos_embed_v
        mod = self.decoder_modality_a if modality == "a" else self.decoder_modality_v
        y = self.decoder_embed(x_vis)
        y = torch.cat([y, tok.to(y.dtype).expand(b, nm, -1)], dim=1)
        y = y + pos[torch.cat([idx_vis, idx_msk], dim=1)].to(y.dtype) + mod
        for blk in self.decoder_blocks:
            y = blk(y)
        y = self.decoder_norm(y[:, nv:])
        head = self.decoder_pred_a if modality == "a" else self.decoder_pred_v
        return head(y)

    def _rec_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample MSE over masked patches only: ``(B, M, P)`` x2 -> ``(B,)``."""
        target = target.float()
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return ((pred.float() - target) ** 2).mean(dim=(1, 2))
