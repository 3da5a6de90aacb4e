"""Avalanche plugins for audio-video continual pre-training.

Every memory-based method derives from :class:`OnlineMemoryPlugin` (one online reservoir,
an injectable storage policy, named minibatch fields); see ``docs/training.md``.
"""
from .ewc import SSLEWCPlugin
from .memory import OnlineMemoryPlugin, check_mem_size
from .gmed import GMEDPlugin
from .mir import MIRPlugin
from .replay import DERPlugin, ERPlugin, OnlineReplayPlugin
from .stella import StellaPlugin, StellaScores, StellaStep, StellaStepStats
from .clser import CLSERPlugin
from .esmer import ESMERPlugin
from .lump import LUMPPlugin
from .agem import SSLAGEMPlugin
from .experience_replay import ResumableReplayPlugin, ResumableReservoirSamplingBuffer
from .seeded_loaders import EpochSeededReplayDataLoader, SeededGroupBalancedInfiniteDataLoader
from .distillation import SSLFeatureDistillationPlugin, SSLLFLPlugin, SSLLwFPlugin
from .regularization import SSLMASPlugin, SSLRWalkPlugin, SSLSynapticIntelligencePlugin

__all__ = [
    "OnlineMemoryPlugin",
    "check_mem_size",
    "SSLEWCPlugin",
    "ResumableReplayPlugin",
    "ResumableReservoirSamplingBuffer",
    "EpochSeededReplayDataLoader",
    "SeededGroupBalancedInfiniteDataLoader",
    "OnlineReplayPlugin",
    "ERPlugin",
    "DERPlugin",
    "MIRPlugin",
    "GMEDPlugin",
    "StellaPlugin",
    "StellaStep",
    "StellaScores",
    "StellaStepStats",
    "CLSERPlugin",
    "LUMPPlugin",
    "ESMERPlugin",
    "SSLSynapticIntelligencePlugin",
    "SSLMASPlugin",
    "SSLRWalkPlugin",
    "SSLLwFPlugin",
    "SSLLFLPlugin",
    "SSLFeatureDistillationPlugin",
    "SSLAGEMPlugin",
]
