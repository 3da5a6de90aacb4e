"""avalanche-av: continual audio-video self-supervised pre-training for Avalanche.

Subpackages mirror Avalanche: :mod:`avalanche_av.benchmarks`, :mod:`avalanche_av.models`,
:mod:`avalanche_av.training` and :mod:`avalanche_av.evaluation`. Importing the package
changes no global state (warning filters included); only the ``avalanche-av`` command sets
its own filters, for the duration of the command.
"""

__version__ = "0.1.0"
