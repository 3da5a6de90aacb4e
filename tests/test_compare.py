"""``avalanche-av compare``: Table-1 aggregation, bold, resume, reports, per-method options, presets.

The aggregation and the table are checked on planted per-seed results (hand-computed means and
sample stds); one end-to-end compare (2 methods x 2 seeds, 1 epoch, tiny stream) checks the files,
the resume rules (counting the runs trained) and the multitask row.
"""
import json
import math

import numpy as np
import pytest

from avalanche_av.cli import main
from avalanche_av.compare import (PeakMemory, assemble, best_methods, render_csv, render_markdown, run_record,
                                  summarize, write_reports)
from avalanche_av.experiment import RunConfig

SMALL = ["--n-tasks", "2", "--classes-per-task", "2", "--train-clips-per-class", "8",
         "--eval-clips-per-class", "4", "--epochs", "1", "--batch-size", "8", "--mem-size", "8",
         "--no-csv", "--no-progress"]
KS = (1, 5, 10)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("avalanche-av: error: ")
    return lines[0]


def _planted_results(a: dict, f: dict, matrix_r5=None) -> dict:
    """A minimal results.json: A[d][k] and F[d][k] as fractions (F_paper = F + 0.01)."""
    mat = matrix_r5 if matrix_r5 is not None else [[0.5, 0.25], [0.25, 0.5]]
    block = {
        "A": {"clip": {d: {str(k): a[d][k] for k in KS} for d in ("a2v", "v2a")}},
        "F": {"clip": {d: {str(k): f[d][k] for k in KS} for d in ("a2v", "v2a")}},
        "F_paper": {"clip": {d: {str(k): f[d][k] + 0.01 for k in KS} for d in ("a2v", "v2a")}},
        "matrices": {"clip": {d: {str(k): mat for k in KS} for d in ("a2v", "v2a")}},
    }
    return {"retrieval": {"streams": {"test": block}}, "wall_seconds": 10.0,
            "train_seconds_per_experience": [3.0, 4.0], "data": {"skipped_steps": 0}}


def _both(values: dict) -> dict:
    return {"a2v": values, "v2a": {k: v / 2 for k, v in values.items()}}


@pytest.fixture()
def planted():
    # Method "er": seed 0 and seed 1 with known A/F; method "stella" better at A, worse at F on R@1.
    runs = {
        "er": {
            "0": run_record(_planted_results(_both({1: 0.10, 5: 0.30, 10: 0.50}), _both({1: 0.04, 5: 0.02, 10: 0.00})),
                            KS, {"wall_seconds": 5.0, "peak_rss_mb": 100.0, "start_rss_mb": 70.0, "rss_method": "vmhwm"}),
            "1": run_record(_planted_results(_both({1: 0.20, 5: 0.40, 10: 0.60}), _both({1: 0.02, 5: 0.00, 10: 0.04}),
                                             [[0.7, 0.05], [0.35, 0.3]]),
                            KS, {"wall_seconds": 7.0, "peak_rss_mb": 120.0, "start_rss_mb": 100.0, "rss_method": "vmhwm"}),
        },
        "stella": {
            "0": run_record(_planted_results(_both({1: 0.30, 5: 0.50, 10: 0.70}), _both({1: 0.06, 5: 0.01, 10: 0.00})),
                            KS, {"wall_seconds": 9.0, "peak_rss_mb": 150.0}),
            "1": run_record(_planted_results(_both({1: 0.30, 5: 0.50, 10: 0.70}), _both({1: 0.06, 5: 0.01, 10: 0.00})),
                            KS, {"wall_seconds": 11.0, "peak_rss_mb": 140.0}),
        },
        "multitask": {
            "0": run_record(_planted_results(_both({1: 0.90, 5: 0.90, 10: 0.90}), _both({1: 0.0, 5: 0.0, 10: 0.0})), KS),
        },
    }
    return runs


