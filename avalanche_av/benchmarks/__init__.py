"""Benchmarks: the built-in synthetic stream and (later) Continual-VS / Continual-AS."""
from .synthetic import SoundingObjectsConfig, generate_sounding_objects, sounding_objects, write_sounding_objects
from .real import continual_as, continual_vs

__all__ = [
    "SoundingObjectsConfig",
    "generate_sounding_objects",
    "sounding_objects",
    "write_sounding_objects",
    "continual_vs",
    "continual_as",
]
