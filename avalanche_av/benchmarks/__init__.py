"""Benchmarks: the built-in synthetic stream and Continual-VS / Continual-AS from local copies.

Every builder returns an :class:`AVBenchmark` (the Avalanche scenario plus retrieval sets,
clip and class tables and a :class:`DataReport`); ``bench.train_stream`` and
``bench.test_stream`` are its Avalanche streams.
"""
from .base import AVBenchmark, DataReport, RealAVBenchmark, SyntheticAVBenchmark
from .real import REAL_BENCHMARKS, continual_as, continual_vs, real_benchmark
from .synthetic import SoundingObjectsConfig, generate_sounding_objects, sounding_objects, write_sounding_objects

__all__ = [
    "AVBenchmark",
    "DataReport",
    "RealAVBenchmark",
    "SyntheticAVBenchmark",
    "SoundingObjectsConfig",
    "generate_sounding_objects",
    "sounding_objects",
    "write_sounding_objects",
    "REAL_BENCHMARKS",
    "continual_vs",
    "continual_as",
    "real_benchmark",
]
