"""Training: the AVPretraining template, named strategies, plugins and checkpoints."""
from .checkpoint import load_checkpoint, save_checkpoint
from ..models.inputs import PatchBatch, prepare_audio, prepare_video
from .losses import embedding_penalty
from .strategies import (
    STRATEGIES,
    StrategySpec,
    list_strategies,
    make_plugins,
    memory_scope,
    register_strategy,
    strategy_options,
    validate_strategy_options,
)
from .template import AVPretraining, MemoryBlock, NonFiniteLossError, default_optimizer, require_av_template

__all__ = [
    "AVPretraining",
    "NonFiniteLossError",
    "default_optimizer",
    "PatchBatch",
    "prepare_audio",
    "prepare_video",
    "MemoryBlock",
    "require_av_template",
    "embedding_penalty",
    "STRATEGIES",
    "StrategySpec",
    "strategy_options",
    "validate_strategy_options",
    "list_strategies",
    "make_plugins",
    "memory_scope",
    "register_strategy",
    "save_checkpoint",
    "load_checkpoint",
]
