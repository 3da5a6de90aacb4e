"""Real benchmarks from local dataset copies: Continual-VS (VGGSound) and Continual-AS (AudioSet).

Nothing is downloaded. See ``docs/datasets.md`` for the expected layouts and
:func:`~avalanche_av.benchmarks.prepare.prepare` for the decoding cache.
"""
from .continual import RealBenchmarkConfig, benchmark_stats, continual_as, continual_vs, format_stats, order_key
from .dataset import RealClipDataset, fbank_from_npy, pad_normalise_fbank
from .fake import FakeDataset, fake_clip_content, make_fake_audioset, make_fake_vggsound
from .registry import REAL_BENCHMARKS, parse_benchmark_name, real_benchmark
from .readers import (
    AUDIOSET_COLUMNS,
    AUDIOSET_NAME_FORMATS,
    VGGSOUND_COLUMNS,
    ClipLookupReport,
    DatasetLayout,
    audioset_clip_names,
    find_layout,
    locate_clips,
    read_audioset_ontology,
    read_audioset_segments,
    read_prepared_cache,
    read_vggsound_csv,
    vggsound_clip_name,
)
from .tasks import DEFAULT, TaskDefinition, load_task_definition, vggsound_stat

__all__ = [
    "AUDIOSET_COLUMNS",
    "AUDIOSET_NAME_FORMATS",
    "DEFAULT",
    "VGGSOUND_COLUMNS",
    "ClipLookupReport",
    "DatasetLayout",
    "REAL_BENCHMARKS",
    "FakeDataset",
    "RealBenchmarkConfig",
    "RealClipDataset",
    "TaskDefinition",
    "audioset_clip_names",
    "benchmark_stats",
    "continual_as",
    "continual_vs",
    "fake_clip_content",
    "fbank_from_npy",
    "find_layout",
    "format_stats",
    "load_task_definition",
    "locate_clips",
    "make_fake_audioset",
    "make_fake_vggsound",
    "order_key",
    "pad_normalise_fbank",
    "parse_benchmark_name",
    "read_audioset_ontology",
    "read_audioset_segments",
    "read_prepared_cache",
    "read_vggsound_csv",
    "real_benchmark",
    "vggsound_clip_name",
    "vggsound_stat",
]
