"""Downstream evaluation: backbone loading, the feature cache, the synthetic ground truth, the
four tasks end to end (synthetic and fake real layouts), and pre-trained vs random backbones."""
import copy
import json

import numpy as np
import pytest
import torch

from avalanche_av.benchmarks.synthetic import SoundingObjectsConfig, build_classes, sample_scenes, sounding_masks
from avalanche_av.downstream import (
    DownstreamConfig,
    FeatureExtractor,
    load_backbone,
    open_checkpoint,
    run_classification,
    run_downstream,
    run_event_localization,
    run_retrieval_finetune,
    run_segmentation,
    ssl_train,
    synthetic_data,
)
from avalanche_av.downstream.backbone import infer_preset, state_fingerprint
from avalanche_av.downstream.data import limit_train
from avalanche_av.models import create_model

SMALL = dict(n_tasks=1, classes_per_task=4, train_clips_per_class=12, eval_clips_per_class=4)


@pytest.fixture(scope="module")
def small_data():
    return synthetic_data(**SMALL)


# --------------------------------------------------------------------------- backbones
def test_any_checkpoint_loads(tmp_path):
    torch.manual_seed(3)
    src = create_model("tiny")
    sd = src.state_dict()
    run_ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": "avalanche-av-checkpoint/1", "model": sd, "optimizer": {}, "extra": {},
                "config": {"model": "tiny", "seed": 5, "n_tasks": 2}}, run_ckpt)
    bare = tmp_path / "bare.pt"
    torch.save(sd, bare)
    m1, info1 = load_backbone(run_ckpt, input_shapes={"n_frames": 4})
    m2, info2 = load_backbone(bare)
    assert info1.format == info2.format == "avalanche-av" and info1.preset == info2.preset == "tiny"
    assert info1.fingerprint == info2.fingerprint == state_fingerprint(src)
    assert open_checkpoint(run_ckpt).run_config == {"model": "tiny", "seed": 5, "n_tasks": 2}
    # Input shapes follow the dataset; the weights are the same.
    m3, info3 = load_backbone(bare, input_shapes={"n_frames": 2, "image_size": 32})
    assert m3.config.n_frames == 2 and info3.overrides == {"n_frames": 2, "image_size": 32}
    # random: seeded, different from the checkpoint
    r1, ri = load_backbone("random", "tiny", seed=1)
    r2, _ = load_backbone("random", "tiny", seed=1)
    assert ri.fingerprint == state_fingerprint(r2) != info1.fingerprint
    assert infer_preset(create_model("base").state_dict()) == "base"


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_backbone(tmp_path / "nope.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": object()}, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        load_backbone(pickled)
    with pytest.raises(ValueError, match="unknown model preset"):
        load_backbone("random", "huge")


def test_cav_mae_checkpoint_goes_to_the_cav_mae_preset(tmp_path):
    from avalanche_av.models import get_config
    from avalanche_av.models.weights import cav_mae_state_dict_shapes

    # Tensor shapes of a narrowed CAV-MAE layout: only format detection and preset choice are tested here
    # (the conversion itself is covered by test_weights).
    cfg = get_config("cav_mae_base", embed_dim=64, num_heads=4, decoder_dim=32, decoder_heads=4, decoder_depth=1)
    sd = {k: torch.zeros(s) for k, s in cav_mae_state_dict_shapes(cfg).items()}
    path = tmp_path / "cav-mae.pth"
    torch.save(sd, path)
    src = open_checkpoint(path)
    assert (src.format, src.preset) == ("cav-mae", "cav_mae_base")


# --------------------------------------------------------------------------- synthetic ground truth
def test_synthetic_ground_truth_comes_from_the_generator(small_data):
    d = small_data
    cfg = SoundingObjectsConfig(seed=0, **SMALL)
    scenes = sample_scenes(cfg, build_classes(cfg), torch.arange(cfg.n_clips))
    active = scenes.bright[:, 0]
    assert torch.equal(d.labels, scenes.target)
    # Segment labels: the class where the source sounds, background (C) elsewhere.
    assert torch.equal(d.segment_labels == d.n_classes, ~active)
    masks, valid = d.masks.get_batch(torch.arange(len(d)))
    assert masks.shape == (len(d), 4, 64, 64) and valid.all()
    cells = sounding_masks(cfg, scenes) & active[..., None, None]
    assert torch.equal(masks[:, :, ::16, ::16], cells)  # pixels = cells upsampled by the patch size
    assert not masks[~active].any()
    # Splits: test = the stream's evaluation clips; validation carved from training, per class.
    assert set(np.flatnonzero(d.split == "test")) == set(torch.nonzero(scenes.split == 1).flatten().tolist())
    val = d.indices("val")
    assert len(val) == 4 and sorted(d.labels[val].tolist()) == [0, 1, 2, 3]
    few = limit_train(d, 2)
    assert few.report["clips"]["train"] == 8 and few.report["clips"]["val"] == 4 and few.report["clips"]["test"] == 16


