"""Tests of the built-in synthetic stream (avalanche_av.benchmarks.synthetic)."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_av.benchmarks.synthetic import (
    SoundingObjectsConfig,
    build_classes,
    generate_sounding_objects,
    render_clips,
    sample_scenes,
    sounding_objects,
)
from avalanche_av.benchmarks.synthetic.render import segment_envelope, shape_sdf

SMALL = dict(n_tasks=2, classes_per_task=2, train_clips_per_class=6, eval_clips_per_class=4)
# One task, many evaluation clips per class: enough to measure instance-level cues.
CUES = dict(n_tasks=1, classes_per_task=4, train_clips_per_class=1, eval_clips_per_class=20)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small():
    return generate_sounding_objects(**SMALL)


@pytest.fixture(scope="module")
def small_bm():
    return sounding_objects(**SMALL)


@pytest.fixture(scope="module")
def cues():
    return generate_sounding_objects(**CUES)


# --------------------------------------------------------------------------- helpers
def cell_luminance(video: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, T, 3, H, W)`` uint8 -> per-cell pixel luminance ``(N, cells, T, patch*patch)``."""
    n, t, _, h, _ = video.shape
    g = h // patch
    x = video.float().mean(dim=2).view(n, t, g, patch, g, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, t, patch * patch)


def segment_energy(fbank: torch.Tensor, n_frames: int) -> torch.Tensor:
    """``(N, T_a, F)`` fbank -> ``(N, n_frames)`` energy of the loudest bins above a noise floor."""
    n, ta, f = fbank.shape
    seg = ta // n_frames
    s = fbank.float()[:, : seg * n_frames].view(n, n_frames, seg, f)[:, :, 2:-2].mean(dim=2)
    floor = s.flatten(0, 1).quantile(0.2, dim=0)
    return (s - floor).topk(4, dim=-1).values.mean(dim=-1)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=60), "multiple of patch_size"),
        (dict(n_objects=17), "exceeds"),
        (dict(n_tasks=0), "n_tasks"),
        (dict(recur_prob=1.5), "recur_prob"),
        (dict(size_range=(0.0, 1.0)), "size_range"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoundingObjectsConfig(**kwargs)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="n_task"):
        generate_sounding_objects(n_task=3, render=False)


def test_default_sizes():
    cfg = SoundingObjectsConfig()
    assert (cfg.n_tasks, cfg.classes_per_task, cfg.train_clips_per_class, cfg.eval_clips_per_class) == (4, 4, 128, 16)
    assert cfg.n_clips == 4 * 4 * (128 + 16)
    # 128 Kaldi frames need (128 - 1) * 10 ms + 25 ms of audio.
    assert cfg.n_samples == 127 * 160 + 400
    assert cfg.grid == 4 and cfg.n_blocks == 16


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_tensors(small):
    again = generate_sounding_objects(**SMALL, chunk_size=5)
    assert torch.equal(small.video, again.video)
    assert torch.equal(small.audio, again.audio)
    assert torch.equal(small.scenes.bright, again.scenes.bright)


def test_different_seed_differs(small):
    other = generate_sounding_objects(**SMALL, seed=1)
    assert not torch.equal(small.video, other.video)
    assert not torch.equal(small.audio, other.audio)
    assert not torch.equal(small.scenes.block_pos, other.scenes.block_pos)


def test_clip_is_function_of_seed_and_index(small):
    cfg = small.config
    ids = torch.tensor([7, 2, 30])
    classes = build_classes(cfg)
    video, audio, _ = render_clips(cfg, classes, sample_scenes(cfg, classes, ids))
    assert torch.equal(video, small.video[ids])
    assert torch.equal(audio, small.audio[ids])


def test_shorter_stream_is_a_prefix():
    kw = dict(classes_per_task=2, train_clips_per_class=3, eval_clips_per_class=2)
    one = generate_sounding_objects(n_tasks=1, **kw)
    three = generate_sounding_objects(n_tasks=3, **kw)
    n = one.config.n_clips
    assert torch.equal(one.video, three.video[:n]) and torch.equal(one.audio, three.audio[:n])


