"""The built-in synthetic audio-video stream ("sounding objects", docs/synthetic.md).

``sounding_objects(...)`` returns an Avalanche benchmark of procedurally generated clips:
a few frames with several shapes on a noisy background, exactly one of which is the sound
source, plus a 16 kHz waveform turned into the CAV-MAE fbank. See
:func:`~avalanche_av.benchmarks.synthetic.benchmark.sounding_objects`.
"""
from .benchmark import (
    DISK_FRAME_REPEATS,
    SyntheticClipDataset,
    SyntheticStreamData,
    as_avalanche_dataset,
    generate_sounding_objects,
    sounding_objects,
    write_sounding_objects,
)
from .config import SoundingObjectsConfig
from .render import SHAPE_NAMES
from .scene import ClassTable, Scenes, build_classes, render_clips, sample_scenes, sounding_masks

__all__ = [
    "DISK_FRAME_REPEATS",
    "SHAPE_NAMES",
    "ClassTable",
    "Scenes",
    "SoundingObjectsConfig",
    "SyntheticClipDataset",
    "SyntheticStreamData",
    "as_avalanche_dataset",
    "build_classes",
    "generate_sounding_objects",
    "render_clips",
    "sample_scenes",
    "sounding_masks",
    "sounding_objects",
    "write_sounding_objects",
]
