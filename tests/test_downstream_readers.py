"""Readers for AVE, AVSBench S4 and MSR-VTT split manifests, on generated fake layouts.

Counts must match what was written; a missing file, a malformed line and a mask of the wrong
size each raise a ManifestError (a ValueError) whose message names the offending file.
"""
import numpy as np
import pytest
from PIL import Image

from avalanche_av.benchmarks.io.errors import ManifestError
from avalanche_av.benchmarks.real.ave import ave_segment_labels, make_fake_ave, read_ave, read_ave_annotations
from avalanche_av.benchmarks.real.avsbench import S4MaskSource, make_fake_s4, read_s4, read_s4_meta
from avalanche_av.benchmarks.real.msrvtt import make_fake_msrvtt, read_msrvtt, read_msrvtt_split


# --------------------------------------------------------------------------- AVE
def test_ave_counts_classes_and_segments(tmp_path):
    written = make_fake_ave(tmp_path, counts={"train": 7, "val": 3, "test": 4})
    t = read_ave(tmp_path)
    assert len(t.clips) == 14
    assert t.clips["split"].value_counts().to_dict() == {"train": 7, "test": 4, "val": 3}
    assert t.class_names == sorted({r[0] for rows in written.values() for r in rows})
    assert t.segment_labels.shape == (14, 10)
    # Segment labels follow [start, end) exactly, background elsewhere.
    for i, (cat, vid, _q, s, e) in enumerate(written["train"]):
        row = t.clips.iloc[i]
        assert row["video_id"] == vid
        want = np.full(10, t.background)
        want[s:e] = t.class_names.index(cat)
        np.testing.assert_array_equal(t.segment_labels[i], want)


def test_ave_segment_labels_hand_values():
    lab = ave_segment_labels(np.array([0, 3]), np.array([2, 10]), np.array([1, 0]), 10, background=5)
    np.testing.assert_array_equal(lab[0], [1, 1, 5, 5, 5, 5, 5, 5, 5, 5])
    np.testing.assert_array_equal(lab[1], [5, 5, 5, 0, 0, 0, 0, 0, 0, 0])


def test_ave_missing_split_file_names_it(tmp_path):
    make_fake_ave(tmp_path)
    (tmp_path / "valSet.txt").unlink()
    with pytest.raises(ManifestError, match="valSet.txt"):
        read_ave(tmp_path)


def test_ave_malformed_line_names_file_and_line(tmp_path):
    make_fake_ave(tmp_path)
    f = tmp_path / "testSet.txt"
    f.write_text(f.read_text() + "Dog&only_three&good\n")
    with pytest.raises(ManifestError, match=r"testSet\.txt: line 5: expected 5"):
        read_ave(tmp_path)
    f.write_text("Dog&abc&good&4&2\n")
    with pytest.raises(ManifestError, match=r"testSet\.txt: line 1: need 0 <= StartTime < EndTime"):
        read_ave_annotations(f)
    f.write_text("Dog&abc&good&x&2\n")
    with pytest.raises(ManifestError, match="whole seconds"):
        read_ave_annotations(f)


def test_ave_missing_video_file(tmp_path):
    written = make_fake_ave(tmp_path)
    vid = written["val"][1][1]
    (tmp_path / "AVE" / f"{vid}.mp4").unlink()
    with pytest.raises(ManifestError, match=f"AVE/{vid}.mp4"):
        read_ave(tmp_path)
    t = read_ave(tmp_path, on_missing="skip")
    assert t.missing == [vid] and len(t.clips) == 11


# --------------------------------------------------------------------------- AVSBench S4
def test_s4_counts_and_mask_paths(tmp_path):
    make_fake_s4(tmp_path, counts={"train": 4, "val": 2, "test": 3}, size=24, media=False)
    t = read_s4(tmp_path)
    assert len(t.clips) == 9
    assert t.clips["split"].value_counts().to_dict() == {"train": 4, "test": 3, "val": 2}
    annotated = t.clips["mask_paths"].map(lambda ms: sum(bool(m) for m in ms))
    # Train clips carry the first frame's mask only; val/test all five.
    assert annotated[t.clips["split"] == "train"].tolist() == [1] * 4
    assert annotated[t.clips["split"] != "train"].tolist() == [5] * 5
    assert len(read_s4(tmp_path, splits=("test",)).clips) == 3


