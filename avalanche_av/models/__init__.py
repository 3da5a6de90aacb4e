"""Models: the CAV-MAE-family backbone, its presets and STELLA's AVM module."""
from .av_mae import AVMAE, AVMAEConfig, AVMAEOutput, FusionBlock, info_nce
from .avm import AVMatching, AVMOutput, avm_loss, derangement, importance, make_avm_pairs
from .debug import debug_checks, debug_checks_enabled, set_debug_checks
from .presets import PRESETS, create_model, get_config, list_presets

__all__ = [
    "AVMAE",
    "AVMatching",
    "AVMOutput",
    "avm_loss",
    "derangement",
    "importance",
    "make_avm_pairs",
    "AVMAEConfig",
    "AVMAEOutput",
    "FusionBlock",
    "info_nce",
    "PRESETS",
    "create_model",
    "get_config",
    "list_presets",
    "debug_checks",
    "debug_checks_enabled",
    "set_debug_checks",
]
