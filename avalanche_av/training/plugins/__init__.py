"""Avalanche plugins for audio-video continual pre-training."""
from .ewc import SSLEWCPlugin
from .replay import DERPlugin, OnlineReplayPlugin
from .stella import StellaPlugin, StellaStepStats

__all__ = ["SSLEWCPlugin", "OnlineReplayPlugin", "DERPlugin", "StellaPlugin", "StellaStepStats"]
