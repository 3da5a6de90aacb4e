"""What the main job records beside retrieval, and what ``compare`` makes of it.

The results table's chance column, the localization matrices, the training diagnostics, the
tracked clips' attention maps, the modality gap, the ``--lr-schedule`` option, and the
aggregation of all of it over methods and seeds.
"""
import json

import numpy as np
import pandas as pd
import pytest

from avalanche_av.cli import main
from avalanche_av.compare import evidence_record
from avalanche_av.experiment import RunConfig, build_benchmark, tracked_clip_ids
from avalanche_av.presets import resolve_settings
from avalanche_av.training.checkpoint import read_checkpoint

SIZES = dict(n_tasks=2, classes_per_task=2, train_clips_per_class=8, eval_clips_per_class=4)
SMALL = ["--n-tasks", "2", "--classes-per-task", "2", "--train-clips-per-class", "8",
         "--eval-clips-per-class", "4", "--epochs", "1", "--batch-size", "8", "--mem-size", "8",
         "--no-progress", "--no-csv"]


@pytest.fixture(scope="module")
def stella_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evidence") / "run"
    assert main(["run", "--strategy", "stella", "--lr-schedule", "warmup-cosine", "--out", str(out), *SMALL]) == 0
    return out


def test_results_table_prints_the_chance_level_of_every_k(stella_run):
    res = json.loads((stella_run / "results.json").read_text())
    gallery = 2 * 2 * 4  # tasks x classes x retrieval clips: one gallery over every task
    assert res["gallery_size"] == gallery
    table = pd.read_csv(stella_run / "results.csv")
    for _, row in table.iterrows():
        k = int(row["metric"].split()[0][2:])
        assert row["chance"] == pytest.approx(min(1.0, k / gallery))
        assert row["A/chance"] == pytest.approx(row["A"] / row["chance"])


def test_run_records_localization_diagnostics_and_attention_maps(stella_run):
    res = json.loads((stella_run / "results.json").read_text())
    loc = res["localization"]["streams"]["test"]
    for kind in ("cosine", "avm", "intensity"):
        share = np.array(loc[kind]["matrices"]["share"], dtype=float)
        assert share.shape == (2, 2)  # after each of 2 tasks, on each of 2 tasks
        assert np.all((share >= 0) & (share <= 1))
    chance = np.array(loc["chance"], dtype=float)
    assert np.all((chance > 0) & (chance < 1))
    # The pixel-intensity reference uses no model: it is the same after every task.
    inten = np.array(loc["intensity"]["matrices"]["share"], dtype=float)
    np.testing.assert_allclose(inten[0], inten[1])
    accs = [rec["values"]["AVM_Acc"] for rec in res["diagnostics"]["AVMMatchMetric"]["history"]]
    assert accs and all(0.0 <= a <= 1.0 for a in accs)
    fills = [rec["values"]["MemoryFill"] for rec in res["diagnostics"]["MemoryFillMetric"]["history"]]
    assert fills[-1] == pytest.approx(1.0)  # 32 training clips seen, memory of 8
    ids = tracked_clip_ids(build_benchmark(RunConfig(**SIZES)), 2)
    for cid in ids:
        png = stella_run / "attention" / f"tracked_clip{cid}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (stella_run / "training_diagnostics.png").stat().st_size > 5000


def test_the_schedule_option_adds_its_plugin_and_presets_keep_the_paper_constant(stella_run):
    res = json.loads((stella_run / "results.json").read_text())
    assert res["config"]["lr_schedule"] == "warmup-cosine"
    plugins = read_checkpoint(stella_run / "checkpoint.pt")["plugins"]
    assert any(k.endswith("WarmupCosinePlugin") for k in plugins)
    with pytest.raises(ValueError, match="--lr-schedule"):
        RunConfig(lr_schedule="step").validate()
    defaults = {"mem_size": 64, "epochs": 10, "batch_size": 16, "lr": 1e-3, "lr_schedule": "warmup-cosine"}
    unset = dict.fromkeys(defaults)
    settings, _ = resolve_settings("continual-vs", unset, defaults)
    assert settings["lr_schedule"] == "constant"  # the paper's constant rate on the real streams
    settings, _ = resolve_settings("synthetic", unset, defaults)
    assert settings["lr_schedule"] == "warmup-cosine"


def test_tracked_clips_are_the_first_retrieval_clip_of_each_task():
    bench = build_benchmark(RunConfig(**SIZES))
    ids = tracked_clip_ids(bench, 5)
    assert len(ids) == 2  # only 2 tasks
    table = bench.clip_table
    for t, cid in enumerate(ids):
        held = table[(table["task"] == t) & (table["split"] == "eval")]
        assert cid == int(held["clip_id"].min())
        assert cid not in set(table[table["split"] == "train"]["clip_id"])


def test_no_diagnostics_records_retrieval_only(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--strategy", "finetune", "--no-diagnostics", "--out", str(out), *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    assert "localization" not in res and "diagnostics" not in res
    assert not (out / "attention").exists() and not (out / "training_diagnostics.png").exists()


def _planted_results() -> dict:
    share = [[0.2, None], [0.1, 0.5]]
    return {
        "retrieval": {"streams": {"test": {"matrices": {"modality_gap": [[1.0, None], [2.0, 4.0]]}}}},
        "localization": {"streams": {"test": {
            "chance": [[0.05, None], [0.05, 0.07]],
            "cosine": {"matrices": {"share": share}, "A_share": 0.3, "F_share": 0.1, "A_share_swap": 0.25,
                       "A_auc": 0.7},
        }}},
        "diagnostics": {"AVMMatchMetric": {"every": 10, "history": [
            {"iteration": 10, "experience": 0, "values": {"AVM_Acc": 0.5}},
            {"iteration": 20, "experience": 0, "values": {"AVM_Acc": 0.7}},
            {"iteration": 30, "experience": 1, "values": {"AVM_Acc": 0.9}},
        ]}},
    }


def test_evidence_record_equals_a_hand_computation():
    ev = evidence_record(_planted_results())
    assert ev["modality_gap_final"] == pytest.approx(3.0)  # mean of the last row (2 + 4) / 2
    cos = ev["localization"]["maps"]["cosine"]
    assert cos["seen_share"] == pytest.approx([0.2, 0.3])  # row t: mean over tasks 0..t
    assert cos["first_share"] == pytest.approx(0.2) and cos["A_share"] == 0.3
    assert ev["localization"]["seen_chance"] == pytest.approx([0.05, 0.06])
    assert ev["diagnostics"]["per_experience"]["AVM_Acc"] == pytest.approx([0.6, 0.9])


def test_compare_tabulates_and_plots_the_evidence(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--strategies", "finetune,stella", "--seeds", "0", "--out", str(out), *SMALL]) == 0
    data = json.loads((out / "compare.json").read_text())
    st = data["summary"]["stella"]["evidence"]
    run = data["runs"]["stella"]["0"]["evidence"]
    assert st["localization"]["avm"]["A_share"]["mean"] == pytest.approx(run["localization"]["maps"]["avm"]["A_share"])
    assert "avm" not in data["summary"]["finetune"]["evidence"]["localization"]
    assert st["diagnostics"]["AVM_Acc"]["last_task"]["n"] == 1
    md = (out / "compare.md").read_text()
    assert "## Localization, modality gap and training diagnostics" in md
    for name in ("modality_gap.png", "localization_over_tasks.png", "training_diagnostics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
