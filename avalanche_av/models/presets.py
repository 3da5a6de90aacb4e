"""Model presets, timm-style: a name maps to an :class:`AVMAEConfig`.

=============== ======== ================ ====================== ============== =========
preset          blocks   video            audio fbank            width/heads    decoder
=============== ======== ================ ====================== ============== =========
``tiny``        2 + 1    4 x 64²  (64 tok) 128 x 64  (32 tok)     128 / 4        1 x 64
``base``        10 + 2   4 x 224² (784)   1024 x 128 (512 tok)   768 / 12       8 x 512
``cav_mae_base`` 11 + 1  1 x 224² (196)   1024 x 128 (512 tok)   768 / 12       8 x 512
=============== ======== ================ ====================== ============== =========

``base`` is STELLA's layout (mask ratio 0.8, λ = 0.1). ``cav_mae_base`` is the original
CAV-MAE layout its released checkpoints use (mask ratio 0.75, as CAV-MAE pre-trained).
``tiny`` is for tests and the CPU demo; it deviates on purpose (documented in docs/models.md):
mask ratio 0.75 and λ = 1 (λ = 0.1 learned worse at this size), and per-frame positional
embeddings so the synthetic stream's timing cue is visible.
"""
from __future__ import annotations

from .av_mae import AVMAE, AVMAEConfig

__all__ = ["PRESETS", "get_config", "create_model", "list_presets"]

PRESETS: dict[str, AVMAEConfig] = {
    "tiny": AVMAEConfig(
        audio_length=128, num_mel_bins=64, n_frames=4, image_size=64, patch_size=16,
        embed_dim=128, num_heads=4, modality_depth=2, shared_depth=1, mlp_ratio=4.0,
        decoder_dim=64, decoder_depth=1, decoder_heads=4, mask_ratio=0.75,
        contrastive_weight=1.0, temperature=0.05, frame_pos_embed=True,
    ),
    "base": AVMAEConfig(),
    "cav_mae_base": AVMAEConfig(n_frames=1, modality_depth=11, shared_depth=1, mask_ratio=0.75),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> AVMAEConfig:
    """The preset's config, with field overrides (``ValueError`` names the allowed ones)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; allowed: {list_presets()}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def create_model(name: str = "tiny", **overrides) -> AVMAE:
    """Build an :class:`AVMAE` from a preset name, e.g. ``create_model('base', n_frames=8)``."""
    return AVMAE(get_config(name, **overrides))
