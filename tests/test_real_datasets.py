"""Continual-VS / Continual-AS on tiny fake copies of VGGSound and AudioSet laid out like the real ones.

The fake datasets (avalanche_av.benchmarks.real.fake) hold real mp4 clips (32x32, 2 s, 4 fps,
AAC audio) named like the real datasets, with real class names from the shipped definitions,
plus planted problems: rows without files, a corrupt file, a video without audio, a 0.3 s clip.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_av.benchmarks.io import ClipDecodeError, ManifestError
from avalanche_av.benchmarks.real import (
    benchmark_stats,
    continual_as,
    continual_vs,
    format_stats,
    load_task_definition,
    make_fake_audioset,
    make_fake_vggsound,
    order_key,
    read_audioset_ontology,
    read_audioset_segments,
    read_vggsound_csv,
    vggsound_clip_name,
    vggsound_stat,
)
from avalanche_av.benchmarks.real.fake import FAKE_AS_OTHER_LABELS

DECODE = dict(n_frames=2, image_size=32, target_length=64, num_mel_bins=32)
SMALL = dict(classes_per_task=2, max_train_clips_per_class=2, retrieval_clips_per_class=1, **DECODE)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def vs(tmp_path_factory):
    return make_fake_vggsound(tmp_path_factory.mktemp("vggsound"))


@pytest.fixture(scope="module")
def aset(tmp_path_factory):
    return make_fake_audioset(tmp_path_factory.mktemp("audioset"))


def _vs_rows(info) -> pd.DataFrame:
    df = pd.DataFrame(info.rows)
    df["stem"] = [vggsound_clip_name(y, s) for y, s in zip(df["youtube_id"], df["start_seconds"])]
    df["clip_id"] = np.arange(len(df))
    return df


# --------------------------------------------------------------------------- task definitions
def test_task_definitions_from_package_resources():
    raw_vs = json.loads((Path(__file__).parents[1] / "avalanche_av/resources/continual_vs_tasks.json").read_text())
    d = load_task_definition("continual_vs")
    assert d.task_names == tuple(raw_vs["task_order"]) and d.n_tasks == 8
    assert d.classes_per_task == 20 and d.max_train_clips_per_class == 400
    for t, name in enumerate(d.task_names):
        assert d.classes[t] == tuple(sorted(raw_vs["groups"][name])[:20])
    assert len(d.class_names) == 160 and len(set(d.class_names)) == 160
    s = load_task_definition("continual_vs", shuffled=True)
    assert s.task_names == tuple(raw_vs["shuffled_task_order"]) and s.shuffled
    assert s.classes[0] == d.classes[d.task_names.index(s.task_names[0])]
    a = load_task_definition("continual_as")
    assert a.task_names == ("human", "vehicle", "nature", "animal", "others", "home", "music")
    assert a.max_train_clips_per_class is None and a.classes_per_task is None
    assert len(a.classes[0]) == 35 and a.parent_categories[1] == ("Vehicle", "Engine")
    assert load_task_definition("continual_as", shuffled=True).task_names[0] == "nature"
    small = load_task_definition("continual_as", n_tasks=2, classes_per_task=3, max_train_clips_per_class=7)
    assert small.classes == (a.classes[0][:3], a.classes[1][:3]) and small.max_train_clips_per_class == 7
    assert len(small.all_classes[0]) == 35
    assert set(vggsound_stat()["name"]) == {c for g in raw_vs["groups"].values() for c in g}
    with pytest.raises(ValueError, match="unknown task"):
        load_task_definition("continual_vs", task_order=["sports", "cooking"])
    with pytest.raises(ValueError, match="n_tasks=9"):
        load_task_definition("continual_vs", n_tasks=9)
    with pytest.raises(ValueError, match="classes_per_task"):
        load_task_definition("continual_vs", classes_per_task=0)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_task_definition("continual_xx")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- readers
def test_vggsound_csv_with_and_without_header(tmp_path):
    body = '---g-f_I2yQ,1,"bird chirping, tweeting",test\nabc,30,airplane,train\n'
    (tmp_path / "a.csv").write_text(body)
    (tmp_path / "b.csv").write_text("youtube_id,start_seconds,label,split\n" + body)
    for name in ("a.csv", "b.csv"):
        df = read_vggsound_csv(tmp_path / name)
        assert df["label"].tolist() == ["bird chirping, tweeting", "airplane"]
        assert df["start_seconds"].tolist() == [1, 30] and df["start_seconds"].dtype == np.int64
        assert df["split"].tolist() == ["test", "train"] and df["row"].tolist() == [0, 1]
    assert vggsound_clip_name("abc", 30) == "abc_000030"
    (tmp_path / "c.csv").write_text("x,1,a,train\ny,2,b,validation\nz,3,c,dev\n")
    with pytest.raises(ManifestError, match=r"c\.csv: 2 of 3 rows have a split other than .*line 2"):
        read_vggsound_csv(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("x,1.5,a,train\n")
    with pytest.raises(ManifestError, match="start_seconds"):
        read_vggsound_csv(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("x,1,train\n")
    with pytest.raises(ManifestError, match="expected 4 columns"):
        read_vggsound_csv(tmp_path / "e.csv")
    with pytest.raises(ManifestError, match="not found"):
        read_vggsound_csv(tmp_path / "nope.csv")


def test_audioset_segment_and_ontology_readers(tmp_path):
    official = (
        "# Segments csv created Sun Mar  5 10:54:25 2017\n"
        "# num_ytids=2, num_segs=2, num_unique_labels=3, num_positive_labels=3\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'
    )
    (tmp_path / "eval_segments.csv").write_text(official)
    df = read_audioset_segments(tmp_path / "eval_segments.csv")
    assert df["ytid"].tolist() == ["--PJHxphWEs", "--ZhevVpy1s"]
    assert df["labels"].tolist() == [("/m/09x0r", "/t/dd00088"), ("/m/012xff",)]
    assert df["start_seconds"].tolist() == [30.0, 50.0] and df["split"].tolist() == ["eval_segments"] * 2
    (tmp_path / "h.csv").write_text('YTID,start_seconds,end_seconds,positive_labels\nabc,0,10,"/m/a,/m/b"\n')
    assert read_audioset_segments(tmp_path / "h.csv", split="train")["labels"].tolist() == [("/m/a", "/m/b")]
    (tmp_path / "bad.csv").write_text("# c\n# c\n# c\nabc, 10.0, 5.0, \"/m/a\"\ndef, 0, 10, \"/m/b\"\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: 1 of 2 rows have end_seconds <= start_seconds.*line 4"):
        read_audioset_segments(tmp_path / "bad.csv")
    (tmp_path / "unq.csv").write_text("abc, 0, 10, /m/a,/m/b\n")
    with pytest.raises(ManifestError, match="must be quoted|expected 4 columns"):
        read_audioset_segments(tmp_path / "unq.csv")

    (tmp_path / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/012xff,Bark\n')
    onto = read_audioset_ontology(tmp_path / "class_labels_indices.csv")
    assert onto["mid"].tolist() == ["/m/09x0r", "/m/012xff"] and onto["display_name"].tolist() == ["Speech", "Bark"]
    (tmp_path / "ontology.json").write_text(json.dumps([{"id": "/m/0jbk", "name": "Animal", "child_ids": ["/m/012xff"]},
                                                        {"id": "/m/012xff", "name": "Bark"}]))
    oj = read_audioset_ontology(tmp_path / "ontology.json")
    assert oj["display_name"].tolist() == ["Animal", "Bark"] and oj["child_ids"].iloc[0] == ("/m/012xff",)
    (tmp_path / "dup.json").write_text(json.dumps([{"id": "x", "name": "A"}, {"id": "x", "name": "B"}]))
    with pytest.raises(ManifestError, match="duplicate"):
        read_audioset_ontology(tmp_path / "dup.json")


def test_order_key_is_seeded_and_order_independent():
    s = pd.Series(["a_000001", "b_000002", "c_000003", "d_000004"])
    k = order_key(s, 0)
    assert k.dtype == np.uint64 and len(set(k.tolist())) == 4
    assert order_key(s[::-1], 0).tolist() == k[::-1].tolist()
    assert order_key(s, 1).tolist() != k.tolist()


# --------------------------------------------------------------------------- Continual-VS
def test_continual_vs_tasks_classes_caps_retrieval_and_pool(vs):
    with pytest.warns(RuntimeWarning) as rec:
        bm = continual_vs(vs.root, scan=True, **SMALL)
    messages = [str(w.message) for w in rec]
    assert any(re.search(r"2 of \d+ clips missing \(train: 2\)", m) for m in messages)
    assert any("bad clip(s) skipped" in m for m in messages)  # those the scan met while filling the caps
    d = load_task_definition("continual_vs")
    rows = _vs_rows(vs)
    assert bm.task_names == list(d.task_names) and len(bm.train_stream) == 8 and len(bm.test_stream) == 8
    assert bm.class_names == [c for cs in d.classes for c in cs[:2]]
    ct = bm.clip_table
    for t, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert tr.task_label == t and te.task_label == t
        tgt = [int(x) for x in tr.dataset.targets]
        assert sorted(tgt) == [2 * t, 2 * t, 2 * t + 1, 2 * t + 1]  # 2 classes x cap 2
        assert sorted(int(x) for x in te.dataset.targets) == [2 * t, 2 * t + 1]  # 1 retrieval clip per class
        assert bm.retrieval_sets[t] is te.dataset
    # Roles match the source table: training clips from 'train', retrieval clips from 'test', labels agree.
    merged = ct.merge(rows[["clip_id", "stem", "label", "split"]], on="clip_id", suffixes=("", "_src"))
    assert (merged["video_id"] == merged["stem"]).all() and (merged["split"] == merged["split_src"]).all()
    task_rows = merged[merged["role"] != "pool"]
    assert (task_rows["class_name"] == task_rows["label"]).all()
    assert set(task_rows.loc[task_rows["role"] == "train", "split"]) == {"train"}
    assert set(task_rows.loc[task_rows["role"] == "retrieval", "split"]) == {"test"}
    # The pool: training-split clips of non-task classes only (the groups' last classes here).
    pool = merged[merged["role"] == "pool"]
    assert len(pool) == 16 and len(bm.pretrain_pool) == 16
    assert not set(pool["label"]) & set(bm.class_names) and set(pool["split"]) == {"train"}
    assert set(int(x) for x in bm.pretrain_pool.targets) == {-1}
    assert ct["clip_id"].is_unique
    # Planted problems: the missing rows are reported; bad files never make it into a set.
    assert bm.missing_report.n_missing == 2 and set(bm.missing_report.examples) == set(vs.missing)
    assert not set(ct["video_id"]) & (set(vs.bad) | set(vs.missing))
    assert bm.config.n_frames == 2 and bm.config.target_length == 64 and bm.config.max_train_clips_per_class == 2


def test_continual_vs_sample_contract_and_workers(vs):
    bm = _quiet(continual_vs, vs.root, n_tasks=2, scan=True, **SMALL)
    audio, video, target, clip_id, task = bm.train_stream[1].dataset[0]
    assert audio.shape == (64, 32) and audio.dtype == torch.float16
    assert video.shape == (2, 3, 32, 32) and video.dtype == torch.uint8
    assert target.dtype == torch.int64 and target.dim() == 0 and int(target) in (2, 3)
    assert clip_id.dtype == torch.int64 and int(task) == 1
    # Eval-mode retrieval clips decode deterministically.
    a1, v1, *_ = bm.test_stream[0].dataset[0]
    a2, v2, *_ = bm.test_stream[0].dataset[0]
    assert torch.equal(a1, a2) and torch.equal(v1, v2)
    # The datasets do no work at construction and are safe to use from DataLoader workers.
    loader = DataLoader(bm.train_stream[0].dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 1 and batches[0][1].shape == (4, 2, 3, 32, 32) and batches[0][4].tolist() == [0] * 4


def test_continual_vs_shuffled_order_and_overrides(vs):
    bm = _quiet(continual_vs, vs.root, shuffled=True, **SMALL)
    raw = load_task_definition("continual_vs", shuffled=True)
    assert bm.task_names == list(raw.task_names) and bm.config.shuffled
    assert bm.class_names[:2] == list(raw.classes[0][:2])  # music first
    # Different seeds choose different clips to fill the caps, deterministically.
    a = _quiet(continual_vs, vs.root, scan=True, seed=0, **SMALL).clip_table
    b = _quiet(continual_vs, vs.root, scan=True, seed=0, **SMALL).clip_table
    c = _quiet(continual_vs, vs.root, scan=True, seed=5, **SMALL).clip_table
    assert a["clip_id"].tolist() == b["clip_id"].tolist()
    assert a["clip_id"].tolist() != c["clip_id"].tolist()
    # No cap: every good training clip of each class (3; the first class also had 3 bad ones).
    full = _quiet(continual_vs, vs.root, n_tasks=1, classes_per_task=2, max_train_clips_per_class=None,
                  retrieval_clips_per_class=5, scan=True, **DECODE)
    assert len(full.train_stream[0].dataset) == 6 and len(full.test_stream[0].dataset) == 4
    tasks, classes = benchmark_stats(full)
    assert classes["train_used"].tolist() == [3, 3] and classes["retrieval_used"].tolist() == [2, 2]
    assert classes["bad"].tolist() == [3, 0] and classes["missing"].tolist() == [2, 0]
    assert tasks["train_clips"].tolist() == [6]


def test_bad_clips_reported_skipped_or_raised(vs):
    # A scan of the chosen clips finds every planted bad file; they are skipped and counted by name.
    bm = _quiet(continual_vs, vs.root, n_tasks=1, classes_per_task=1, max_train_clips_per_class=10,
                retrieval_clips_per_class=1, scan=True, **DECODE)
    bad = bm.bad_clips.set_index("video_id")
    assert set(bad.index) == set(vs.bad)
    by_kind = {kind: bad.loc[stem, "reason"] for stem, kind in vs.bad.items()}
    assert "corrupt" in by_kind["corrupt"] and "no audio stream" in by_kind["silent"]
    assert by_kind["short"].startswith("too short")
    assert len(bm.train_stream[0].dataset) == 3 and int(bm.task_table["bad"].iloc[0]) == 3
    with pytest.raises(ClipDecodeError, match=r"3 bad clip\(s\).*on_error='raise'"):
        _quiet(continual_vs, vs.root, n_tasks=1, classes_per_task=1, max_train_clips_per_class=10, scan=True,
               on_error="raise", **DECODE)
    with pytest.raises(ManifestError, match=r"2 of \d+ clips missing \(train: 2\); e\.g\. " + vs.missing[0]):
        continual_vs(vs.root, n_tasks=1, missing="raise", **SMALL)

    # Without a scan, bad clips are found when decoded: skipped (and counted) or raised, by name.
    lazy = _quiet(continual_vs, vs.root, n_tasks=1, classes_per_task=1, max_train_clips_per_class=10,
                  retrieval_clips_per_class=1, **DECODE)
    ds = lazy.train_stream[0].dataset
    assert len(ds) == 6
    inner = _find_clip_dataset(ds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [inner[i] for i in range(len(inner))]
    assert all(s[1].shape == (2, 3, 32, 32) for s in samples)
    assert inner.skipped == 3 and len(inner.bad_clips) == 3
    named = " ".join(str(w.message) for w in caught)
    assert all(stem in named for stem in vs.bad)
    strict = _quiet(continual_vs, vs.root, n_tasks=1, classes_per_task=1, max_train_clips_per_class=10,
                    retrieval_clips_per_class=1, on_error="raise", **DECODE)
    sds = _find_clip_dataset(strict.train_stream[0].dataset)
    bad_idx = [i for i, p in enumerate(sds.video_paths) if Path(p).stem in vs.bad]
    with pytest.raises(ClipDecodeError) as ei:
        sds[bad_idx[0]]
    assert Path(ei.value.path).stem in vs.bad


def _find_clip_dataset(ds):
    """The RealClipDataset inside an Avalanche dataset wrapper."""
    from avalanche_av.benchmarks.real import RealClipDataset

    stack = [ds]
    while stack:
        d = stack.pop()
        if isinstance(d, RealClipDataset):
            return d
        stack += list(getattr(d, "_datasets", []) or [])
        if hasattr(d, "dataset"):
            stack.append(d.dataset)
    raise AssertionError("no RealClipDataset found")


def test_stats_table_and_cli(vs, capsys):
    from avalanche_av.cli import main

    bm = _quiet(continual_vs, vs.root, scan=True, **SMALL)
    text = format_stats(bm)
    assert "sports -> music" in text and "basketball bounce" in text and "bad clips left out" in text
    tasks, classes = benchmark_stats(bm)
    assert tasks["train_clips"].tolist() == [4] * 8 and tasks["classes"].tolist() == [2] * 8
    assert len(classes) == 16 and classes["retrieval_used"].tolist() == [1] * 16
    rc = _quiet(main, ["stats", "--benchmark", "continual-vs", "--data-root", str(vs.root), "--classes-per-task", "2",
                       "--max-train-clips-per-class", "2", "--no-per-class"])
    out = capsys.readouterr().out
    assert rc == 0 and "continual_vs" in out and "others_part2" in out
    assert main(["stats", "--benchmark", "continual-vs", "--data-root", str(vs.root / "nope")]) == 2


def test_run_config_builds_real_benchmark_with_model_shapes(vs):
    from avalanche_av.experiment import RunConfig, build_benchmark
    from avalanche_av.models import get_config

    cfg = RunConfig(benchmark="continual-vs-shuffled", data_root=str(vs.root), model="tiny", n_tasks=2,
                    classes_per_task=2, train_clips_per_class=2, eval_clips_per_class=1)
    bm = _quiet(build_benchmark, cfg)
    mc = get_config("tiny")
    assert (bm.config.n_frames, bm.config.image_size, bm.config.target_length, bm.config.num_mel_bins) == (
        mc.n_frames, mc.image_size, mc.audio_length, mc.num_mel_bins)
    assert bm.task_names == list(load_task_definition("continual_vs", shuffled=True).task_names[:2])
    audio, video, *_ = bm.train_stream[0].dataset[0]
    assert audio.shape == (mc.audio_length, mc.num_mel_bins) and video.shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match="--data-root"):
        build_benchmark(RunConfig(benchmark="continual-vs"))
    with pytest.raises(ValueError, match="unknown real benchmark"):
        build_benchmark(RunConfig(benchmark="continual-xx", data_root=str(vs.root)))


# --------------------------------------------------------------------------- Continual-AS
def test_continual_as_membership_spanning_unclassed_pool(aset):
    with pytest.warns(RuntimeWarning, match=r"1 of \d+ clips missing"):
        bm = continual_as(aset.root, scan=True, classes_per_task=2, max_train_clips_per_class=2,
                          retrieval_clips_per_class=1, **DECODE)
    d = load_task_definition("continual_as", classes_per_task=2)
    assert bm.task_names == list(d.task_names) and len(bm.train_stream) == 7
    assert bm.class_names == [c for cs in d.classes for c in cs]
    rows = pd.DataFrame(aset.rows)
    rows["clip_id"] = np.arange(len(rows))  # train rows first, then eval rows, as in the tables
    rows = pd.concat([rows[rows["split"] == "train"], rows[rows["split"] == "eval"]], ignore_index=True)
    rows["clip_id"] = np.arange(len(rows))
    ct = bm.clip_table.merge(rows[["clip_id", "stem", "names", "split"]], on="clip_id", suffixes=("", "_src"))
    assert (ct["video_id"] == ct["stem"]).all()
    for t in range(7):
        assert sorted(int(x) for x in bm.train_stream[t].dataset.targets) == [2 * t, 2 * t, 2 * t + 1, 2 * t + 1]
        assert sorted(int(x) for x in bm.test_stream[t].dataset.targets) == [2 * t, 2 * t + 1]
    used = ct[ct["role"] != "pool"]
    # Every used clip carries its class, touches a single task, and retrieval clips come from eval.
    assert all(c in n for c, n in zip(used["class_name"], used["names"]))
    assert set(used.loc[used["role"] == "retrieval", "split"]) == {"eval"}
    spanning = {r["stem"] for r in aset.rows if len(r["names"]) == 2 and not any(
        n in p for t in range(7) for p in [d.parent_categories[t]] for n in r["names"])}
    assert len(spanning) == 7 and not spanning & set(ct["video_id"])
    assert bm.task_table["spanning_excluded"].tolist() == [2] * 7 and bm.task_table["unclassed"].tolist() == [1] * 7
    pool = ct[ct["role"] == "pool"]
    assert len(pool) == 3 and all(set(n) <= set(FAKE_AS_OTHER_LABELS) for n in pool["names"])
    assert any(v.startswith("Y") for v in pool["video_id"])  # the Y<YTID>.mp4 naming was found
    assert bm.config.max_train_clips_per_class == 2 and bm.missing_report.n_missing == 1

    # include_unclassed: the parent-category-only clip of each task trains it with target -1, uncapped.
    bu = _quiet(continual_as, aset.root, scan=True, include_unclassed=True, n_tasks=2, classes_per_task=2,
                max_train_clips_per_class=2, retrieval_clips_per_class=1, **DECODE)
    for t in range(2):
        assert sorted(int(x) for x in bu.train_stream[t].dataset.targets) == [-1, 2 * t, 2 * t, 2 * t + 1, 2 * t + 1]


def test_continual_as_ontology_json_and_default_sizes(tmp_path):
    info = make_fake_audioset(tmp_path / "as_json", ontology_format="json", n_tasks=2, train_per_class=1,
                              eval_per_class=1, bad_kinds=(), n_missing=0, n_pool=1)
    bm = _quiet(continual_as, info.root, n_tasks=2, **DECODE)
    # Default: all classes of each task (only the first two have clips here, so the rest are empty), no cap.
    assert bm.config.classes_per_task is None and bm.config.max_train_clips_per_class is None
    assert len(bm.class_names) == len(load_task_definition("continual_as").classes[0]) + 14
    tasks, classes = benchmark_stats(bm)
    assert tasks["train_clips"].tolist() == [2, 2] and int((classes["train_used"] > 0).sum()) == 4
    with pytest.raises(FileNotFoundError, match="no AudioSet ontology table"):
        (info.root / "ontology.json").unlink()
        continual_as(info.root, **DECODE)


# --------------------------------------------------------------------------- other layouts
def test_frame_folders_audio_files_and_other_containers(tmp_path):
    import soundfile as sf
    from PIL import Image

    from avalanche_av.benchmarks.io import decode_frames, load_audio

    info = make_fake_vggsound(tmp_path / "vs", n_tasks=1, classes_per_task=1, train_per_class=3, test_per_class=1,
                              pool_classes_per_task=0, n_missing=0, bad_kinds=())
    rows = _vs_rows(info)
    train = rows[rows["split"] == "train"]["stem"].tolist()
    # Clip 0: pre-extracted frames + a flac file instead of the mp4.
    mp4 = info.clips[train[0]]
    (tmp_path / "vs" / "frames" / train[0]).mkdir(parents=True)
    for i, f in enumerate(decode_frames(mp4, 5)):
        Image.fromarray(f).save(tmp_path / "vs" / "frames" / train[0] / f"img_{i}.jpg")
    (tmp_path / "vs" / "audio").mkdir()
    sf.write(tmp_path / "vs" / "audio" / f"{train[0]}.flac", load_audio(mp4).numpy(), 16000)
    mp4.unlink()
    # Clip 1: another container suffix; clip 2: a separate wav next to the mp4.
    info.clips[train[1]].rename(info.clips[train[1]].with_suffix(".mkv"))
    sf.write(tmp_path / "vs" / "audio" / f"{train[2]}.wav", load_audio(info.clips[train[2]]).numpy(), 16000)

    bm = continual_vs(tmp_path / "vs", n_tasks=1, classes_per_task=1, max_train_clips_per_class=None,
                      retrieval_clips_per_class=1, **DECODE)
    assert bm.missing_report.n_missing == 0
    ct = bm.clip_table.set_index("video_id")
    assert Path(ct.loc[train[0], "video_path"]).is_dir() and ct.loc[train[0], "audio_path"].endswith(".flac")
    assert ct.loc[train[1], "video_path"].endswith(".mkv") and ct.loc[train[1], "audio_path"].endswith(".mkv")
    assert ct.loc[train[2], "video_path"].endswith(".mp4") and ct.loc[train[2], "audio_path"].endswith(".wav")
    ds = _find_clip_dataset(bm.train_stream[0].dataset)
    ds.train = False
    for i in range(len(ds)):
        audio, video, *_ = ds[i]
        assert audio.shape == (64, 32) and video.shape == (2, 3, 32, 32)


def test_generators_use_a_prepare_cache(tmp_path):
    from avalanche_av.benchmarks.prepare import prepare

    info = make_fake_vggsound(tmp_path / "vs", n_tasks=2)
    res = prepare(tmp_path / "vs" / "video", tmp_path / "vs" / "prepared", num_workers=0, progress=False,
                  image_size=32, fps=2.0)
    assert res.n_bad == 3
    bm = _quiet(continual_vs, tmp_path / "vs", n_tasks=2, classes_per_task=2, max_train_clips_per_class=10,
                retrieval_clips_per_class=1, **DECODE)
    assert bm.missing_report.n_from_cache >= len(bm.clip_table)
    assert all(Path(p).is_dir() and "prepared" in p for p in bm.clip_table["video_path"])
    assert all(p.endswith(".wav") for p in bm.clip_table["audio_path"])
    assert set(bm.bad_clips["video_id"]) == set(info.bad) and set(bm.bad_clips["found_by"]) == {"prepare"}
    audio, video, *_ = bm.train_stream[0].dataset[0]
    assert audio.shape == (64, 32) and video.shape == (2, 3, 32, 32)
    # prepared=None ignores the cache: raw files again, bad ones unknown until decoded.
    raw = _quiet(continual_vs, tmp_path / "vs", n_tasks=2, classes_per_task=2, max_train_clips_per_class=10,
                 retrieval_clips_per_class=1, prepared=None, **DECODE)
    assert all(p.endswith(".mp4") for p in raw.clip_table["video_path"]) and len(raw.bad_clips) == 0


# --------------------------------------------------------------------------- hostile tables and caches
def _append_rows(root: Path, rows: list[tuple]) -> None:
    with open(root / "vggsound.csv", "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(",".join(str(x) for x in r) + "\n")


def _one_class(tmp_path, **kw):
    return make_fake_vggsound(tmp_path / "vs", n_tasks=1, classes_per_task=1, train_per_class=3, test_per_class=2,
                              pool_classes_per_task=1, pool_per_class=1, n_missing=0, bad_kinds=(), **kw)


def test_duplicated_and_leaked_rows_are_reported_and_used_once(tmp_path):
    info = _one_class(tmp_path)
    rows = _vs_rows(info)
    train = rows[(rows["split"] == "train") & (rows["label"] == rows["label"].iloc[0])]
    dup, leak = train.iloc[0], train.iloc[1]
    # The first training clip listed 3x in all, the second also listed as a test clip.
    _append_rows(info.root, [(dup["youtube_id"], dup["start_seconds"], dup["label"], "train")] * 2
                 + [(leak["youtube_id"], leak["start_seconds"], leak["label"], "test")])
    with pytest.warns(RuntimeWarning, match=rf"2 duplicated row\(s\) dropped \(e\.g\. {dup['stem']}\); 1 clip\(s\) "
                                            rf"listed for both training and evaluation, dropped from training "
                                            rf"\(e\.g\. {leak['stem']}\)"):
        bm = continual_vs(info.root, n_tasks=1, classes_per_task=1, max_train_clips_per_class=None,
                          retrieval_clips_per_class=5, **DECODE)
    ct = bm.clip_table
    assert ct["video_id"].is_unique  # no clip is used twice, in any role
    roles = dict(zip(ct["video_id"], ct["role"]))
    assert roles[dup["stem"]] == "train" and roles[leak["stem"]] == "retrieval"
    assert len(bm.train_stream[0].dataset) == 2 and len(bm.test_stream[0].dataset) == 3
    rep = bm.data_report
    assert (rep.duplicated, rep.leaked_dropped, rep.unknown_labels) == (2, 1, 0)
    assert rep.to_dict()["duplicated"] == 2 and rep.to_dict()["leaked_dropped"] == 1


def test_check_clip_rows_hand_example():
    from avalanche_av.benchmarks.real.readers import check_clip_rows

    t = pd.DataFrame({"youtube_id": ["a", "a", "a", "b", "b", "c", "d"], "start_seconds": [0, 0, 0, 5, 5, 0, 0],
                      "label": ["x", "x", "y", "z", "z", "q", "r"],
                      "split": ["train", "train", "train", "train", "test", "train", "test"]})
    r = check_clip_rows(t, ["youtube_id", "start_seconds"], names=t["youtube_id"], eval_split="test",
                        label_col="label", source="t")
    # Rows 1-2 repeat row 0 (row 2 with another label); b is in train and test: its train row goes.
    assert r.keep.tolist() == [True, False, False, False, True, True, True]
    assert (r.duplicated, r.label_conflicts, r.leaked_dropped) == (2, 1, 1)
    assert r.examples == {"duplicated": ["a"], "leaked_dropped": ["b"]}


def test_unknown_label_is_left_out_and_reported_by_stats(tmp_path, capsys):
    from avalanche_av.benchmarks.real.tasks import find_unknown_labels
    from avalanche_av.cli import main

    info = _one_class(tmp_path)
    rows = _vs_rows(info)
    pool_row = rows[rows["label"] != rows["label"].iloc[0]].iloc[0]
    # A misspelt class with a clip on disk: without the check it would join the pre-training pool.
    src = info.clips[pool_row["stem"]]
    stem = vggsound_clip_name("typo0000001", 0)
    (src.parent / f"{stem}.mp4").write_bytes(src.read_bytes())
    _append_rows(info.root, [("typo0000001", 0, "dog barkingg", "train")])
    with pytest.warns(RuntimeWarning, match=r"1 row\(s\) with a label that is not a class of the dataset, left out: "
                                            r"'dog barkingg' \(1\)"):
        bm = continual_vs(info.root, n_tasks=1, classes_per_task=1, retrieval_clips_per_class=1, **DECODE)
    assert bm.data_report.unknown_labels == 1
    assert stem not in set(bm.clip_table["video_id"]) and stem not in set(bm.pretrain_table["video_id"])
    assert pool_row["stem"] in set(bm.pretrain_table["video_id"])  # known non-task classes still pool
    rc = main(["stats", "--benchmark", "continual-vs", "--data-root", str(info.root), "--n-tasks", "1",
               "--classes-per-task", "1", "--retrieval-clips-per-class", "1", "--no-per-class"])
    out = capsys.readouterr().out
    assert rc == 0 and "unknown labels 1" in out and "'dog barkingg' (1)" in out
    u = find_unknown_labels(["a", "zz", ("a", "b"), "zz"], known=["a"])
    assert u.mask.tolist() == [False, True, True, True] and u.labels == {"zz": 2, "b": 1} and u.n_rows == 3


def _outside_cache(tmp_path, info, video_path: str, wav: str, stem: str) -> Path:
    """A prepare cache at ROOT/prepared whose manifest names the given paths for ``stem``."""
    from PIL import Image

    from avalanche_av.benchmarks.io import decode_frames, load_audio, write_wav

    outside = tmp_path / "outside"
    (outside / "frames" / stem).mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(decode_frames(info.clips[stem], 2)):
        Image.fromarray(f).save(outside / "frames" / stem / f"frame_{i:04d}.jpg")
    write_wav(outside / "audio" / f"{stem}.wav", load_audio(info.clips[stem]))
    prep = info.root / "prepared"
    prep.mkdir(exist_ok=True)
    entry = {"video_id": stem, "wav": wav, "video_path": video_path, "labels": ""}
    (prep / "manifest.json").write_text(json.dumps({"data": [entry]}))
    return prep / "manifest.json"


@pytest.mark.parametrize("absolute", [False, True])
def test_cache_manifest_path_escaping_the_root_is_refused(tmp_path, absolute, capsys):
    info = _one_class(tmp_path)
    stem = _vs_rows(info).query("split == 'train'")["stem"].iloc[0]
    if absolute:
        vp, wav = str(tmp_path / "outside" / "frames" / stem), str(tmp_path / "outside" / "audio" / f"{stem}.wav")
    else:
        vp, wav = f"../../outside/frames/{stem}", f"../../outside/audio/{stem}.wav"
    manifest = _outside_cache(tmp_path, info, vp, wav, stem)
    kw = dict(n_tasks=1, classes_per_task=1, retrieval_clips_per_class=1, max_train_clips_per_class=None, **DECODE)
    with pytest.raises(ManifestError) as ei:
        _quiet(continual_vs, info.root, **kw)
    msg = str(ei.value)
    assert str(manifest) in msg and f"video_id {stem!r}" in msg and repr(wav) in msg
    assert "outside the data root" in msg and "allow_outside_root=True" in msg
    # The explicit opt-in reads it (and the clip is trained on from there).
    bm = _quiet(continual_vs, info.root, allow_outside_root=True, **kw)
    ct = bm.clip_table.set_index("video_id")
    assert Path(ct.loc[stem, "video_path"]).resolve() == (tmp_path / "outside" / "frames" / stem).resolve()
    # On the command line: one error line and exit 2, or the opt-in flag.
    from avalanche_av.cli import main

    args = ["stats", "--benchmark", "continual-vs", "--data-root", str(info.root), "--n-tasks", "1",
            "--classes-per-task", "1", "--retrieval-clips-per-class", "1", "--no-per-class"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(manifest) in err and "Traceback" not in err
    assert _quiet(main, args + ["--allow-outside-root"]) == 0
    if absolute:
        return
    # `run` (and `compare`, same flags) refuses it too, and trains with the opt-in.
    run = ["run", "--strategy", "finetune", "--benchmark", "continual-vs", "--data-root", str(info.root),
           "--n-tasks", "1", "--classes-per-task", "1", "--eval-clips-per-class", "1", "--epochs", "1",
           "--batch-size", "2", "--no-progress", "--no-csv", "--no-diagnostics", "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert _quiet(main, run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(manifest) in err and "Traceback" not in err
    assert _quiet(main, run + ["--allow-outside-root"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["allow_outside_root"] is True


def test_eight_channel_clip_in_a_benchmark_decodes(tmp_path):
    # The VGGSound root with one mp4 whose audio is 8-channel 48 kHz AAC: every
    # DataLoader worker used to die with SIGSEGV on it ("DataLoader worker killed by signal").
    from avalanche_av.benchmarks.io import write_av_clip
    from avalanche_av.benchmarks.real import fake_clip_content

    info = _one_class(tmp_path)
    stem = _vs_rows(info).query("split == 'train'")["stem"].iloc[0]
    frames, _ = fake_clip_content(1, 2.0, 4.0, 32)
    sr = 48000
    t = np.arange(2 * sr) / sr
    audio = np.stack([0.03 * (k + 1) * np.sin(2 * np.pi * (150 + 40 * k) * t) for k in range(8)]).astype(np.float32)
    write_av_clip(info.clips[stem], frames, 4.0, audio, sr)
    bm = _quiet(continual_vs, info.root, n_tasks=1, classes_per_task=1, max_train_clips_per_class=None,
                retrieval_clips_per_class=1, scan=True, **DECODE)
    assert len(bm.bad_clips) == 0 and stem in set(bm.clip_table["video_id"])
    inner = _find_clip_dataset(bm.train_stream[0].dataset)
    i = inner.video_ids.index(stem)
    audio_fb, video, *_ = inner[i]
    assert audio_fb.shape == (64, 32) and torch.isfinite(audio_fb.float()).all() and video.shape == (2, 3, 32, 32)
    assert inner.skipped == 0 and not inner.bad_clips
    batches = list(DataLoader(bm.train_stream[0].dataset, batch_size=4, num_workers=1))
    assert sum(len(b[0]) for b in batches) == 3
