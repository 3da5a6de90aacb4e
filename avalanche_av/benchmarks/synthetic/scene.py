"""Class definitions and per-clip scene parameters of the synthetic stream, and rendering.

A class pairs one visual identity (shape + colour) with one timbre (fundamental, harmonic
profile, amplitude-modulation rate and depth). A clip shows ``n_objects`` objects, each in
its own block of patch cells: slot 0 is the sound source (the clip's class), the others are
silent distractors drawn from a pool of identities no class uses, except that in tasks
``t >= 1`` one distractor may be the object of an earlier task's class (correlation
overwriting, paper Fig. 3).

Instance-level cues shared by both modalities:
    * timing: the source is bright exactly in the frames whose audio segment sounds;
    * size <-> pitch: a bigger source plays lower, by up to ``pitch_range_semitones``.
Distractors brighten at random, never with exactly the source's pattern.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..io.audio_frontend import waveform_to_fbank
from . import _rng
from .config import SoundingObjectsConfig
from .render import N_SHAPES, SHAPE_NAMES, palette, render_frames, segment_envelope, synth_waveforms, tilted_noise

__all__ = ["ClassTable", "Scenes", "build_classes", "sample_scenes", "render_clips", "sounding_masks"]

# Hash streams: one per quantity so that changing how one is drawn leaves the others alone.
_S_POS, _S_SIZE, _S_OFFSET, _S_PATTERN, _S_FLASH, _S_RECUR, _S_NEUTRAL, _S_BG, _S_AUDIO, _S_NOISE = range(10)
# Class-level streams, keyed by identity / class / task index instead of clip id.
_S_CLASS_IDENTITY, _S_CLASS_PARTNER, _S_CLASS_TIMBRE = 100, 101, 102


@dataclass(frozen=True)
class ClassTable:
    """Per-class definitions, ``C = n_classes`` rows; class ``c`` belongs to task ``c // classes_per_task``.

    Attributes:
        task: ``(C,)`` int64.
        identity: ``(C,)`` int64 visual identity, ``shape * n_colours + colour``.
        f0: ``(C,)`` float64 base fundamental in Hz.
        harmonic_amps: ``(C, K)`` float64 harmonic amplitudes (before per-clip normalisation).
        am_rate: ``(C,)`` Hz (0 = steady tone).
        am_depth: ``(C,)`` in ``[0, 1]``.
        partner: ``(C,)`` int64, the task ``t - 1`` class whose object usually recurs next to
            this class's clips; -1 in task 0.
        neutral: ``(P,)`` int64 identities used only by distractors.
        colour_names, colour_rgb: palette names and ``(n_colours, 3)`` RGB.
    """

    task: torch.Tensor
    identity: torch.Tensor
    f0: torch.Tensor
    harmonic_amps: torch.Tensor
    am_rate: torch.Tensor
    am_depth: torch.Tensor
    partner: torch.Tensor
    neutral: torch.Tensor
    colour_names: tuple[str, ...]
    colour_rgb: torch.Tensor

    @property
    def n_colours(self) -> int:
        return len(self.colour_names)

    def identity_name(self, ident: int) -> str:
        return f"{self.colour_names[ident % self.n_colours]}-{SHAPE_NAMES[ident // self.n_colours]}"

    @property
    def names(self) -> list[str]:
        return [self.identity_name(int(i)) for i in self.identity]


@dataclass
class Scenes:
    """Per-clip scene parameters, ``N`` clips, ``O`` object slots (slot 0 = source), ``T`` frames.

    Attributes:
        clip_id, task, target, split (0 train / 1 eval), index_in_class: ``(N,)`` int64.
        identity, block_pos: ``(N, O)`` int64.
        scale: ``(N, O)`` float32 object half-extent fraction; size_norm ``(N, O)`` in [0, 1].
        offset: ``(N, O, 2)`` float32 pixel offset of each object in its block.
        bright: ``(N, O, T)`` bool; ``bright[:, 0]`` is the source's sounding pattern.
        recur_class: ``(N,)`` int64 earlier class shown as a silent distractor in slot 1, or -1.
        pitch_shift: ``(N,)`` float32 semitones; gain_db ``(N,)`` float32.
        bg_level: ``(N, 3)`` float32.
    """

    clip_id: torch.Tensor
    task: torch.Tensor
    target: torch.Tensor
    split: torch.Tensor
    index_in_class: torch.Tensor
    identity: torch.Tensor
    block_pos: torch.Tensor
    scale: torch.Tensor
    size_norm: torch.Tensor
    offset: torch.Tensor
    bright: torch.Tensor
    recur_class: torch.Tensor
    pitch_shift: torch.Tensor
    gain_db: torch.Tensor
    bg_level: torch.Tensor

    def __len__(self) -> int:
        return int(self.clip_id.shape[0])

    def select(self, idx: torch.Tensor | slice) -> "Scenes":
        return Scenes(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(parts: list["Scenes"]) -> "Scenes":
        return Scenes(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Scenes)})


def build_classes(cfg: SoundingObjectsConfig) -> ClassTable:
    """Draw the class definitions from ``cfg.seed``.

    Class ``c``'s definition depends only on ``(seed, c)`` (and ``classes_per_task`` for its
    partner), so a stream with fewer tasks is a prefix of one with more: its clips are
    identical as long as the per-task sizes agree and there are at most
    ``4 * N_SHAPES - n_objects`` classes (beyond that the palette grows).
    """
    seed, c = cfg.seed, cfg.n_classes
    # Half of the identities may become classes, the other half are distractor-only; the
    # split does not depend on the number of classes.
    n_colours = max(8, math.ceil((2 * c + 2 * cfg.n_objects) / N_SHAPES))
    colour_names, colour_rgb = palette(n_colours)
    n_ident = N_SHAPES * n_colours
    perm = _rng.hash_uniform(seed, torch.arange(n_ident), _S_CLASS_IDENTITY, 1)[:, 0].argsort()
    identity, neutral = perm[:c].clone(), perm[n_ident // 2 :].clone()

    ids = torch.arange(c)
    u = _rng.hash_uniform(seed, ids, _S_CLASS_TIMBRE, 8)
    # Fundamentals on a golden-ratio sequence over log-frequency: any run of consecutive
    # classes (a task) is spread evenly over the range.
    lo, hi = (math.log2(x) for x in cfg.f0_range)
    offset = float(_rng.hash_uniform(seed, torch.zeros(1, dtype=torch.int64), _S_CLASS_TIMBRE + 1, 1))
    pos = torch.frac(offset + ids.double() * 0.6180339887498949 + 0.02 * (u[:, 0] - 0.5))
    k = cfg.max_harmonics
    n_harm = 1 + (u[:, 1] * k).long().clamp_max(k - 1)
    rolloff = 0.3 + 1.2 * u[:, 2]
    odd_only = u[:, 3] < 0.3
    # Scalar math per class (a handful of values): vectorised transcendental kernels may
    # round differently with the tensor length, which would break the prefix property.
    f0 = torch.tensor([2.0 ** (lo + (hi - lo) * p) for p in pos.tolist()], dtype=torch.float64)
    amps = torch.tensor(
        [
            [
                (h ** -r) if (h <= nh and not (odd and h % 2 == 0)) else 0.0
                for h in range(1, k + 1)
            ]
            for r, nh, odd in zip(rolloff.tolist(), n_harm.tolist(), odd_only.tolist())
        ],
        dtype=torch.float64,
    ).view(c, k)
    am_rate = torch.where(u[:, 5] < 0.25, torch.zeros(c, dtype=torch.float64), 2.0 + 10.0 * u[:, 4])
    am_depth = 0.3 + 0.6 * u[:, 6]

    cpt = cfg.classes_per_task
    task = ids // cpt
    partner = torch.full((c,), -1, dtype=torch.int64)
    if cfg.n_tasks > 1:
        tasks = torch.arange(1, cfg.n_tasks)
        order = _rng.hash_uniform(seed, tasks, _S_CLASS_PARTNER, cpt).argsort(dim=1)  # (n_tasks - 1, cpt)
        partner[cpt:] = ((tasks - 1).view(-1, 1) * cpt + order).reshape(-1)
    return ClassTable(
        task=task,
        identity=identity,
        f0=f0,
        harmonic_amps=amps,
        am_rate=am_rate,
        am_depth=am_depth,
        partner=partner,
        neutral=neutral,
        colour_names=tuple(colour_names),
        colour_rgb=colour_rgb,
    )


def clip_layout(cfg: SoundingObjectsConfig, clip_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Task, class, split and index-in-class of each clip id.

    Clip ids run task-major; inside a task come its training clips (class-major), then its
    evaluation clips (class-major).

    Returns:
        task, target, split, index_in_class: each ``(N,)`` int64.
    """
    cpt, ntr, nev = cfg.classes_per_task, cfg.train_clips_per_class, cfg.eval_clips_per_class
    task = clip_ids // cfg.clips_per_task
    r = clip_ids % cfg.clips_per_task
    is_eval = r >= cpt * ntr
    re = r - cpt * ntr
    cls_in_task = torch.where(is_eval, re // max(nev, 1), r // ntr)
    index = torch.where(is_eval, re % max(nev, 1), r % ntr)
    return task, task * cpt + cls_in_task, is_eval.long(), index


def sample_scenes(cfg: SoundingObjectsConfig, classes: ClassTable, clip_ids: torch.Tensor) -> Scenes:
    """Scene parameters of ``clip_ids`` (``(N,)`` int64), each a pure function of (seed, clip id)."""
    seed, n, o, t = cfg.seed, clip_ids.shape[0], cfg.n_objects, cfg.n_frames
    if clip_ids.dim() != 1 or (n and (int(clip_ids.min()) < 0 or int(clip_ids.max()) >= cfg.n_clips)):
        raise ValueError(f"clip_ids must be a 1-D tensor of ids in [0, {cfg.n_clips}), got shape {tuple(clip_ids.shape)}")
    task, target, split, index = clip_layout(cfg, clip_ids)

    block_pos = _rng.hash_uniform(seed, clip_ids, _S_POS, cfg.n_blocks).argsort(dim=1)[:, :o]
    lo, hi = cfg.size_range
    size_norm = _rng.hash_uniform(seed, clip_ids, _S_SIZE, o).float()
    scale = lo + (hi - lo) * size_norm
    # Jitter inside the block, bounded so the whole object stays in its block.
    room = (1.0 - scale) * (cfg.block_px / 2.0) * 0.9
    offset = (2.0 * _rng.hash_uniform(seed, clip_ids, _S_OFFSET, 2 * o).float().view(n, o, 2) - 1.0) * room[..., None]

    # Source pattern: uniform over the 2^T - 1 non-empty on/off patterns.
    bits = 2 ** torch.arange(t)
    u = _rng.hash_uniform(seed, clip_ids, _S_PATTERN, 1)[:, 0]
    code = (u * (2**t - 1)).long().clamp_max(2**t - 2) + 1
    src = (code.view(-1, 1) & bits) > 0
    uf = _rng.hash_uniform(seed, clip_ids, _S_FLASH, (o - 1) * (t + 1)).view(n, o - 1, t + 1)
    dis = uf[..., :t] < cfg.distractor_flash_prob
    # A distractor that happens to copy the source's timing would make the source ambiguous:
    # flip one of its frames.
    same = (dis == src[:, None, :]).all(dim=-1)
    flip = (uf[..., t] * t).long().clamp_max(t - 1)
    dis = dis ^ (same[..., None] & (torch.arange(t) == flip[..., None]))
    bright = torch.cat([src[:, None, :], dis], dim=1)

    # Distractor identities: distinct neutral ones, and possibly one earlier source in slot 1.
    p = classes.neutral.shape[0]
    pick = _rng.hash_uniform(seed, clip_ids, _S_NEUTRAL, p).argsort(dim=1)[:, : o - 1]
    distract = classes.neutral[pick]
    ur = _rng.hash_uniform(seed, clip_ids, _S_RECUR, 3)
    cpt = cfg.classes_per_task
    n_earlier = task * cpt
    any_earlier = (ur[:, 2] * n_earlier.double()).long().clamp_max((n_earlier - 1).clamp_min(0))
    recur_class = torch.where(ur[:, 1] < cfg.recur_partner_prob, classes.partner[target], any_earlier)
    recur_class = torch.where((task > 0) & (ur[:, 0] < cfg.recur_prob) & (o > 1), recur_class, torch.full_like(target, -1))
    if o > 1:
        distract[:, 0] = torch.where(recur_class >= 0, classes.identity[recur_class.clamp_min(0)], distract[:, 0])
    identity = torch.cat([classes.identity[target][:, None], distract], dim=1)

    ua = _rng.hash_uniform(seed, clip_ids, _S_AUDIO, 1)[:, 0].float()
    gain_db = (2.0 * ua - 1.0) * cfg.loudness_jitter_db
    # Bigger source -> lower pitch (no shift when sizes do not vary: it would have no visual twin).
    pitch_shift = cfg.pitch_range_semitones * (1.0 - 2.0 * size_norm[:, 0]) * float(hi > lo)
    blo, bhi = cfg.bg_level_range
    bg_level = blo + (bhi - blo) * _rng.hash_uniform(seed, clip_ids, _S_BG, 3).float()
    return Scenes(
        clip_id=clip_ids.clone(),
        task=task,
        target=target,
        split=split,
        index_in_class=index,
        identity=identity,
        block_pos=block_pos,
        scale=scale,
        size_norm=size_norm,
        offset=offset,
        bright=bright,
        recur_class=recur_class,
        pitch_shift=pitch_shift,
        gain_db=gain_db,
        bg_level=bg_level,
    )


def sounding_masks(cfg: SoundingObjectsConfig, scenes: Scenes) -> torch.Tensor:
    """Patch cells covered by the source's block, in every frame.

    Returns:
        ``(N, n_frames, g, g)`` bool with ``g = image_size // patch_size``. AND it with
        ``scenes.bright[:, 0, :, None, None]`` for the frames where the source sounds.
    """
    n, k, bgrid, g = len(scenes), cfg.object_cells, cfg.block_grid, cfg.grid
    pos = scenes.block_pos[:, 0]
    cells = torch.arange(g)
    row_in = (cells.view(1, -1) // k) == (pos // bgrid).view(-1, 1)
    col_in = (cells.view(1, -1) // k) == (pos % bgrid).view(-1, 1)
    row_in &= cells.view(1, -1) < bgrid * k
    col_in &= cells.view(1, -1) < bgrid * k
    mask = row_in[:, :, None] & col_in[:, None, :]
    return mask[:, None].expand(n, cfg.n_frames, g, g).contiguous()


def render_clips(
    cfg: SoundingObjectsConfig,
    classes: ClassTable,
    scenes: Scenes,
    with_waveform: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Render video and audio of ``scenes``, vectorised over clips.

    Bulk noise (pixels, audio samples) comes from a generator re-seeded per clip, so a clip
    renders identically whatever batch it is rendered in; the fbank is computed per clip
    through the shared front end :func:`waveform_to_fbank`.

    Returns:
        video ``(N, n_frames, 3, H, W)`` uint8, fbank ``(N, target_length, num_mel_bins)``
        float16, and the waveform ``(N, S)`` float32 in ``[-1, 1]`` if ``with_waveform``.
    """
    n, t, hw, s = len(scenes), cfg.n_frames, cfg.image_size, cfg.n_samples
    vnoise = torch.empty(n, t, hw, hw, 3)
    anoise = torch.empty(n, s)
    g = torch.Generator()
    for i, cs in enumerate(_rng.clip_generator_seeds(cfg.seed, scenes.clip_id, _S_NOISE)):
        g.manual_seed(cs)
        torch.randn(vnoise.shape[1:], generator=g, out=vnoise[i])
        torch.randn(s, generator=g, out=anoise[i])

    ident = scenes.identity
    video = render_frames(
        block_pos=scenes.block_pos,
        shape_ids=ident // classes.n_colours,
        colours=classes.colour_rgb[ident % classes.n_colours],
        scale=scenes.scale,
        offset=scenes.offset,
        bright=scenes.bright,
        bg_level=scenes.bg_level,
        noise=vnoise,
        image_size=hw,
        block_px=cfg.block_px,
        noise_std=cfg.bg_noise_std,
    )

    k = cfg.max_harmonics
    ua = _rng.hash_uniform(cfg.seed, scenes.clip_id, _S_AUDIO, k + 2)
    cls = scenes.target
    env = segment_envelope(scenes.bright[:, 0], s, ramp=cfg.sample_rate // 100)
    peak = 0.5 * 10.0 ** (scenes.gain_db.double() / 20.0)
    # Noise scaled against a nominal tone of peak 0.5 (rms 0.5 / sqrt 2).
    noise_std = 0.5 / math.sqrt(2.0) * 10.0 ** (-cfg.audio_snr_db / 20.0)
    wave = synth_waveforms(
        f0=classes.f0[cls] * torch.exp2(scenes.pitch_shift.double() / 12.0),
        harmonic_amps=classes.harmonic_amps[cls],
        am_rate=classes.am_rate[cls],
        am_depth=classes.am_depth[cls],
        phases=2 * math.pi * ua[:, 1 : k + 1],
        am_phase=2 * math.pi * ua[:, k + 1],
        gain=peak,
        envelope=env,
        noise=tilted_noise(anoise, cfg.audio_noise_tilt, cfg.sample_rate),
        noise_std=noise_std,
        sample_rate=cfg.sample_rate,
    )
    fbank = torch.empty(n, cfg.target_length, cfg.num_mel_bins, dtype=torch.float16)
    for i in range(n):
        fbank[i] = waveform_to_fbank(wave[i], cfg.sample_rate, cfg.target_length, cfg.num_mel_bins)
    return video, fbank, (wave if with_waveform else None)