def test_s4_masks_load_resized_and_flagged(tmp_path):
    make_fake_s4(tmp_path, counts={"train": 1, "val": 0, "test": 1}, size=24, media=False)
    t = read_s4(tmp_path)
    src = S4MaskSource(t.clips["mask_paths"], size=48)
    m_train, v_train = src[0]
    m_test, v_test = src[1]
    assert m_train.shape == (5, 48, 48) and v_train.tolist() == [True, False, False, False, False]
    assert v_test.all()
    # The square covers a third of the side: (8/24)^2 of the pixels, kept by nearest resizing.
    assert abs(float(m_test.float().mean()) - (8 / 24) ** 2) < 1e-6
    raw = np.asarray(Image.open(t.clips["mask_paths"][1][2])) > 0
    np.testing.assert_array_equal(m_test[2].numpy()[::2, ::2], raw)


def test_s4_missing_frame_names_it(tmp_path):
    make_fake_s4(tmp_path, counts={"train": 2, "val": 1, "test": 1}, size=16, media=False)
    t = read_s4(tmp_path)
    victim = t.clips.iloc[2]
    frame = f"{victim['frame_dir']}/{victim['name']}_3.png"
    import os

    os.remove(frame)
    with pytest.raises(ManifestError, match=f"{victim['name']}_3.png not found"):
        read_s4(tmp_path)
    assert read_s4(tmp_path, on_missing="skip").missing == [victim["name"]]


def test_s4_malformed_table_line(tmp_path):
    make_fake_s4(tmp_path, counts={"train": 2, "val": 1, "test": 1}, size=16, media=False)
    meta = tmp_path / "s4_meta_data.csv"
    n_lines = len(meta.read_text().splitlines())
    meta.write_text(meta.read_text() + "extra,dog,test,oops\n")
    with pytest.raises(ManifestError, match=rf"s4_meta_data\.csv: line {n_lines + 1}: 4 fields but the header has 3"):
        read_s4(tmp_path)
    meta.write_text("name,category,split\nclipA,dog,holdout\n")
    with pytest.raises(ManifestError, match=r"s4_meta_data\.csv: line 2: split 'holdout'"):
        read_s4_meta(meta)
    meta.write_text("name,split\nclipA,train\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['category'\]"):
        read_s4_meta(meta)


def test_s4_mask_of_wrong_size_names_it(tmp_path):
    make_fake_s4(tmp_path, counts={"train": 1, "val": 1, "test": 1}, size=16, media=False)
    t = read_s4(tmp_path)
    bad = t.clips.iloc[2]["mask_paths"][4]
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(bad)
    with pytest.raises(ManifestError, match=f"{bad}: mask is 20x16"):
        read_s4(tmp_path)


# --------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_counts(tmp_path):
    ids = make_fake_msrvtt(tmp_path, n_train=9, n_test=5)
    t = read_msrvtt(tmp_path)
    assert t.clips["split"].value_counts().to_dict() == {"train": 9, "test": 5}
    assert t.clips["video_id"].tolist() == ids["train"] + ids["test"]
    assert all(p.endswith(".mp4") for p in t.clips["video_path"])


def test_msrvtt_duplicates_are_counted_once(tmp_path):
    f = tmp_path / "caps.csv"
    f.write_text("video_id,caption\nvideo1,a\nvideo2,b\nvideo1,c\n")
    df = read_msrvtt_split(f)
    assert df["video_id"].tolist() == ["video1", "video2"] and df.attrs["duplicates"] == 1


def test_msrvtt_errors_name_the_file(tmp_path):
    make_fake_msrvtt(tmp_path, n_train=3, n_test=2)
    (tmp_path / "videos" / "all" / "video4.mp4").unlink()
    with pytest.raises(ManifestError, match=r"video4\.mp4 \(.*MSRVTT_JSFUSION_test\.csv line 3\)"):
        read_msrvtt(tmp_path)
    assert read_msrvtt(tmp_path, on_missing="skip").missing == ["video4"]
    train = tmp_path / "MSRVTT_train.9k.csv"
    train.write_text("video_id\nvideo0\nclip_7\n")
    with pytest.raises(ManifestError, match=r"MSRVTT_train\.9k\.csv: line 3: video_id 'clip_7'"):
        read_msrvtt(tmp_path)
    train.write_text("video_id\nvideo0,extra,field\n")
    with pytest.raises(ManifestError, match=r"MSRVTT_train\.9k\.csv: line 2: 3 fields but the header has 1"):
        read_msrvtt(tmp_path)
    train.unlink()
    with pytest.raises(ManifestError, match=r"MSRVTT_train\.9k\.csv not found"):
        read_msrvtt(tmp_path)