def test_aggregation_equals_hand_computation(planted):
    s = summarize(planted, ["er", "stella", "multitask"], KS)
    er = s["er"]["a2v"]
    # R@1 A over seeds: 10 % and 20 % -> mean 15, sample std |10 - 20| / sqrt(2).
    assert er["R@1"]["A"]["mean"] == pytest.approx(15.0)
    assert er["R@1"]["A"]["std"] == pytest.approx(10 / math.sqrt(2))
    assert er["R@1"]["A"]["n"] == 2
    # Avg per seed first: seed0 (10+30+50)/3 = 30, seed1 (20+40+60)/3 = 40 -> 35 ± 10/sqrt(2).
    assert er["Avg"]["A"]["mean"] == pytest.approx(35.0)
    assert er["Avg"]["A"]["std"] == pytest.approx(10 / math.sqrt(2))
    # F Avg: seed0 (4+2+0)/3 = 2, seed1 (2+0+4)/3 = 2 -> 2 ± 0; F_paper is F + 1 point.
    assert er["Avg"]["F"]["mean"] == pytest.approx(2.0)
    assert er["Avg"]["F"]["std"] == pytest.approx(0.0)
    assert er["R@5"]["F_paper"]["mean"] == pytest.approx(2.0)
    # The other direction is planted at half the values.
    assert s["er"]["v2a"]["R@10"]["A"]["mean"] == pytest.approx(27.5)
    # Heatmap matrix: mean over seeds, cell by cell, in %.
    assert np.allclose(s["er"]["matrix_mean"]["a2v"]["R@5"], [[60.0, 15.0], [30.0, 40.0]])
    # Cost: mean wall time, the largest peak RSS.
    assert s["er"]["cost"]["wall_seconds"]["mean"] == pytest.approx(6.0)
    assert s["er"]["cost"]["peak_rss_mb_max"] == pytest.approx(120.0)
    assert s["er"]["cost"]["rss_increase_mb_max"] == pytest.approx(30.0)  # max(100 - 70, 120 - 100)
    assert s["stella"]["cost"]["rss_increase_mb_max"] is None  # no start recorded: unknown, not 0
    # Multitask trains once: its F is not a measurement; a single seed has no std.
    mt = s["multitask"]
    assert mt["trains_once"] and mt["reference"] == "joint"
    assert mt["a2v"]["R@1"]["F"]["mean"] is None and mt["a2v"]["Avg"]["F_paper"]["mean"] is None
    assert mt["a2v"]["R@1"]["A"] == {"mean": pytest.approx(90.0), "std": None, "n": 1}


def test_markdown_bolds_the_best_and_dashes_multitask_f(planted):
    data = assemble(RunConfig(), ["er", "stella", "multitask"], [0, 1], planted)
    md = render_markdown(data)
    # Rows of the first (audio -> video) block.
    a2v_block = md.split("## Video → Audio")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in a2v_block.splitlines() if line.startswith("| ") and not line.startswith("| Method")}
    er, stella, mt = rows["er"], rows["stella"], rows["multitask ‡"]
    # Columns: R@1 A, R@1 F, R@5 A, R@5 F, R@10 A, R@10 F, Avg A, Avg F, time, peak RSS, +run.
    assert stella[0] == "**30.00 ± 0.00**" and not er[0].startswith("**")  # max A
    assert er[1].startswith("**3.00 ± 1.41") and not stella[1].startswith("**")  # min F (3 < 6)
    assert stella[6].startswith("**50.00") and er[7].startswith("**2.00")  # Avg A and Avg F
    # The reference row is shown, never bold (its A of 90 % would otherwise win), F not measured.
    assert mt[0] == "90.00" and mt[1] == "—" and mt[7] == "—"
    assert er[8:] == ["6.0", "120", "30"] and stella[10] == "—"
    assert best_methods(data, "a2v", "R@1", "A") == ["stella"]
    assert "## Video → Audio" in md
    # CSV: one row per method and direction, from the same numbers.
    csv = render_csv(data)
    assert len(csv) == 6
    row = csv[(csv.method == "er") & (csv.direction == "a2v")].iloc[0]
    assert row["Avg A mean"] == pytest.approx(35.0) and row["peak_rss_mb_max"] == pytest.approx(120.0)


