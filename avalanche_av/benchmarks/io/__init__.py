"""Real-data I/O: decoding clips, the CAV-MAE front ends, manifests and the clip dataset.

decord is optional (x86_64 wheels only) and imported lazily; PyAV and soundfile
cover every format without it.
"""
from avalanche_av.benchmarks.io.audio import (
    AUDIO_FILE_SUFFIXES,
    MAX_AUDIO_CHANNELS,
    check_audio_stream,
    load_audio,
    load_fbank,
)
from avalanche_av.benchmarks.io.audio_frontend import (
    FBANK_MEAN,
    FBANK_STD,
    SAMPLE_RATE,
    augment_fbank,
    waveform_to_fbank,
)
from avalanche_av.benchmarks.io.dataset import AVClipDataset, probe_clip, scan_clips
from avalanche_av.benchmarks.io.errors import BAD_CATEGORIES, ClipDecodeError, ManifestError, categorise_reason
from avalanche_av.benchmarks.io.isolation import ContainedPool, JobOutcome, run_contained
from avalanche_av.benchmarks.io.manifest import (
    LABEL_COLUMNS,
    MANIFEST_KEYS,
    ManifestFileReport,
    check_manifest_files,
    labels_to_targets,
    load_manifest_entries,
    manifest_to_entries,
    read_label_csv,
    read_manifest,
    write_label_csv,
    write_manifest,
)
from avalanche_av.benchmarks.io.video import (
    crop_resize_frames,
    decode_frames,
    list_frame_files,
    load_video_frames,
    multiscale_crop_box,
    resize_frames,
    sample_frame_indices,
)
from avalanche_av.benchmarks.io.writer import write_av_clip, write_wav

__all__ = [
    "AUDIO_FILE_SUFFIXES",
    "AVClipDataset",
    "BAD_CATEGORIES",
    "ClipDecodeError",
    "ContainedPool",
    "FBANK_MEAN",
    "FBANK_STD",
    "JobOutcome",
    "LABEL_COLUMNS",
    "MANIFEST_KEYS",
    "MAX_AUDIO_CHANNELS",
    "ManifestError",
    "ManifestFileReport",
    "SAMPLE_RATE",
    "augment_fbank",
    "categorise_reason",
    "check_audio_stream",
    "check_manifest_files",
    "crop_resize_frames",
    "decode_frames",
    "labels_to_targets",
    "list_frame_files",
    "load_audio",
    "load_fbank",
    "load_manifest_entries",
    "load_video_frames",
    "manifest_to_entries",
    "multiscale_crop_box",
    "probe_clip",
    "read_label_csv",
    "read_manifest",
    "resize_frames",
    "run_contained",
    "sample_frame_indices",
    "scan_clips",
    "waveform_to_fbank",
    "write_av_clip",
    "write_label_csv",
    "write_manifest",
    "write_wav",
]