def test_heldout_tasks_are_new_classes():
    base = synthetic_data(**SMALL)
    held = synthetic_data(**SMALL, heldout_tasks=1)
    assert len(held) == len(base) and sorted(set(held.labels.tolist())) == [0, 1, 2, 3]
    assert not set(held.class_names) & set(base.class_names)
    # The held-out clips are the clips of task 1 of a longer stream (prefix property).
    longer = synthetic_data(**{**SMALL, "n_tasks": 2})
    tail = longer.clips.clip_ids[len(base):]
    assert torch.equal(held.clips.clip_ids, tail)
    assert torch.equal(held.clips.video[:3], longer.clips.video[len(base):len(base) + 3])


# --------------------------------------------------------------------------- the feature cache
def test_feature_cache_avoids_backbone_passes(small_data, tmp_path):
    m, _ = load_backbone("random", "tiny", small_data.input_shapes, seed=0)
    ext = FeatureExtractor(m, cache_dir=tmp_path, batch_size=16, progress=False)
    f1 = ext.get(small_data, ["joint", "segments4", "multiscale"])
    assert ext.passes == 4  # 64 clips / 16, every kind from the same pass
    assert f1["joint"].shape == (64, 256) and f1["segments4"].shape == (64, 4, 512)
    assert f1["multiscale"].shape == (64, 3, 4, 4, 4, 128) and f1["multiscale"].dtype == torch.float16
    # A new extractor on the same weights and data reads the cache: no pass at all.
    ext2 = FeatureExtractor(copy.deepcopy(m), cache_dir=tmp_path, batch_size=16, progress=False)
    f2 = ext2.get(small_data, ["multiscale", "joint"])
    assert ext2.passes == 0 and torch.equal(f1["joint"], f2["joint"]) and torch.equal(f1["multiscale"], f2["multiscale"])
    # Features match a direct computation.
    with torch.no_grad():
        from avalanche_av.models.inputs import prepare_audio, prepare_video

        a = prepare_audio(small_data.clips.audio[:5].float())
        v = prepare_video(small_data.clips.video[:5])
        ja, jv = m.forward_joint(a, v)
        want = torch.cat([m.norm(ja).mean(1), m.norm(jv).mean(1)], 1)
    assert torch.allclose(f1["joint"][:5], want, atol=1e-5)
    # Other weights -> another cache entry, and the backbone runs again.
    other, _ = load_backbone("random", "tiny", small_data.input_shapes, seed=1)
    ext3 = FeatureExtractor(other, cache_dir=tmp_path, batch_size=64, progress=False)
    f3 = ext3.get(small_data, ["joint"])
    assert ext3.passes == 1 and not torch.allclose(f3["joint"], f1["joint"])


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("task", ["classify", "event", "segment", "retrieval-ft"])
def test_every_task_runs_and_writes_results(task, tmp_path):
    cfg = DownstreamConfig(task=task, checkpoint="random", out_dir=str(tmp_path / task), epochs=3, patience=2,
                           min_epochs=1, progress=False, **{"stream_seed": 0, **SMALL}, features="all")
    res = run_downstream(cfg)
    saved = json.loads((tmp_path / task / "results.json").read_text())
    assert saved["config"]["task"] == task and saved["backbone"]["format"] == "random"
    assert {"metrics", "fit", "timings", "environment", "data"} <= set(saved)
    assert (tmp_path / task / "results.csv").is_file()
    m = res["metrics"]
    if task == "classify":
        assert set(m) == {"joint", "audio", "video", "joint-audio", "joint-video"}
        assert 0 <= m["joint"]["top1"] <= m["joint"]["top5"] <= 1
        assert (tmp_path / task / "confusion_joint_linear.png").is_file()
        # five variants, one backbone pass for the joint features and one per unimodal embedding
        assert saved["timings"]["feature_passes"] == 3
    elif task == "event":
        assert 0 <= m["segment_accuracy"] <= 1 and m["n_segments"] == 4
    elif task == "segment":
        assert 0 <= m["mIoU"] <= 1 and 0 <= m["F_score"] <= 1
        assert (tmp_path / task / "overlays.png").is_file() and (tmp_path / task / "per_class_iou.png").is_file()
    else:
        assert m["gallery"] == 16 and {"R@1 a2v", "zero_shot R@10 v2a"} <= set(m)


