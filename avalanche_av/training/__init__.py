"""Training: the AVPretraining template, named strategies, plugins and checkpoints."""
from .checkpoint import load_checkpoint, save_checkpoint
from ..models.inputs import PatchBatch, prepare_audio, prepare_video
from .strategies import STRATEGIES, list_strategies, make_plugins, register_strategy
from .template import AVPretraining, NonFiniteLossError, default_optimizer

__all__ = [
    "AVPretraining",
    "NonFiniteLossError",
    "default_optimizer",
    "PatchBatch",
    "prepare_audio",
    "prepare_video",
    "STRATEGIES",
    "list_strategies",
    "make_plugins",
    "register_strategy",
    "save_checkpoint",
    "load_checkpoint",
]