# --------------------------------------------------------------------------- ground truth
def test_mask_is_the_source_cell(small_bm):
    table, masks, scenes = small_bm.clip_table, small_bm.sounding_masks, small_bm.scenes
    n, t, g, _ = masks.shape
    assert masks.dtype == torch.bool and (t, g) == (4, 4) and n == len(table)
    assert torch.equal(masks, masks[:, :1].expand_as(masks))  # objects do not move
    flat = masks[:, 0].reshape(n, -1)
    assert (flat.sum(1) == 1).all()
    cell = flat.float().argmax(1)
    assert torch.equal(cell // g, torch.tensor(table["source_row"].values))
    assert torch.equal(cell % g, torch.tensor(table["source_col"].values))
    assert torch.equal(cell, scenes.block_pos[:, 0])  # object_cells = 1: blocks are cells


def test_source_cell_brightens_and_empty_cells_do_not(small):
    cfg, scenes = small.config, small.scenes
    lum = cell_luminance(small.video, cfg.patch_size)  # (N, cells, T, P*P)
    src = scenes.bright[:, 0]
    mixed = (src.any(1) & ~src.all(1)).nonzero().squeeze(1)
    assert len(mixed) > 10
    rows = torch.arange(len(mixed))
    on = src[mixed].float().argmax(1)
    off = (~src[mixed]).float().argmax(1)
    l = lum[mixed]
    diff = l[rows, :, on] - l[rows, :, off]  # (M, cells, P*P) bright frame minus dim frame
    jump = diff.topk(16, dim=-1).values.mean(-1)  # the object's pixels, robust to noise
    src_cell = scenes.block_pos[mixed, 0]
    assert (jump[rows, src_cell] > 30).all()
    occupied = torch.zeros(len(mixed), lum.shape[1], dtype=torch.bool)
    occupied[rows[:, None], scenes.block_pos[mixed]] = True
    assert (jump[~occupied] < 30).all()
    # In a bright frame the source's pixels stand far above the background level.
    level = l[rows, src_cell, on].topk(16, dim=-1).values.mean(-1)
    assert (level > scenes.bg_level[mixed].mean(1) + 60).all()


def test_larger_blocks_mask_every_covered_cell():
    data = generate_sounding_objects(
        n_tasks=1, classes_per_task=2, train_clips_per_class=3, eval_clips_per_class=0,
        image_size=96, object_cells=2, render=False,
    )
    cfg = data.config
    from avalanche_av.benchmarks.synthetic import sounding_masks

    masks = sounding_masks(cfg, data.scenes)
    assert masks.shape == (6, 4, 6, 6)
    for i in range(6):
        rows, cols = masks[i, 0].nonzero().unbind(1)
        pos = int(data.scenes.block_pos[i, 0])
        assert sorted(set(rows.tolist())) == [2 * (pos // 3), 2 * (pos // 3) + 1]
        assert sorted(set(cols.tolist())) == [2 * (pos % 3), 2 * (pos % 3) + 1]


def test_objects_stay_inside_their_block():
    data = generate_sounding_objects(n_tasks=1, classes_per_task=4, train_clips_per_class=8, eval_clips_per_class=0)
    cfg, scenes = data.config, data.scenes
    lum = cell_luminance(data.video, cfg.patch_size)
    # Cells with no object hold background plus noise only (no object pixel leaks in).
    empty = torch.ones(lum.shape[:2], dtype=torch.bool)
    empty[torch.arange(len(scenes))[:, None], scenes.block_pos] = False
    dev = (lum - scenes.bg_level.mean(1).view(-1, 1, 1, 1)).abs()
    assert dev[empty].mean() < 10 and dev[~empty].mean() > dev[empty].mean() + 5


# --------------------------------------------------------------------------- distractors, recurrence
def test_distractors_flash_but_never_copy_the_source():
    scenes = generate_sounding_objects(render=False).scenes
    src, dis = scenes.bright[:, :1], scenes.bright[:, 1:]
    assert src.any(-1).all()  # the source always sounds somewhere
    assert not (dis == src).all(-1).any()
    rate = dis.float().mean().item()
    assert 0.4 < rate < 0.6  # distractor_flash_prob = 0.5
    # Brightness alone is not the source: distractors are brighter than the source in many frames.
    assert (dis.sum(1) > 0).float().mean() > 0.6


def test_earlier_sources_recur_as_silent_distractors():
    data = generate_sounding_objects(render=False)
    cfg, scenes, classes = data.config, data.scenes, data.classes
    recur = scenes.recur_class
    assert (recur[scenes.task == 0] == -1).all()
    later = scenes.task > 0
    frac = (recur[later] >= 0).float().mean().item()
    assert abs(frac - cfg.recur_prob) < 0.05
    has = recur >= 0
    # The recurring object belongs to an earlier task, sits in slot 1 (a silent distractor),
    # and is usually the clip class's fixed partner.
    assert (classes.task[recur[has]] < scenes.task[has]).all()
    assert torch.equal(scenes.identity[has, 1], classes.identity[recur[has]])
    assert (scenes.identity[has, 0] != scenes.identity[has, 1]).all()
    partner = (recur[has] == classes.partner[scenes.target[has]]).float().mean().item()
    assert partner > cfg.recur_partner_prob - 0.05
    # Neutral distractors never show a class identity.
    neutral = scenes.identity[:, 1:][~torch.isin(scenes.identity[:, 1:], classes.identity)]
    assert torch.isin(neutral, classes.neutral).all()
    assert not torch.isin(scenes.identity[~has, 1:], classes.identity).any()


def test_clip_table_names_recurring_classes(small_bm):
    table = small_bm.clip_table
    task1 = table[table.task == 1]
    rec = task1[task1.recur_class >= 0]
    assert len(rec) > 0
    task0_names = set(small_bm.class_table[small_bm.class_table.task == 0].name)
    assert set(rec.recur_name) <= task0_names
    assert all(r in d.split("|") for r, d in zip(rec.recur_name, rec.distractors))


# --------------------------------------------------------------------------- Avalanche structure
def test_benchmark_streams_and_minibatch(small_bm):
    bm = small_bm
    assert len(bm.train_stream) == 2 and len(bm.test_stream) == 2
    assert bm.retrieval_sets[1] is bm.test_stream[1].dataset
    seen = []
    for t, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert tr.task_label == t and te.task_label == t
        assert len(tr.dataset) == 2 * 6 and len(te.dataset) == 2 * 4
        assert set(tr.dataset.targets.uniques) == {2 * t, 2 * t + 1}
        assert set(tr.dataset.targets_task_labels.uniques) == {t}
        for ds in (tr.dataset, te.dataset):
            mb = next(iter(DataLoader(ds, batch_size=len(ds))))
            assert isinstance(mb, list) and len(mb) == 5
            assert all(isinstance(x, torch.Tensor) for x in mb)
            audio, video, target, clip_id, task = mb
            assert audio.dtype == torch.float16 and audio.shape[1:] == (128, 64)
            assert video.dtype == torch.uint8 and video.shape[1:] == (4, 3, 64, 64)
            assert target.dtype == torch.int64 and clip_id.dtype == torch.int64
            assert (task == t).all()
            assert torch.equal(target, torch.tensor(list(ds.targets)))
            seen += clip_id.tolist()
    assert sorted(seen) == list(range(bm.config.n_clips))
    assert bm.sounding_masks.shape == (bm.config.n_clips, 4, 4, 4)
    assert len(bm.task_names) == 2 and len(bm.class_names) == 4
    assert set(bm.clip_table.split) == {"train", "eval"}


def test_avalanche_task_balanced_loader(small_bm):
    from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader

    ds = small_bm.train_stream[1].dataset
    mb = next(iter(TaskBalancedDataLoader(ds, batch_size=4, shuffle=True)))
    assert len(mb) == 5 and mb[1].shape == (4, 4, 3, 64, 64) and (mb[4] == 1).all()
    # Replay buffers subset and concatenate experiences.
    both = small_bm.train_stream[0].dataset.subset([0, 1]).concat(ds.subset([2]))
    assert len(both) == 3 and sorted(both.targets_task_labels.uniques) == [0, 1]


# --------------------------------------------------------------------------- audio cues
def test_envelope_crossfades_at_boundaries():
    env = segment_envelope(torch.tensor([[True, False, True, True]]), 40, ramp=4)
    assert torch.allclose(env[0, :8], torch.ones(8)) and torch.allclose(env[0, 12:18], torch.zeros(6))
    assert 0 < env[0, 9] < 1 and torch.allclose(env[0, 22:], torch.ones(18))


def test_shapes_are_inside_outside():
    u = torch.zeros(8, 1, 1)
    far = torch.full((8, 1, 1), 3.0)
    ids = torch.arange(8)
    centre = shape_sdf(ids, u, u)
    assert (shape_sdf(ids, far, far) > 0).all()
    # Every shape but the hollow ones covers its centre.
    assert (centre[[0, 1, 2, 3, 4, 6]] < 0).all() and (centre[[5, 7]] > 0).all()


def test_audio_on_off_timing_matches_bright_frames(cues):
    cfg, scenes = cues.config, cues.scenes
    e = segment_energy(cues.audio, cfg.n_frames)
    active = scenes.bright[:, 0]
    # Per clip, every sounding segment is louder than every silent one.
    for i in range(len(scenes)):
        if (~active[i]).any():
            assert e[i][active[i]].min() > e[i][~active[i]].max() + 0.2
    # And the source's cell is bright in exactly those frames.
    lum = cell_luminance(cues.video, cfg.patch_size).mean(-1)  # (N, cells, T)
    src = lum[torch.arange(len(scenes)), scenes.block_pos[:, 0]]
    mixed = active.any(1) & ~active.all(1)
    mid = (src.amax(1, keepdim=True) + src.amin(1, keepdim=True)) / 2
    assert torch.equal((src > mid)[mixed], active[mixed])


def _pitch_estimate(fbank: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Sub-bin position of the lowest strong mel peak (the fundamental) over the sounding segments.

    The lowest peak, not the strongest: the front end's pre-emphasis often lifts the 2nd or
    3rd harmonic above the fundamental.
    """
    n, ta, f = fbank.shape
    t = active.shape[1]
    seg = ta // t
    s = fbank.float().view(n, t, seg, f)[:, :, 2:-2].mean(2)
    s = s - s.flatten(0, 1).quantile(0.2, dim=0)
    spec = (s * active[..., None]).sum(1) / active.sum(1, keepdim=True).clamp_min(1)
    first = (spec > 0.5 * spec.amax(1, keepdim=True)).float().argmax(1)
    idx = (first[:, None] + torch.arange(3)).clamp(0, f - 1)
    peak = idx.gather(1, spec.gather(1, idx).argmax(1, keepdim=True)).squeeze(1)
    idx = (peak[:, None] + torch.arange(-1, 2)).clamp(0, f - 1)
    w = spec.gather(1, idx).clamp_min(0)
    return (w * idx.float()).sum(1) / w.sum(1).clamp_min(1e-6)


def test_bigger_source_sounds_lower(cues):
    cfg, scenes = cues.config, cues.scenes
    pitch = _pitch_estimate(cues.audio, scenes.bright[:, 0])
    lum = cell_luminance(cues.video, cfg.patch_size)
    n = len(scenes)
    src = lum[torch.arange(n), scenes.block_pos[:, 0]]  # (N, T, P*P)
    area = (src > scenes.bg_level.mean(1).view(-1, 1, 1) + 25).float().mean(-1).amin(1)
    for c in scenes.target.unique():
        m = scenes.target == c
        r_size = torch.corrcoef(torch.stack([area[m], scenes.size_norm[m, 0]]))[0, 1]
        r_cross = torch.corrcoef(torch.stack([pitch[m], area[m]]))[0, 1]
        r_pitch = torch.corrcoef(torch.stack([pitch[m], scenes.pitch_shift[m]]))[0, 1]
        assert r_size > 0.85, f"class {int(c)}: drawn area does not follow size ({r_size:.2f})"
        assert r_pitch > 0.85, f"class {int(c)}: fbank peak does not follow the pitch shift ({r_pitch:.2f})"
        assert r_cross < -0.7, f"class {int(c)}: pitch does not fall with drawn size ({r_cross:.2f})"


def test_instance_cues_beat_the_class_level_ceiling(cues):
    """A class-perfect matcher using only timing and size<->pitch read off the raw signals.

    A matcher that knows only the class ranks the class's clips at random: R@1 = 1 / clips
    per class. The instance cues must lift R@1 far above that.
    """
    cfg, scenes = cues.config, cues.scenes
    n, t = len(scenes), cfg.n_frames
    e = segment_energy(cues.audio, t)
    pa = e > 0.4
    pitch = _pitch_estimate(cues.audio, pa)
    lum = cell_luminance(cues.video, cfg.patch_size)
    cm = lum.mean(-1)  # (N, cells, T)
    area = (lum > cm.median(1).values[:, None, :, None] + 25).float().mean(-1).amin(2)  # (N, cells)
    has_obj = area > 0.02
    pv = cm > (cm.amax(2, keepdim=True) + cm.amin(2, keepdim=True)) / 2
    pv |= ((cm.amax(2) - cm.amin(2)) < 3)[..., None]  # steady cells: treat as always on
    tgt = scenes.target

    def zscore(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x)
        for c in tgt.unique():
            m = tgt == c
            v = x[m][valid[m]]
            z[m] = (x[m] - v.mean()) / v.std()
        return z

    zp = zscore(pitch, torch.ones(n, dtype=torch.bool))
    za = zscore(area, has_obj)
    agree = (pa[:, None, None, :] == pv[None]).sum(-1).float()  # (query audio, gallery video, cell)
    score = (agree - 0.1 * (zp[:, None, None] + za[None]) ** 2).masked_fill(~has_obj[None], -1e9).amax(-1)
    score = score.masked_fill(tgt[:, None] != tgt[None, :], -1e9)
    d = score.diag()[:, None]
    rank = (score > d).sum(1).float() + 0.5 * ((score == d).sum(1) - 1).float()
    r1 = (rank < 1).float().mean().item()
    ceiling = (1.0 / (tgt[:, None] == tgt[None, :]).sum(1).float()).mean().item()
    assert r1 > 5 * ceiling, f"R@1 {r1:.3f} vs class-level ceiling {ceiling:.3f}"


# --------------------------------------------------------------------------- shapes at base config
def test_base_config_shapes_reachable():
    data = generate_sounding_objects(
        n_tasks=1, classes_per_task=1, train_clips_per_class=1, eval_clips_per_class=1,
        image_size=224, object_cells=2, target_length=1024, num_mel_bins=128,
    )
    assert data.video.shape == (2, 4, 3, 224, 224)
    assert data.audio.shape == (2, 1024, 128)
    from avalanche_av.benchmarks.synthetic import sounding_masks

    m = sounding_masks(data.config, data.scenes)
    assert m.shape == (2, 4, 14, 14) and (m[:, 0].sum((1, 2)) == 4).all()


# --------------------------------------------------------------------------- disk mode
DISK = dict(n_tasks=1, classes_per_task=2, train_clips_per_class=2, eval_clips_per_class=1)


def test_disk_round_trip(tmp_path):
    pytest.importorskip("av")
    root = tmp_path / "so"
    bm = sounding_objects(root=root, **DISK)
    mem = generate_sounding_objects(**DISK)
    # The mp4 decoders (one training and one retrieval set per task) feed the load-time report.
    assert bm.root == root and len(bm.decoders) == 2 and bm.load_time_report() == type(bm.data_report)()
    with open(bm.manifest_path, encoding="utf-8") as fh:
        entries = json.load(fh)["data"]
    assert len(entries) == 6
    assert {"video_id", "wav", "video_path", "labels", "clip_id", "task", "target", "split"} <= set(entries[0])
    assert all((root / e["video_path"]).is_file() for e in entries)

    for exp in (bm.train_stream[0], bm.test_stream[0]):
        mb = next(iter(DataLoader(exp.dataset, batch_size=8)))
        audio, video, target, clip_id, task = mb
        assert audio.dtype == torch.float16 and video.dtype == torch.uint8 and (task == 0).all()
        ref_v, ref_a = mem.video[clip_id], mem.audio[clip_id]
        assert torch.equal(target, mem.scenes.target[clip_id])
        # H.264 smooths the sensor noise; per frame the picture must match closely.
        mae = (video.float() - ref_v.float()).abs().mean(dim=(2, 3, 4))
        assert (mae < 12).all(), mae
        # The source's bright/dim state survives the codec.
        lum = cell_luminance(video, 16).mean(-1)
        ref_lum = cell_luminance(ref_v, 16).mean(-1)
        assert (lum - ref_lum).abs().max() < 6
        # AAC keeps the fbank nearly intact.
        for a, r in zip(audio.float(), ref_a.float()):
            corr = torch.corrcoef(torch.stack([a.flatten(), r.flatten()]))[0, 1]
            assert corr > 0.98, corr

    # A second call with the same config reuses the files.
    stamp = (root / "config.json").stat().st_mtime_ns
    sounding_objects(root=root, **DISK)
    assert (root / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different config"):
        sounding_objects(root=root, **{**DISK, "seed": 5})