def test_downstream_command_line(tmp_path, capsys):
    """``avalanche-av downstream`` on a run checkpoint: the stream settings come from the run's
    config, the summary is printed, results are written; a missing file is a one-line exit 2."""
    from avalanche_av.cli import main

    torch.manual_seed(4)
    model = create_model("tiny")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"format": "avalanche-av-checkpoint/1", "model": model.state_dict(), "optimizer": {}, "extra": {},
                "config": {"model": "tiny", "seed": 0, **SMALL}}, ckpt)
    out = tmp_path / "ds"
    assert main(["downstream", "--task", "classify", "--checkpoint", str(ckpt), "--features", "joint", "--epochs", "3",
                 "--patience", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "== downstream classify on synthetic" in printed and "top1" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["backbone"]["format"] == "avalanche-av" and saved["backbone"]["preset"] == "tiny"
    assert saved["backbone"]["fingerprint"] == state_fingerprint(model)
    # 4 classes x 4 eval clips from the run's config, not the `run` defaults
    assert saved["data"]["n_classes"] == 4 and saved["metrics"]["n_test"] == 16, saved["data"]
    assert (out / "results.csv").is_file() and (out / "confusion_joint_linear.png").is_file()

    assert main(["downstream", "--task", "event", "--checkpoint", str(tmp_path / "gone.pt"),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone.pt" in err[0] and "does not exist" in err[0]


@pytest.mark.slow
def test_imagenet_mae_file_loads_as_a_base_backbone(tmp_path):
    """A ViT-B/16 MAE file as the official release lays it out (``{"model": state_dict}``, 12
    blocks of width 768, MAE decoder keys) becomes the ``base`` preset, blocks 0-9 copied into
    both modality branches and 10-11 into the shared blocks, sized for the dataset's inputs."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    sd = vit.state_dict()
    sd["mask_token"] = torch.randn(1, 1, 512)
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = torch.randn(768, 512), torch.randn(768)
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd}, path)
    del vit
    data = synthetic_data(n_tasks=1, classes_per_task=2, train_clips_per_class=2, eval_clips_per_class=1,
                          image_size=32, n_frames=2)
    model, info = load_backbone(path, input_shapes=data.input_shapes)
    assert (info.format, info.preset) == ("imagenet-mae", "base")
    assert info.overrides["image_size"] == 32 and info.overrides["n_frames"] == 2
    ms = model.state_dict()
    assert torch.equal(ms["blocks_a.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])
    assert torch.equal(ms["blocks_v.9.mlp.fc1.weight"], sd["blocks.9.mlp.fc1.weight"])
    assert torch.equal(ms["blocks_u.1.attn.proj.weight"], sd["blocks.11.attn.proj.weight"])
    assert any("not in the checkpoint" in n for n in info.notes)  # modality embeddings etc. start fresh
    # The same file named explicitly, and the features it gives have the base width.
    _, info2 = load_backbone(f"imagenet-mae:{path}", input_shapes=data.input_shapes)
    assert info2.fingerprint == info.fingerprint
    feats = FeatureExtractor(model, batch_size=8, progress=False).get(data, ["joint"])
    assert feats["joint"].shape[-1] == 2 * 768


def test_config_errors_name_the_option():
    for kw, msg in (({"task": "depth"}, "unknown task"), ({"head": "svm"}, "--head"), ({"epochs": 0}, "--epochs"),
                    ({"features": "pixels"}, "--features"), ({"val_fraction": 1.5}, "--val-fraction")):
        with pytest.raises(ValueError, match=msg):
            run_downstream(DownstreamConfig(**kw))
    with pytest.raises(ValueError, match="needs a data root"):
        run_downstream(DownstreamConfig(task="event", data="ave"))


def test_real_layouts_end_to_end(tmp_path):
    """Fake AVE, S4 and MSR-VTT copies in the official layouts run through the whole pipeline."""
    from avalanche_av.benchmarks.real.ave import make_fake_ave
    from avalanche_av.benchmarks.real.avsbench import make_fake_s4
    from avalanche_av.benchmarks.real.msrvtt import make_fake_msrvtt

    make_fake_ave(tmp_path / "ave", counts={"train": 4, "val": 2, "test": 2}, media=True, seconds=10.0)
    make_fake_s4(tmp_path / "s4", counts={"train": 3, "val": 2, "test": 2}, size=32)
    make_fake_msrvtt(tmp_path / "msrvtt", n_train=20, n_test=3, media=True)
    common = dict(checkpoint="random", epochs=2, patience=1, min_epochs=1, progress=False, cache_dir=str(tmp_path / "cache"))
    ave = run_downstream(DownstreamConfig(task="event", data="ave", data_root=str(tmp_path / "ave"),
                                          out_dir=str(tmp_path / "o_ave"), **common))
    assert ave["metrics"]["n_segments"] == 10 and ave["metrics"]["n_test"] == 2
    assert ave["data"]["input_shapes"]["n_frames"] == 10 and ave["backbone"]["overrides"]["n_frames"] == 10
    s4 = run_downstream(DownstreamConfig(task="segment", data="avsbench-s4", data_root=str(tmp_path / "s4"),
                                         out_dir=str(tmp_path / "o_s4"), **common))
    # train clips: frame 1 only; val/test: all five frames
    assert (s4["metrics"]["n_train_frames"], s4["metrics"]["n_val_frames"], s4["metrics"]["n_test_frames"]) == (3, 10, 10)
    ret = run_downstream(DownstreamConfig(task="retrieval-ft", data="msrvtt", data_root=str(tmp_path / "msrvtt"),
                                          out_dir=str(tmp_path / "o_msr"), **common))
    assert ret["metrics"]["gallery"] == 3 and (ret["metrics"]["n_train"], ret["metrics"]["n_val"]) == (18, 2)


# --------------------------------------------------------------------------- pre-trained vs random
# The criterion, for every head: three self-supervised runs (seeds 0, 1, 2) from one random
# initialisation; the head on each pre-trained backbone against the same head on that
# initialisation. The mean gain must exceed the spread (std) over the three seeds, and a floor, so
# that three identical scores cannot pass on a zero spread. Run with -s to see the scores.
BRIEF = dict(n_tasks=1, classes_per_task=4, train_clips_per_class=64, eval_clips_per_class=16)


@pytest.fixture(scope="module")
def brief():
    """160 self-supervised steps on one 4-class task (20 epochs of 256 clips, batch 32), three seeds.

    The learning rate, 3e-4, was chosen by the self-supervised loss on the training clips (4.82-4.87
    after 20 epochs, against 5.01-5.14 at 1e-3), not by any head. At 1e-3 the linear probe fell
    *below* random on one machine (0.64-0.72) and above it on another."""
    data = synthetic_data(**BRIEF)
    return (data, *_pretrain_three(data))


def _pretrain_three(data) -> tuple:
    """The random initialisation (seed 0) and three copies pre-trained with ``ssl_train`` seeds 0, 1, 2
    on the training and validation clips of ``data``."""
    rnd, _ = load_backbone("random", "tiny", data.input_shapes, seed=0)
    train = torch.cat([data.indices("train"), data.indices("val")])
    pre = []
    for seed in (0, 1, 2):
        net = copy.deepcopy(rnd)
        losses = ssl_train(net, data, train, epochs=20, lr=3e-4, batch_size=32, progress=False, seed=seed)
        assert losses[-1] < losses[0] - 0.5, losses  # it did learn
        pre.append(net)
    return rnd, pre


def _assert_beats_random(name: str, score_random: float, scores: list[float], floor: float) -> None:
    gain, spread = float(np.mean(scores)) - score_random, float(np.std(scores, ddof=1))
    print(f"\n{name}: random {score_random:.3f}; pre-trained {[round(x, 3) for x in scores]}; "
          f"gain {gain:+.3f}, spread {spread:.3f}")
    assert gain > max(spread, floor), (score_random, scores)


HEAD_SEEDS = (0, 1, 2)


def _per_backbone(score, rnd, pre) -> tuple[float, list[float]]:
    """``score(extractor, head_seed)`` averaged over the head seeds, for the random and each
    pre-trained backbone; one extractor per backbone, so the head seeds share its features. One
    head seed is not enough: on the random backbone the linear probe's top-1 is 0.844 / 0.734 /
    0.891 for head seeds 0 / 1 / 2 (its validation split has 24 clips)."""
    def avg(net):
        ext = FeatureExtractor(net, progress=False)
        return float(np.mean([score(ext, s) for s in HEAD_SEEDS]))

    return avg(rnd), [avg(n) for n in pre]


@pytest.mark.slow
def test_briefly_pretrained_backbone_beats_random_init_on_classification(brief):
    """Linear probe on the joint features, 64 test clips. Recorded 2026-12-02 (1 thread), mean over
    head seeds: random 0.823; pre-trained 0.901 / 0.953 / 0.891."""
    data, rnd, pre = brief

    def top1(ext, seed):
        return run_classification(data, ext, progress=False, seed=seed)["metrics"]["top1"]

    _assert_beats_random("classify top-1", *_per_backbone(top1, rnd, pre), floor=0.02)


@pytest.mark.slow
def test_briefly_pretrained_backbone_beats_random_init_on_event_localization(brief):
    """Per-segment linear head, 4 segments per clip (always answering background: about 0.47).
    Recorded 2026-12-02 (1 thread), mean over head seeds: random 0.944; pre-trained 0.973 / 0.971 /
    0.979 (256 test segments)."""
    data, rnd, pre = brief

    def acc(ext, seed):
        return run_event_localization(data, ext, progress=False, seed=seed)["metrics"]["segment_accuracy"]

    _assert_beats_random("event segment accuracy", *_per_backbone(acc, rnd, pre), floor=0.01)


@pytest.mark.slow
def test_briefly_pretrained_backbone_beats_random_init_on_segmentation(brief):
    """Audio-conditioned decoder on multi-level video tokens, 256 test frames (predicting nothing
    scores 0.484). Recorded 2026-12-02 (1 thread), mean over head seeds: mIoU random 0.825;
    pre-trained 0.846 / 0.846 / 0.871. With head seed 0 alone the gain was +0.010 against a spread
    of 0.019 on 1 thread and +0.052 against 0.014 on 2: the decoder's own seed matters as much as
    the backbone's."""
    data, rnd, pre = brief

    def miou(ext, seed):
        return run_segmentation(data, ext, progress=False, seed=seed)["metrics"]["mIoU"]

    _assert_beats_random("segmentation mIoU", *_per_backbone(miou, rnd, pre), floor=0.01)


BRIEF8 = dict(n_tasks=1, classes_per_task=8, train_clips_per_class=32, eval_clips_per_class=8)


@pytest.fixture(scope="module")
def brief8():
    """The same 160 steps on 256 clips, of 8 classes instead of 4: retrieval fine-tuning is scored
    on *new* classes, and what the backbone learned on 4 classes did not reach them. Chosen on the
    fine-tuning's validation recall (mean R@1/5/10 on the held-out task's validation clips),
    2026-12-02: with 4 classes random 0.472 against pre-trained 0.431 / 0.458 / 0.500 (no gain);
    with 8 classes random 0.319 against 0.403 / 0.382 / 0.347."""
    return _pretrain_three(synthetic_data(**BRIEF8))


@pytest.mark.slow
def test_briefly_pretrained_backbone_beats_random_init_on_retrieval_finetuning(brief8):
    """Self-supervised fine-tuning on a held-out task (8 classes pre-training never saw; the
    runner's defaults: at most 10 epochs, patience 3, lr 1e-4), then A<->V retrieval over its 64
    test clips; the score is the mean of R@5 and R@10 over both directions (chance 0.117).
    Recorded 2026-12-02: random 0.219; pre-trained 0.301 / 0.266 / 0.293."""
    rnd, pre = brief8
    held = synthetic_data(**BRIEF8, heldout_tasks=1)

    def recall(net):
        m = run_retrieval_finetune(held, net, progress=False)["metrics"]
        return float(np.mean([m[f"R@{k} {d}"] for k in (5, 10) for d in ("a2v", "v2a")]))

    _assert_beats_random("retrieval fine-tuning mean R@5/10", recall(rnd), [recall(n) for n in pre], floor=0.02)


def test_vggsound_and_audioset_classification_through_the_existing_readers(tmp_path):
    from avalanche_av.benchmarks.real import make_fake_audioset, make_fake_vggsound

    make_fake_vggsound(tmp_path / "vs", n_tasks=1, classes_per_task=2, train_per_class=6, test_per_class=2,
                       n_missing=2, bad_kinds=())
    make_fake_audioset(tmp_path / "as", n_tasks=1, classes_per_task=2, train_per_class=6, eval_per_class=2,
                       n_missing=1, bad_kinds=())
    common = dict(task="classify", checkpoint="random", epochs=2, patience=1, progress=False,
                  cache_dir=str(tmp_path / "cache"))
    vs = run_downstream(DownstreamConfig(data="vggsound", data_root=str(tmp_path / "vs"), out_dir=str(tmp_path / "o1"),
                                         **common))
    assert vs["data"]["missing"] == 2 and vs["metrics"]["n_test"] >= 4 and "top1" in vs["metrics"]
    aset = run_downstream(DownstreamConfig(data="audioset", data_root=str(tmp_path / "as"), out_dir=str(tmp_path / "o2"),
                                           **common))
    assert aset["data"]["missing"] == 1 and 0 <= aset["metrics"]["mAP"] <= 1 and "top1" not in aset["metrics"]
