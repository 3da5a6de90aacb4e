"""``benchmarks_av/reproduce.py``'s own logic on planted compare reports (its runs are the
package's CLI, tested elsewhere): the sweep figure, the A-F figure and the report that keeps
earlier invocations."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "benchmarks_av" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compare_json(path: Path, per_seed: dict) -> Path:
    """``per_seed``: method -> list of (A, F), one per seed; every R@K cell gets that value."""
    runs = {m: {str(i): {"metrics": {d: {c: {"A": a, "F": f} for c in ("R@1", "R@5", "R@10")}
                                     for d in ("a2v", "v2a")}}
                    for i, (a, f) in enumerate(vals)} for m, vals in per_seed.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"strategies": list(per_seed), "runs": runs}))
    return path


def test_with_replaces_or_appends_a_flag(reproduce):
    assert reproduce._with(["--epochs", "10"], "--epochs", 3) == ["--epochs", "3"]
    assert reproduce._with(["--epochs", "10"], "--mem-size", 8) == ["--epochs", "10", "--mem-size", "8"]


def test_sweep_and_tradeoff_figures_from_planted_reports(reproduce, tmp_path):
    points = {c: _compare_json(tmp_path / f"c{c}.json", {"stella": [(c, 1.0), (c + 2, 3.0)]}) for c in (1, 2, 4)}
    png = reproduce.sweep_figure(points, ["stella"], tmp_path / "sweep.png", xlabel="L_c", what="chunk size",
                                 suptitle="planted")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The A-F figure draws one point per distinct set of runs: a step that repeats another's runs is
    # drawn once, and fewer than two points draw nothing.
    a = _compare_json(tmp_path / "a.json", {"x": [(1.0, 1.0), (3.0, 3.0)], "y": [(5.0, 4.0), (7.0, 6.0)]})
    same = _compare_json(tmp_path / "same.json", {"x": [(1.0, 1.0), (3.0, 3.0)]})
    assert reproduce.tradeoff_figure({"table1": a, "again": same}, tmp_path / "t.png") is not None
    assert reproduce.tradeoff_figure({"table1": same}, tmp_path / "none.png") is None


def test_report_keeps_the_commands_of_earlier_invocations(reproduce, tmp_path):
    first = {"started": "t1", "seconds": 60.0, "steps": ["table1"], "seeds": "0",
             "machine": "m", "commands": [{"command": "compare --strategies er", "seconds": 30.0, "rc": 0}]}
    second = {**first, "started": "t2", "steps": ["chunks"], "earlier": [first],
              "commands": [{"command": "compare --strategies stella --option chunk_size=2", "seconds": 40.0, "rc": 0}]}
    reproduce._write_report(tmp_path, second)
    text = (tmp_path / "REPORT.md").read_text()
    assert "compare --strategies er" in text and "chunk_size=2" in text
    assert text.index("started t1") < text.index("started t2")


def test_verdict_stats_on_planted_reports(tmp_path, capsys):
    """Means, sds, Welch p (by hand: two 3-value samples with equal sds) and the seed count."""
    spec = importlib.util.spec_from_file_location("verdict_stats", ROOT / "benchmarks_av" / "verdict_stats.py")
    vs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs)
    old = _compare_json(tmp_path / "old.json", {"a": [(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)],
                                                "b": [(4.0, 1.0), (5.0, 1.0), (6.0, 1.0)]})
    new = _compare_json(tmp_path / "new.json", {"a": [(7.0, 0.0), (8.0, 0.0), (9.0, 0.0)],
                                                "b": [(4.0, 1.0), (5.0, 1.0), (6.0, 1.0)]})
    report = json.loads(old.read_text())
    assert vs.per_seed(report, "a", "a2v", "A") == {0: 1.0, 1: 2.0, 2: 3.0}
    # means 2 and 5, sd 1 each: t = 3 / sqrt(2/3) = 3.674 on 4 df, two-sided p = 0.02131
    assert vs.welch([1, 2, 3], [4, 5, 6]) == pytest.approx(0.02131, abs=1e-4)
    out = tmp_path / "stats.md"
    vs.main([str(old), str(new), "--label", "old,new", "--pair", "a,b", "--out", str(out)])
    text = out.read_text()
    assert "| a | 2.00 ± 1.00 (1.00, 2.00, 3.00) | 8.00 ± 1.00 (7.00, 8.00, 9.00) |" in text
    assert "- old: a − b = -3.00, Welch p = 0.021, a above in 0/3 seeds" in text
    assert "- new: a − b = +3.00, Welch p = 0.021, a above in 3/3 seeds" in text
    assert "- a: new − old = +6.00" in text and text.startswith("Command: `python benchmarks_av/verdict_stats.py")
    with pytest.raises(SystemExit):
        vs.main([str(old), "--label", "x,y"])
    for bad in (tmp_path / "missing.json", out):  # no file; a file that is not a compare.json
        with pytest.raises(SystemExit) as exc:
            vs.main([str(bad)])
        assert exc.value.code == 2 and str(bad) in capsys.readouterr().err
