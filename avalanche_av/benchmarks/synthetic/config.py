"""Generation knobs of the synthetic sounding-objects stream."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["SoundingObjectsConfig"]

#: Kaldi fbank window and hop at 16 kHz (25 ms / 10 ms), used to size the waveform.
_WIN = 400
_HOP = 160


@dataclass(frozen=True)
class SoundingObjectsConfig:
    """Every knob of :func:`sounding_objects`; the benchmark is a pure function of it.

    Stream layout:
        seed: master seed. Class definitions and every clip derive from it.
        n_tasks: experiences in the stream.
        classes_per_task: classes introduced by each task. A class is a pairing of one
            visual object identity (shape + colour) with one sound timbre.
        train_clips_per_class / eval_clips_per_class: clips per class in the training
            experience and in the task's retrieval (evaluation) set.

    Video:
        n_frames: frames per clip; frame ``j`` shows audio segment ``j`` of ``n_frames``
            equal segments.
        image_size: frame height = width, a multiple of ``patch_size``.
        patch_size: ViT patch side; ground-truth masks are on this grid.
        object_cells: an object occupies an ``object_cells x object_cells`` block of patch
            cells (1 at 64², e.g. 2-3 at 224²).
        n_objects: objects per clip: one source and ``n_objects - 1`` silent distractors.
        size_range: object half-extent as a fraction of its block's half side.
        distractor_flash_prob: per-frame probability that a distractor is bright. A
            distractor's bright pattern is never identical to the source's.
        bg_level_range: per-clip background grey level range (0-255), drawn per channel.
        bg_noise_std: std of the per-pixel, per-frame Gaussian sensor noise (0-255 units).

    Audio:
        sample_rate: waveform rate in Hz (16 kHz, the front end's rate).
        target_length: fbank frames T_a.
        num_mel_bins: fbank mel bins F.
        audio_seconds: waveform length; ``None`` picks the length that gives exactly
            ``target_length`` Kaldi frames ((T_a - 1) * 10 ms + 25 ms).
        f0_range: class fundamentals are spread log-uniformly over this range (Hz).
        max_harmonics: most harmonics a class timbre uses.
        pitch_range_semitones: within-class pitch shift tied to the source's size: the
            smallest object is ``+range`` semitones, the largest ``-range``.
        audio_snr_db: tone-to-noise ratio of the sounding segments.
        audio_noise_tilt: background noise power spectrum ``~ f^-tilt`` (0 white, 1 pink,
            2 brown). 2 roughly cancels the Kaldi pre-emphasis, giving a flat fbank floor.
        loudness_jitter_db: uniform per-clip gain in ``[-x, +x]`` dB (a nuisance with no
            visual counterpart).

    Correlation overwriting (paper Fig. 3):
        recur_prob: probability that a clip of task ``t >= 1`` shows one class object of an
            earlier task as a silent distractor.
        recur_partner_prob: given a recurring object, probability that it is the fixed
            "partner" of the clip's class (a class of task ``t - 1`` matched one-to-one),
            otherwise any earlier class. Consistent pairing makes scene-level alignment tie
            the old look to the new sound.
    """

    seed: int = 0
    n_tasks: int = 4
    classes_per_task: int = 4
    train_clips_per_class: int = 128
    eval_clips_per_class: int = 16
    n_frames: int = 4
    image_size: int = 64
    patch_size: int = 16
    object_cells: int = 1
    n_objects: int = 3
    size_range: tuple[float, float] = (0.5, 1.0)
    distractor_flash_prob: float = 0.5
    bg_level_range: tuple[float, float] = (20.0, 60.0)
    bg_noise_std: float = 10.0
    sample_rate: int = 16000
    target_length: int = 128
    num_mel_bins: int = 64
    audio_seconds: float | None = None
    f0_range: tuple[float, float] = (120.0, 1000.0)
    max_harmonics: int = 6
    pitch_range_semitones: float = 4.0
    audio_snr_db: float = 15.0
    audio_noise_tilt: float = 2.0
    loudness_jitter_db: float = 3.0
    recur_prob: float = 0.75
    recur_partner_prob: float = 0.75

    def __post_init__(self) -> None:
        positive = (
            "n_tasks", "classes_per_task", "train_clips_per_class", "n_frames",
            "image_size", "patch_size", "object_cells", "n_objects", "sample_rate",
            "target_length", "num_mel_bins", "max_harmonics",
        )
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SoundingObjectsConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.eval_clips_per_class, int) or self.eval_clips_per_class < 0:
            raise ValueError(
                f"SoundingObjectsConfig.eval_clips_per_class must be an int >= 0, "
                f"got {self.eval_clips_per_class!r}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SoundingObjectsConfig.image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})"
            )
        if self.n_objects > self.n_blocks:
            raise ValueError(
                f"SoundingObjectsConfig.n_objects ({self.n_objects}) exceeds the "
                f"{self.n_blocks} object blocks of a {self.image_size}² frame with "
                f"patch_size={self.patch_size}, object_cells={self.object_cells}"
            )
        if self.n_frames > 62:
            raise ValueError(f"SoundingObjectsConfig.n_frames must be <= 62, got {self.n_frames}")
        for name in ("distractor_flash_prob", "recur_prob", "recur_partner_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SoundingObjectsConfig.{name} must be in [0, 1], got {v!r}")
        lo, hi = self.size_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"SoundingObjectsConfig.size_range must satisfy 0 < lo <= hi <= 1, got {self.size_range}")
        lo, hi = self.f0_range
        if not 20.0 <= lo <= hi < self.sample_rate / 2:
            raise ValueError(
                f"SoundingObjectsConfig.f0_range must satisfy 20 <= lo <= hi < sample_rate/2, got {self.f0_range}"
            )
        lo, hi = self.bg_level_range
        if not 0.0 <= lo <= hi <= 255.0:
            raise ValueError(f"SoundingObjectsConfig.bg_level_range must lie in [0, 255], got {self.bg_level_range}")
        if self.audio_seconds is not None and self.audio_seconds * self.sample_rate < _WIN:
            raise ValueError(
                f"SoundingObjectsConfig.audio_seconds must give at least one 25 ms window, got {self.audio_seconds}"
            )
        if self.n_samples < self.n_frames:
            raise ValueError("SoundingObjectsConfig: audio shorter than one sample per frame segment")

    # Derived sizes -----------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return self.n_tasks * self.classes_per_task

    @property
    def grid(self) -> int:
        """Patch cells per side (``gh = gw``)."""
        return self.image_size // self.patch_size

    @property
    def block_grid(self) -> int:
        """Object blocks per side."""
        return self.grid // self.object_cells

    @property
    def n_blocks(self) -> int:
        return self.block_grid**2

    @property
    def block_px(self) -> int:
        return self.object_cells * self.patch_size

    @property
    def n_samples(self) -> int:
        """Waveform length S in samples."""
        if self.audio_seconds is None:
            return (self.target_length - 1) * _HOP + _WIN
        return int(round(self.audio_seconds * self.sample_rate))

    @property
    def clips_per_task(self) -> int:
        return self.classes_per_task * (self.train_clips_per_class + self.eval_clips_per_class)

    @property
    def n_clips(self) -> int:
        return self.n_tasks * self.clips_per_task

    def replace(self, **changes: object) -> "SoundingObjectsConfig":
        return dataclasses.replace(self, **changes)
