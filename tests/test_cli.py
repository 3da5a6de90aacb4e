"""The main job through the command line, on a very small synthetic stream."""
import json

import pytest

from avalanche_av.cli import main

SMALL = ["--n-tasks", "2", "--classes-per-task", "2", "--train-clips-per-class", "8",
         "--eval-clips-per-class", "4", "--epochs", "1", "--batch-size", "8", "--mem-size", "8",
         "--no-progress", "--no-csv"]


def test_run_writes_results_table_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--strategy", "stella", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "== Results: stella" in printed and "R@5 a2v" in printed and "F_paper" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["strategy"] == "stella"
    stream = res["retrieval"]["streams"]["test"]
    # two experiences trained, two tasks evaluated after each
    assert len(stream["matrices"]["clip"]["a2v"]["5"]) == 2
    assert all(len(row) == 2 for row in stream["matrices"]["clip"]["a2v"]["5"])
    for name in ("results.csv", "accuracy_matrix_a2v.png", "accuracy_matrix_v2a.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("metric,task0,task1,A,F,F_paper") and len(csv) == 1 + 6


def test_resume_skips_finished_experiences(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--strategy", "er", "--out", str(out), *SMALL]) == 0
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["run", "--strategy", "er", "--out", str(out), "--resume", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "2 experience(s) already trained" in printed
    again = json.loads((out / "results.json").read_text())
    assert again["retrieval"]["streams"] == first["retrieval"]["streams"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--strategy", "gem"], "unknown strategy 'gem'; allowed"),
        (["run", "--model", "huge", *SMALL], "unknown model preset 'huge'; allowed"),
        (["run", "--epochs", "0"], "--epochs must be >= 1"),
        (["run", "--option", "novalue"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
