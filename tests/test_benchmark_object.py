"""The typed benchmark object (AVBenchmark) and its data report."""
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario

from avalanche_av.benchmarks import AVBenchmark, DataReport, RealAVBenchmark, SyntheticAVBenchmark, sounding_objects
from avalanche_av.benchmarks.real import continual_vs, format_stats, make_fake_vggsound, order_key


def test_synthetic_builder_returns_the_typed_object(tiny_stream):
    bm = tiny_stream
    assert isinstance(bm, SyntheticAVBenchmark) and isinstance(bm, AVBenchmark)
    assert isinstance(bm.scenario, CLScenario)
    # user code written for an Avalanche benchmark keeps working
    assert bm.train_stream is bm.scenario.train_stream and bm.test_stream is bm.scenario.test_stream
    assert bm.n_tasks == 2 and [e.current_experience for e in bm.train_stream] == [0, 1]
    # nothing is hung on the Avalanche scenario any more
    ours = {f.name for f in dataclasses.fields(bm)}
    assert not ours & set(vars(bm.scenario))
    assert bm.data_report == DataReport() and bm.decoders == [] and bm.root is None
    assert bm.sounding_masks.shape[0] == bm.active_frames.shape[0] == len(bm.clip_table)
    assert "2 tasks, 4 classes" in repr(bm)


def test_data_report_merges_and_serialises():
    a = DataReport(missing=2, bad={"unreadable": 1}, replaced=1, duplicated=3)
    b = DataReport(bad={"unreadable": 2, "no_audio": 1}, replaced=3, leaked_dropped=1, load_time_counted=False)
    m = a.merged(b)
    assert m.to_dict() == {"missing": 2, "bad": {"no_audio": 1, "unreadable": 3}, "bad_total": 4, "replaced": 4,
                           "duplicated": 3, "leaked_dropped": 1, "unknown_labels": 0, "load_time_counted": False}
    assert a.bad == {"unreadable": 1}  # the inputs are untouched
    assert DataReport.from_dict(m.to_dict()) == m
    assert "bad 4 (no_audio 1, unreadable 3)" in m.summary()


@pytest.fixture(scope="module")
def fake_vs(tmp_path_factory):
    # First class: 3 good + 3 bad (corrupt, silent, short) + 2 missing training candidates.
    return make_fake_vggsound(tmp_path_factory.mktemp("vs"), n_tasks=1, classes_per_task=2)


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*a, **kw)


DECODE = dict(n_frames=2, image_size=32, target_length=64, num_mel_bins=32)


def test_real_report_counts_missing_bad_and_replaced(fake_vs):
    cap = 3
    bm = _quiet(continual_vs, fake_vs.root, n_tasks=1, classes_per_task=2, max_train_clips_per_class=cap,
                retrieval_clips_per_class=1, scan=True, seed=4, **DECODE)
    assert isinstance(bm, RealAVBenchmark) and isinstance(bm.scenario, CLScenario)
    rep = bm.data_report
    assert rep.missing == len(fake_vs.missing) == 2
    assert rep.bad == {"unreadable": 1, "no_audio": 1, "too_short": 1}
    # Hand count: the first class's candidates ranked by the seeded key; each missing or bad
    # one among the first ``cap`` is replaced by a good one further down (3 good ones exist).
    first = [r for r in fake_vs.rows if r["label"] == bm.class_names[0] and r["split"] == "train"]
    stems = [f"{r['youtube_id']}_{int(r['start_seconds']):06d}" for r in first]
    keys = order_key(pd.Series(stems), 4)
    top = [stems[i] for i in np.argsort(keys, kind="stable")[:cap]]
    broken = set(fake_vs.missing) | set(fake_vs.bad)
    assert rep.replaced == sum(s in broken for s in top) == 2  # seed 4 puts two broken ones on top
    assert len(bm.decoders) == 2 + (bm.pretrain_pool is not None)
    assert "data: missing 2, bad 3" in format_stats(bm)


def test_load_time_failures_are_counted_by_category(fake_vs):
    bm = _quiet(continual_vs, fake_vs.root, n_tasks=1, classes_per_task=2, retrieval_clips_per_class=1, **DECODE)
    assert bm.data_report.bad == {}  # nothing known before decoding
    ds = bm.train_stream[0].dataset
    _quiet(lambda: [ds[i] for i in range(len(ds))])
    rep = bm.load_time_report()
    assert rep.bad == {"unreadable": 1, "no_audio": 1, "too_short": 1} and rep.replaced == 3


def test_validation_split_is_carved_from_training_clips_and_never_touches_retrieval():
    from avalanche_av.benchmarks import sounding_objects

    kw = dict(seed=0, n_tasks=2, classes_per_task=2, train_clips_per_class=8, eval_clips_per_class=4)
    plain = sounding_objects(**kw)
    bench = sounding_objects(validation_clips_per_class=3, **kw)

    def ids(ds):
        return {int(ds[i][3]) for i in range(len(ds))}

    for t in range(2):
        train, val = ids(bench.train_stream[t].dataset), ids(bench.validation_stream[t].dataset)
        retrieval = ids(bench.test_stream[t].dataset)
        assert len(val) == 3 * 2 and len(train) == 5 * 2
        assert not (val & retrieval) and not (val & train) and not (train & retrieval)
        assert val | train == ids(plain.train_stream[t].dataset)  # carved out of the training clips
        assert retrieval == ids(plain.test_stream[t].dataset)  # retrieval set unchanged
        # 3 validation clips of each class
        targets = [int(bench.validation_stream[t].dataset[i][2]) for i in range(6)]
        assert sorted(targets.count(c) for c in set(targets)) == [3, 3]
    import pytest

    with pytest.raises(ValueError, match="validation_clips_per_class"):
        sounding_objects(validation_clips_per_class=8, **kw)
    with pytest.raises(ValueError, match="no validation split"):
        plain.validation_stream


def test_synthetic_options_reach_the_stream_and_the_model():
    """``RunConfig.synthetic_options`` (``--synthetic``) reshapes the stream, the model preset
    follows, and a run stored before the setting existed still counts as the plain stream."""
    from avalanche_av.experiment import RunConfig, _model_for, build_benchmark, settings_diff

    cfg = RunConfig(n_tasks=1, classes_per_task=2, train_clips_per_class=4, eval_clips_per_class=2,
                    synthetic_options={"image_size": 128, "object_cells": 2, "size_range": [0.6, 1.0]})
    cfg.validate()
    bench = build_benchmark(cfg)
    assert (bench.config.image_size, bench.config.object_cells, bench.config.size_range) == (128, 2, (0.6, 1.0))
    video = bench.train_stream[0].dataset[0][1]
    assert tuple(video.shape[-2:]) == (128, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "preset adapted to the benchmark's input shapes"
        model = _model_for(cfg, bench)
    assert model.config.image_size == 128
    # ground truth per frame on the (128 / 16)^2 patch grid
    assert tuple(bench.sounding_masks.shape[1:]) == (4, 8, 8)

    old = RunConfig().to_json()
    del old["synthetic_options"]  # a checkpoint written before the setting existed
    assert settings_diff(old, RunConfig()) == []
    assert ("synthetic_options: {} → {'image_size': 128, 'object_cells': 2, 'size_range': [0.6, 1.0]}"
            in settings_diff(old, cfg))
