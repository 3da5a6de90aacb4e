"""Manifest and label-table reading/writing, validation, and manifest -> dataset."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avalanche_av.benchmarks.io import (
    AVClipDataset,
    ManifestError,
    check_manifest_files,
    labels_to_targets,
    load_manifest_entries,
    manifest_to_entries,
    read_label_csv,
    read_manifest,
    write_label_csv,
    write_manifest,
)
from tests.test_io_decode import make_clip_set


def _entry(i: int, labels: str = "/m/a", **extra) -> dict:
    return {"video_id": f"v{i}", "wav": f"/abs/v{i}.wav", "video_path": f"/abs/v{i}.mp4", "labels": labels, **extra}


def test_json_round_trip_keeps_extra_keys(tmp_path):
    entries = [_entry(0, clip_id=7, task="t0"), _entry(1, "/m/b,/m/a", clip_id=8, task="t1")]
    path = write_manifest(tmp_path / "m.json", entries)
    raw = json.loads(path.read_text())
    assert set(raw) == {"data"} and raw["data"][1]["task"] == "t1" and raw["data"][0]["clip_id"] == 7
    df = read_manifest(path)
    assert df[["video_id", "labels", "task"]].values.tolist() == [["v0", "/m/a", "t0"], ["v1", "/m/b,/m/a", "t1"]]
    assert df["wav"].tolist() == ["/abs/v0.wav", "/abs/v1.wav"]  # absolute paths unchanged
    # DataFrame input, CSV output, numpy scalars.
    csv = write_manifest(tmp_path / "m.csv", df.assign(clip_id=np.int64(3) + np.arange(2)))
    df2 = read_manifest(csv)
    assert df2["video_path"].tolist() == df["video_path"].tolist() and df2["clip_id"].tolist() == [3, 4]


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    sub = tmp_path / "data"
    (sub / "clips").mkdir(parents=True)
    e = {"video_id": "a", "wav": str(sub / "clips" / "a.wav"), "video_path": str(sub / "clips" / "a.mp4"),
         "labels": ["/m/a", "/m/b"]}
    path = write_manifest(sub / "m.json", [e], relative_paths=True)
    raw = json.loads(path.read_text())["data"][0]
    assert raw["video_path"] == "clips/a.mp4" and raw["labels"] == "/m/a,/m/b"
    df = read_manifest(path)
    assert Path(df["video_path"][0]) == (sub / "clips" / "a.mp4").resolve()
    assert read_manifest(path, resolve_relative=False)["wav"][0] == "clips/a.wav"


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('[{"video_id": "a"}]', r'expected an object \{"data"'),
        ('{"items": []}', r'expected an object \{"data"'),
        ('{"data": {"video_id": "a"}}', "'data' must be a list"),
        ('{"data": [1, 2]}', "entries must be objects"),
        (json.dumps({"data": [_entry(0), {"video_id": "b", "wav": ""}, {"labels": "x"}]}),
         r"2 of 3 entries lack required keys .*entry 1 lacks \['video_path', 'labels'\]"),
        (json.dumps({"data": [_entry(0, labels=5)]}), "key 'labels' must be a string"),
        (json.dumps({"data": [{**_entry(0), "video_path": ""}]}), "empty 'video_path'"),
    ],
)
def test_malformed_manifest_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=match) as ei:
        read_manifest(path)
    assert "bad.json" in str(ei.value) and isinstance(ei.value, ValueError)


def test_manifest_missing_and_bad_csv(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.csv").write_text("video_id,wav\nx,y\n")
    with pytest.raises(ManifestError, match=r"missing required columns \['video_path', 'labels'\]"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="lack required keys"):
        write_manifest(tmp_path / "w.json", [{"video_id": "a"}])


def test_label_table_and_targets(tmp_path):
    path = write_label_csv(tmp_path / "labels.csv", ["dog bark", "siren", "rain"], mids=["/m/d", "/m/s", "/m/r"])
    table = read_label_csv(path)
    assert table.columns.tolist() == ["index", "mid", "display_name"]
    assert table["index"].tolist() == [0, 1, 2] and table["mid"].tolist() == ["/m/d", "/m/s", "/m/r"]
    # First known label wins; display names work too; unknown -> -1.
    got = labels_to_targets(["/m/s,/m/d", "/m/x,/m/r", "rain", "/m/x", ""], table)
    assert got.tolist() == [1, 2, 2, -1, -1] and got.dtype == np.int64
    (tmp_path / "dup.csv").write_text("index,mid,display_name\n0,/m/a,a\n1,/m/a,b\n")
    with pytest.raises(ManifestError, match="duplicate 'mid'"):
        read_label_csv(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("idx,mid,name\n0,/m/a,a\n")
    with pytest.raises(ManifestError, match="missing columns"):
        read_label_csv(tmp_path / "cols.csv")
    (tmp_path / "idx.csv").write_text("index,mid,display_name\nzero,/m/a,a\n")
    with pytest.raises(ManifestError, match="integers"):
        read_label_csv(tmp_path / "idx.csv")


def test_check_manifest_files_counts_and_examples(tmp_path):
    real = tmp_path / "real.mp4"
    real.write_bytes(b"x")
    rows = [{**_entry(i), "video_path": str(real if i % 2 == 0 else tmp_path / f"gone{i}.mp4"),
             "wav": str(real)} for i in range(7)]
    df = pd.DataFrame(rows)
    report = check_manifest_files(df, max_examples=2)
    assert not report.ok
    assert report.missing == {"wav": 0, "video_path": 3}
    assert report.examples["video_path"] == [str(tmp_path / "gone1.mp4"), str(tmp_path / "gone3.mp4")]
    assert report.missing_rows == [1, 3, 5]
    with pytest.raises(ManifestError, match=r"3 of 7 'video_path' paths missing \(e\.g\. .*gone1\.mp4"):
        report.raise_if_missing()
    assert check_manifest_files(df.iloc[[0, 2]]).ok


def test_manifest_to_dataset_end_to_end(tmp_path):
    clips = make_clip_set(tmp_path / "clips")
    write_label_csv(tmp_path / "labels.csv", ["tone a", "tone b"], mids=["/m/a", "/m/b"])
    entries = [
        {"video_id": "g", "wav": "", "video_path": str(clips["good"]), "labels": "/m/b"},
        {"video_id": "h", "wav": str(clips["audio_only"]), "video_path": str(clips["noaudio"]), "labels": "/m/z,/m/a"},
    ]
    mpath = write_manifest(tmp_path / "m.json", entries, relative_paths=True)
    ent = load_manifest_entries(mpath, tmp_path / "labels.csv", clip_id_start=50)
    assert ent["target"].tolist() == [1, 0] and ent["clip_id"].tolist() == [50, 51]
    assert ent["audio_path"].tolist() == [str(clips["good"].resolve()), str(clips["audio_only"].resolve())]
    ds = AVClipDataset(ent, n_frames=2, image_size=16, target_length=32, num_mel_bins=16)
    audio, video, target, clip_id = ds[1]
    assert audio.shape == (32, 16) and video.shape == (2, 3, 16, 16)
    assert int(target) == 0 and int(clip_id) == 51
    # Our writer's own keys win over label lookup and row position.
    own = manifest_to_entries(read_manifest(mpath).assign(target=[5, 6], clip_id=[9, 8]))
    assert own["target"].tolist() == [5, 6] and own["clip_id"].tolist() == [9, 8]
    assert manifest_to_entries(read_manifest(mpath))["target"].tolist() == [-1, -1]
    # Missing files are reported before any decoding.
    write_manifest(tmp_path / "m2.json", entries + [{**entries[0], "video_path": str(tmp_path / "gone.mp4")}])
    with pytest.raises(ManifestError, match="1 of 3 'video_path' paths missing"):
        load_manifest_entries(tmp_path / "m2.json")
    assert isinstance(AVClipDataset(ent).targets, torch.Tensor)


def test_manifest_paths_must_stay_under_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    # A link the user placed inside the root to data elsewhere is followed as a normal path.
    (root / "linked").symlink_to(tmp_path / "outside")
    good = [{"video_id": "a", "wav": "", "video_path": "clips/a.mp4", "labels": ""},
            {"video_id": "b", "wav": str(root / "clips" / "b.wav"), "video_path": "linked/b", "labels": ""}]
    path = write_manifest(root / "manifest.json", good)
    df = read_manifest(path, root=root)
    assert df["video_path"].tolist() == [str(root / "clips" / "a.mp4"), str(root / "linked" / "b")]
    for escaping in ("../outside/frames", "clips/../../outside/x.mp4", str(tmp_path / "outside" / "x.mp4"), "/etc"):
        bad = good + [{"video_id": "evil", "wav": "", "video_path": escaping, "labels": ""}]
        p = write_manifest(root / "bad.json", bad)
        with pytest.raises(ManifestError, match=rf"manifest {re.escape(str(p))}: 1 path\(s\) lie outside the data "
                                                rf"root {re.escape(str(root))}; first: entry 2 \(video_id 'evil'\) "
                                                rf"video_path {re.escape(repr(escaping))}"):
            read_manifest(p, root=root)
        with pytest.raises(ManifestError, match="allow_outside_root=True"):
            load_manifest_entries(p, root=root, check_files=False)
        # The explicit opt-in, or no root at all (a plain CAV-MAE manifest), reads it.
        assert len(read_manifest(p, root=root, allow_outside_root=True)) == 3
        assert len(read_manifest(p)) == 3
    # Several roots: a path inside any of them is fine.
    p = write_manifest(root / "two.json", good + [{"video_id": "c", "wav": "", "video_path": "../outside/c",
                                                     "labels": ""}])
    assert len(read_manifest(p, root=[root, tmp_path / "outside"])) == 3
