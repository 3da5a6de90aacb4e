"""Benchmarks: the built-in synthetic stream and (later) Continual-VS / Continual-AS."""
from .synthetic import SoundingObjectsConfig, sounding_objects, write_sounding_objects

__all__ = ["SoundingObjectsConfig", "sounding_objects", "write_sounding_objects"]
