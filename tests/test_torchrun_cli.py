"""The command line under ``torchrun --nproc_per_node=2`` on CPU (gloo), as a user starts it.

torchrun writes each rank's stdout and stderr to its own file (``--log-dir --redirects 3``),
so the tests can tell what each rank printed:

* ``run``: rank 0 draws the progress bars and prints the results table; rank 1 prints neither.
  The run folder holds one writer's files (the CSV logs have each row once), and
  ``results.json`` says 2 ranks trained;
* ``compare`` (``er_exp`` and ``agem``, whose memories are global): the same for the comparison
  (one table, one ``compare.json``), with every run trained on 2 ranks.
"""
from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = ["--model", "tiny", "--benchmark", "synthetic", "--n-tasks", "2", "--classes-per-task", "2",
        "--train-clips-per-class", "4", "--eval-clips-per-class", "2", "--epochs", "1", "--batch-size", "2",
        "--mem-size", "4", "--device", "cpu", "--seed", "0", "--no-diagnostics"]
TABLE_MARK = "R@5 a2v"  # a row of the results tables
BAR = re.compile(r"\| *\d+/\d+ \[")  # tqdm's "| 3/8 [" (the bar's count, then its times)


def _torchrun(tmp_path: Path, args: list[str]) -> dict[int, str]:
    """Run ``avalanche-av ARGS`` on 2 CPU ranks; each rank's stdout + stderr, by rank."""
    logs = tmp_path / "logs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with socket.socket() as sock:  # a free port, not torchrun's fixed default (29500)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(TORCHRUN), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           "--log-dir", str(logs), "--redirects", "3",
           "-m", "avalanche_av.cli", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    by_rank: dict[int, str] = {}
    for f in sorted(logs.rglob("*.log")):
        if f.parent.name.isdigit():
            by_rank[int(f.parent.name)] = by_rank.get(int(f.parent.name), "") + f.read_text(errors="replace")
    assert res.returncode == 0, f"torchrun failed:\n{res.stderr[-3000:]}\n{by_rank.get(0, '')[-3000:]}"
    assert sorted(by_rank) == [0, 1], f"per-rank logs not found under {logs}: {list(logs.rglob('*'))}"
    return by_rank


def _bars(text: str) -> int:
    return len(BAR.findall(text))


@pytest.mark.slow
def test_run_under_torchrun_logs_and_writes_on_rank_zero_only(tmp_path):
    out = tmp_path / "run"
    logs = _torchrun(tmp_path, ["run", "--strategy", "er", *TINY, "--out", str(out)])
    assert _bars(logs[0]) > 0 and TABLE_MARK in logs[0]  # rank 0: bars and the table
    assert _bars(logs[1]) == 0 and TABLE_MARK not in logs[1]  # rank 1: neither
    summary = json.loads((out / "results.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo"}
    # one writer: the training log has one row per (experience, epoch) and each once
    for name in ("training_results.csv", "eval_results.csv"):
        rows = list(csv.reader((out / "csv_logs" / name).open()))
        assert len(rows) == len({tuple(r) for r in rows}) > 1, name
    train_rows = list(csv.DictReader((out / "csv_logs" / "training_results.csv").open()))
    assert len(train_rows) == 2  # 2 experiences x 1 epoch


@pytest.mark.slow
def test_compare_under_torchrun_trains_every_run_on_both_ranks_and_writes_once(tmp_path):
    out = tmp_path / "cmp"
    logs = _torchrun(tmp_path, ["compare", "--strategies", "er_exp,agem", "--seeds", "0", *TINY, "--out", str(out)])
    table = "## Audio → Video"  # the comparison table's first section
    assert _bars(logs[0]) > 0 and table in logs[0]
    assert _bars(logs[1]) == 0 and table not in logs[1] and "compare.json" not in logs[1]
    data = json.loads((out / "compare.json").read_text())
    assert set(data["runs"]) == {"er_exp", "agem"} and data["executed"] == 2
    assert sorted(p.name for p in out.glob("compare.*")) == ["compare.csv", "compare.json", "compare.md"]
    for method in ("er_exp", "agem"):  # Avalanche's memories, global under torchrun
        summary = json.loads((out / method / "seed0" / "results.json").read_text())
        assert summary["distributed"]["world_size"] == 2, method