def test_ties_are_all_bold(planted):
    planted["stella"]["0"]["metrics"]["a2v"]["R@1"]["A"] = 20.0  # stella R@1 A = (20 + 30) / 2 = 25
    planted["er"]["1"]["metrics"]["a2v"]["R@1"]["A"] = 40.0  # er R@1 A = (10 + 40) / 2 = 25
    data = assemble(RunConfig(), ["er", "stella"], [0, 1], planted)
    assert sorted(best_methods(data, "a2v", "R@1", "A")) == ["er", "stella"]


def test_peak_memory_is_per_block():
    import mmap

    # Fresh anonymous pages, written and still mapped when the block exits: a tensor could be
    # served from memory the allocator kept resident after earlier tests (CI saw exactly that,
    # peak == start), and a block's peak is read at its exit. 512 MiB keeps the figure far
    # above the kernel's lag in per-thread RSS counting (up to 64 faults, huge pages included).
    size = 512 * 2**20
    with PeakMemory("cpu") as big:
        buf = mmap.mmap(-1, size)
        chunk = b"\x01" * 2**20  # every byte written, so every page is touched
        for off in range(0, size, len(chunk)):
            buf[off:off + len(chunk)] = chunk
    buf.close()
    with PeakMemory("cpu") as small:
        pass
    assert big.peak_rss_mb is not None and big.peak_rss_mb >= big.start_rss_mb
    if big.method != "vmhwm":
        pytest.skip("no resettable high-water mark on this system")
    # The 512 MiB shows in its own block's peak, and not in the next block's.
    assert big.peak_rss_mb - big.start_rss_mb > 256
    assert small.peak_rss_mb < big.peak_rss_mb - 256


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One compare (er, multitask) x (0, 1) on the tiny stream, counting the runs it trains."""
    import avalanche_av.compare as compare

    out = tmp_path_factory.mktemp("compare") / "cmp"
    calls = []
    original = compare.run_experiment

    def counting(cfg, **kw):
        calls.append((cfg.strategy, cfg.seed))
        return original(cfg, **kw)

    compare.run_experiment = counting
    try:
        rc = main(["compare", "--strategies", "er,multitask", "--seeds", "0,1", "--out", str(out), *SMALL])
    finally:
        compare.run_experiment = original
    assert rc == 0
    return out, calls


def test_compare_writes_json_tables_and_plots(compared):
    out, calls = compared
    assert sorted(calls) == [("er", 0), ("er", 1), ("multitask", 0), ("multitask", 1)]
    data = json.loads((out / "compare.json").read_text())
    assert data["executed"] == 4 and data["unit"] == "%"
    assert set(data["runs"]["er"]) == {"0", "1"}
    rec = data["runs"]["er"]["0"]
    assert rec["status"] == "ran" and rec["wall_seconds"] > 0 and rec["peak_rss_mb"] > 0
    # The summary equals the mean of the per-run values stored next to it.
    a = [data["runs"]["er"][s]["metrics"]["v2a"]["R@5"]["A"] for s in ("0", "1")]
    assert data["summary"]["er"]["v2a"]["R@5"]["A"]["mean"] == pytest.approx(np.mean(a))
    md = (out / "compare.md").read_text()
    assert "| multitask ‡ |" in md and "—" in md
    for png in [out / "compare_bars.png", out / "heatmaps" / "er.png", out / "heatmaps" / "multitask.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # compare.json is the single source: the reports drawn again from it are identical.
    again = write_reports(json.loads((out / "compare.json").read_text()), out / "redrawn")
    assert again["markdown"].read_text() == md
    assert (out / "redrawn" / "compare.csv").read_text() == (out / "compare.csv").read_text()


def test_compare_resume_skips_finished_and_continues_checkpoints(compared, tmp_path, capsys):
    import shutil

    import avalanche_av.compare as compare

    out = tmp_path / "cmp"
    shutil.copytree(compared[0], out)
    # er seed 1 was "killed" after its last checkpoint, before writing its results.
    (out / "er" / "seed1" / "results.json").unlink()
    calls = []
    original = compare.run_experiment

    def counting(cfg, **kw):
        calls.append((cfg.strategy, cfg.seed, cfg.resume))
        return original(cfg, **kw)

    compare.run_experiment = counting
    # With the compact progress display this time (its plugin rides along the resumed run).
    with_bars = [a for a in SMALL if a != "--no-progress"]
    try:
        assert main(["compare", "--strategies", "er,multitask", "--seeds", "0,1", "--out", str(out), *with_bars]) == 0
    finally:
        compare.run_experiment = original
    assert calls == [("er", 1, True)]  # the three finished runs are read back, never retrained
    assert "already trained" in capsys.readouterr().out
    data = json.loads((out / "compare.json").read_text())
    assert data["executed"] == 1
    assert data["runs"]["er"]["1"]["status"] == "resumed" and data["runs"]["er"]["0"]["status"] == "reused"
    # Numbers read back are the ones computed the first time.
    first = json.loads((compared[0] / "compare.json").read_text())
    assert data["summary"]["multitask"]["a2v"]["Avg"]["A"] == first["summary"]["multitask"]["a2v"]["Avg"]["A"]
    # A folder that holds runs made with other settings is refused before anything runs.
    argv = ["compare", "--strategies", "er", "--seeds", "0", "--out", str(out), *SMALL, "--epochs", "2"]
    assert main(argv) == 2
    assert "made with other settings" in _one_line_error(capsys)


def test_progress_bars_count_runs_and_epochs(tmp_path, monkeypatch):
    """The compact display: an outer bar over (method, seed) runs and an inner bar over tasks x
    epochs, each ending full, labelled with the method, seed and task."""
    import avalanche_av.compare as compare

    bars = []

    class Bar:
        def __init__(self, total=None, desc="", **kw):
            self.total, self.n, self.descs, self.closed = total, 0, [desc], False
            self.disabled = kw.get("disable", False)
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def refresh(self):
            pass

        def set_description(self, d, refresh=True):
            self.descs.append(d)

        def set_postfix(self, **kw):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(compare, "_tqdm", Bar)
    argv = ["compare", "--strategies", "finetune,er", "--seeds", "0", "--out", str(tmp_path / "c"),
            *[a for a in SMALL if a != "--no-progress"], "--n-tasks", "2", "--epochs", "2"]
    assert main(argv) == 0
    outer, inner = bars[0], bars[1:]
    assert not outer.disabled and outer.total == outer.n == 2 and outer.closed
    assert outer.descs[-1] == "compare: er (2/2) seed 0 (1/1)"
    assert len(inner) == 2 and all(b.total == b.n == 2 * 2 and b.closed for b in inner)
    assert "er s0 task 2/2" in inner[1].descs


# --------------------------------------------------------------------------- options and presets
@pytest.fixture()
def captured(monkeypatch):
    """Replace the work by a recorder: what compare / run would have been called with."""
    import avalanche_av.compare as compare
    import avalanche_av.experiment as experiment

    seen = {}

    def fake_compare(cfg, strategies, seeds, **kw):
        seen.update(cfg=cfg, strategies=strategies, seeds=seeds, **kw)
        raise KeyboardInterrupt  # stop here; exit code 130

    def fake_run(cfg, **kw):
        seen.update(cfg=cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "compare_strategies", fake_compare)
    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    monkeypatch.setattr(experiment, "build_benchmark", lambda cfg: pytest.fail("data built"))
    return seen


def test_unknown_method_exits_2_listing_the_valid_ones(tmp_path, capsys, monkeypatch):
    import avalanche_av.experiment as experiment

    monkeypatch.setattr(experiment, "build_benchmark", lambda cfg: pytest.fail("data built before the check"))
    assert main(["compare", "--strategies", "er,gem", "--out", str(tmp_path / "x")]) == 2
    line = _one_line_error(capsys)
    assert "unknown strategy 'gem'" in line and "valid strategies:" in line and "stella-rca" in line
    assert not (tmp_path / "x").exists()


def test_per_method_options(captured, tmp_path):
    argv = ["compare", "--strategies", "er,stella,der++", "--out", str(tmp_path / "x"),
            "--option", "rho_v=0.3", "--option", "der++:alpha=0.2", "--option", "seed=3"]
    assert main(argv) == 130
    opts = captured["method_options"]
    # rho_v only goes where it exists; the prefixed option only to its method; seed to all three.
    assert opts == {"er": {"seed": 3}, "stella": {"rho_v": 0.3, "seed": 3}, "der++": {"alpha": 0.2, "seed": 3}}


@pytest.mark.parametrize("argv, message", [
    (["--strategies", "er,finetune", "--option", "rho_v=0.3"], "unknown option 'rho_v': none of the strategies"),
    (["--strategies", "er,stella", "--option", "lump:alpha=0.2"], "strategy 'lump' is not run here"),
    (["--strategies", "er,stella", "--option", "gem:alpha=0.2"], "unknown strategy 'gem'"),
    (["--strategies", "er,stella", "--option", "stella:rho=0.2"], "unknown option 'rho' for strategy 'stella'"),
    (["--strategies", "er,stella", "--option", "stella:rho_v='a'"], "option 'rho_v' of strategy 'stella' expects"),
    (["--strategies", "er,er"], "lists er more than once"),
    (["--strategies", "er", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
])
def test_bad_compare_options_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    import avalanche_av.compare as compare
    import avalanche_av.experiment as experiment

    monkeypatch.setattr(experiment, "build_benchmark", lambda cfg: pytest.fail("data built before the check"))
    monkeypatch.setattr(compare, "run_experiment", lambda cfg, **kw: pytest.fail("a run started before the check"))
    assert main(["compare", *argv, "--out", str(tmp_path / "x"), *SMALL]) == 2
    assert message in _one_line_error(capsys)


def test_run_accepts_a_prefixed_option_for_its_own_method_only(captured, tmp_path, capsys):
    assert main(["run", "--strategy", "stella", "--option", "stella:rho_v=0.6", "--out", str(tmp_path / "x")]) == 130
    assert captured["cfg"].strategy_options == {"rho_v": 0.6}
    capsys.readouterr()
    assert main(["run", "--strategy", "er", "--option", "stella:rho_v=0.6", "--out", str(tmp_path / "x")]) == 2
    assert "strategy 'stella' is not run here" in _one_line_error(capsys)


def test_benchmark_presets_fill_what_the_user_did_not_set(captured, tmp_path):
    root = str(tmp_path / "data")
    assert main(["run", "--strategy", "der++", "--benchmark", "continual-as", "--data-root", root,
                 "--out", str(tmp_path / "x")]) == 130
    cfg = captured["cfg"]
    assert (cfg.mem_size, cfg.epochs, cfg.batch_size, cfg.lr) == (5000, 15, 48, 1e-4)
    assert cfg.strategy_options == {"alpha": 1.0}  # Table 5, Continual-AS
    # What the user gives wins, flag by flag and option by option.
    assert main(["run", "--strategy", "der++", "--benchmark", "continual-as", "--data-root", root,
                 "--epochs", "2", "--option", "alpha=0.2", "--out", str(tmp_path / "x")]) == 130
    cfg = captured["cfg"]
    assert (cfg.mem_size, cfg.epochs, cfg.strategy_options) == (5000, 2, {"alpha": 0.2})
    # compare: each method gets its own Table 5 row; Continual-VS values.
    assert main(["compare", "--strategies", "stella,lump,ewc", "--benchmark", "continual-vs", "--data-root", root,
                 "--option", "stella:beta=0.1", "--out", str(tmp_path / "y")]) == 130
    opts = captured["method_options"]
    assert opts["stella"] == {"alpha": 0.5, "beta": 0.1, "rho_a": 0.5, "rho_v": 0.5}
    assert opts["lump"] == {"alpha": 0.1} and opts["ewc"] == {}
    assert captured["cfg"].mem_size == 2000 and captured["cfg"].epochs == 10
    # The synthetic stream keeps the small defaults.
    assert main(["run", "--strategy", "der++", "--out", str(tmp_path / "x")]) == 130
    d = RunConfig()
    cfg = captured["cfg"]
    assert (cfg.mem_size, cfg.epochs, cfg.batch_size, cfg.lr, cfg.strategy_options) == (
        d.mem_size, d.epochs, d.batch_size, d.lr, {})


def test_every_preset_row_is_valid_for_its_method():
    from avalanche_av.presets import PRESETS
    from avalanche_av.training import list_strategies, make_plugins, validate_strategy_options

    for preset in PRESETS.values():
        for method, options in preset.method_options.items():
            assert method in list_strategies()
            validate_strategy_options(method, dict(options))
            make_plugins(method, mem_size=8, batch_size=4, **options)  # values in range


def test_isolated_runs_measure_each_run_in_its_own_process(tmp_path):
    """--isolate: the run trains in a child process; its memory figures come from that process."""
    out = tmp_path / "iso"
    assert main(["compare", "--strategies", "er", "--seeds", "0", "--isolate", "--out", str(out), *SMALL]) == 0
    data = json.loads((out / "compare.json").read_text())
    rec = data["runs"]["er"]["0"]
    side = json.loads((out / "er" / "seed0" / "compare_run.json").read_text())["measured"]
    assert data["executed"] == 1 and rec["status"] == "ran" and side["isolated"] is True
    assert rec["peak_rss_mb"] == side["peak_rss_mb"] and rec["wall_seconds"] > 0
    # The child's whole-life peak (imports included) bounds the peak measured during its run.
    assert side["process_peak_rss_mb"] >= side["peak_rss_mb"] - 1
    if side["rss_method"] == "vmhwm":
        assert side["peak_rss_mb"] > side["start_rss_mb"]  # a fresh process grows while it trains
    assert not (out / "er" / "seed0" / "compare_worker.json").exists()
    assert "| er |" in (out / "compare.md").read_text()


def test_bar_plot_marks_missing_values_and_draws_error_bars_only_with_a_std():
    from avalanche_av.evaluation.plots import plot_method_bars

    fig = plot_method_bars(
        ["a", "b"],
        {"A": {"x": ([1.0, 2.0], [0.5, None])}, "F": {"x": ([0.1, None], [None, None])}},
        title="t", xlabel="score (%)",
    )
    from matplotlib.container import BarContainer

    ax_a, ax_f = fig.axes
    assert [t.get_text() for t in ax_a.get_yticklabels()] == ["a", "b"]
    bars_a = [c for c in ax_a.containers if isinstance(c, BarContainer)]
    bars_f = [c for c in ax_f.containers if isinstance(c, BarContainer)]
    assert len(bars_a[0].patches) == 2 and bars_a[0].errorbar is not None
    assert len(bars_f[0].patches) == 1 and bars_f[0].errorbar is None  # b's F missing, and no std at all
    assert any(t.get_text() == "x: n/a" for t in ax_f.texts)
    with pytest.raises(ValueError, match="3 values for 2 methods"):
        plot_method_bars(["a", "b"], {"A": {"x": ([1, 2, 3], [0, 0, 0])}})


def test_every_registered_method_runs_end_to_end_and_fills_the_table(tmp_path):
    """``compare`` over every method the package registers, on a minimal synthetic stream: each
    run finishes and gets a full row (A and F for R@1/5/10 and Avg, both directions), except
    the F of the methods that train once on all tasks, which is reported as not measured."""
    from avalanche_av.compare import trains_once
    from avalanche_av.training.strategies import list_strategies

    methods = list_strategies()
    assert len(methods) >= 27
    out = tmp_path / "all"
    tiny = ["--n-tasks", "2", "--classes-per-task", "2", "--train-clips-per-class", "4", "--eval-clips-per-class",
            "2", "--epochs", "1", "--batch-size", "4", "--mem-size", "4", "--no-csv", "--no-progress"]
    assert main(["compare", "--strategies", ",".join(methods), "--seeds", "0", "--out", str(out), *tiny]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["executed"] == len(methods) and set(data["summary"]) == set(methods)
    for m in methods:
        for d in ("a2v", "v2a"):
            for cut in ("R@1", "R@5", "R@10", "Avg"):
                cell = data["summary"][m][d][cut]
                assert np.isfinite(cell["A"]["mean"]) and 0.0 <= cell["A"]["mean"] <= 100.0, (m, d, cut)
                if trains_once(m):
                    assert cell["F"]["mean"] is None
                else:
                    assert np.isfinite(cell["F"]["mean"]), (m, d, cut)
    md = (out / "compare.md").read_text()
    assert all(f"| {m}" in md for m in methods)
