"""avalanche-av: continual audio-video self-supervised pre-training for Avalanche.

Subpackages mirror Avalanche: :mod:`avalanche_av.benchmarks`, :mod:`avalanche_av.models`,
:mod:`avalanche_av.training` and :mod:`avalanche_av.evaluation`.
"""
import warnings as _warnings

# Avalanche imports qpsolvers, which warns at import time when no QP solver is installed.
# None of our strategies needs one.
_warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

__version__ = "0.1.0"
