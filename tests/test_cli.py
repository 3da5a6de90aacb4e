"""The main job through the command line, on a very small synthetic stream.

Covers the results files, ``--resume`` (what it refuses, what it keeps: CSV rows and timings),
and the user errors that must exit 2 with one line and no traceback.
"""
import json
import shutil

import pytest
import torch

from avalanche_av.cli import main

SMALL = ["--n-tasks", "2", "--classes-per-task", "2", "--train-clips-per-class", "8",
         "--eval-clips-per-class", "4", "--epochs", "1", "--batch-size", "8", "--mem-size", "8",
         "--no-progress", "--no-csv"]


def _run(tmp_path_factory, name, strategy):
    out = tmp_path_factory.mktemp(name) / "run"
    assert main(["run", "--strategy", strategy, "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def stella_run(tmp_path_factory):
    return _run(tmp_path_factory, "stella", "stella")


@pytest.fixture(scope="module")
def er_run(tmp_path_factory):
    return _run(tmp_path_factory, "er", "er")


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("avalanche-av: error: ")
    return lines[0]


def test_run_writes_results_table_and_plots(stella_run, capsys):
    out = stella_run
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
    # Rendered clips: nothing missing, bad or dropped, and every count is present.
    assert res["data"] == {"missing": 0, "bad": {}, "bad_total": 0, "replaced": 0, "duplicated": 0,
                           "leaked_dropped": 0, "unknown_labels": 0, "load_time_counted": True,
                           "skipped_steps": 0}
    assert len(res["train_seconds_per_experience"]) == 2 and len(res["task_names"]) == 2


def test_resume_skips_finished_experiences(er_run, tmp_path, capsys):
    out = _copy(er_run, tmp_path)
    first = json.loads((out / "results.json").read_text())
    # Safe settings may change on resume.
    assert main(["run", "--strategy", "er", "--out", str(out), "--resume", "--eval-batch-size", "16",
                 "--device", "cpu", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "2 experience(s) already trained" in printed
    again = json.loads((out / "results.json").read_text())
    assert again["retrieval"]["streams"] == first["retrieval"]["streams"]
    # Timings of the experiences trained before the resume are kept.
    assert again["train_seconds_per_experience"] == first["train_seconds_per_experience"]
    assert again["resumed_after_experiences"] == 2


def test_results_count_missing_bad_and_replaced_clips(tmp_path, capsys):
    """A real-layout dataset with 2 missing files, 3 broken clips (corrupt, silent, too short)
    and one good clip whose audio is 8-channel 48 kHz AAC (which used to kill the run with
    SIGSEGV): the run finishes, results.json counts each broken clip by category, and the
    8-channel clip is not among them (it decodes)."""
    import warnings

    import numpy as np

    from avalanche_av.benchmarks.io import write_av_clip
    from avalanche_av.benchmarks.real import fake_clip_content, make_fake_vggsound, vggsound_clip_name

    info = make_fake_vggsound(tmp_path / "vs", n_tasks=1, classes_per_task=2)
    stems = [vggsound_clip_name(r["youtube_id"], r["start_seconds"]) for r in info.rows if r["split"] == "train"]
    stem = next(x for x in stems if x in info.clips and x not in info.bad)
    frames, _ = fake_clip_content(1, 2.0, 4.0, 32)
    t = np.arange(2 * 48000) / 48000
    audio = np.stack([0.03 * (k + 1) * np.sin(2 * np.pi * (150 + 40 * k) * t) for k in range(8)]).astype(np.float32)
    write_av_clip(info.clips[stem], frames, 4.0, audio, 48000)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the skipped clips are announced
        assert main(["run", "--strategy", "er", "--benchmark", "continual-vs", "--data-root", str(info.root),
                     "--n-tasks", "1", "--classes-per-task", "2", "--epochs", "1", "--batch-size", "4",
                     "--mem-size", "4", "--no-progress", "--no-csv", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["missing"] == len(info.missing) == 2
    assert data["bad"] == {"unreadable": 1, "no_audio": 1, "too_short": 1} and data["bad_total"] == 3
    # Found while decoding (no scan, no cache): each replaced by the next readable clip.
    assert data["replaced"] == 3 and data["load_time_counted"] is True
    assert "Data: missing 2, bad 3" in capsys.readouterr().out


# --------------------------------------------------------------------------- refused resumes
@pytest.mark.parametrize(
    "fixture, argv, named",
    [
        ("er_run", ["--strategy", "finetune"], "strategy: 'er' → 'finetune'"),
        ("er_run", ["--strategy", "er", "--seed", "5"], "seed: 0 → 5"),
        ("er_run", ["--strategy", "er", "--lr", "0.1"], "lr: 0.001 → 0.1"),
        ("er_run", ["--strategy", "er", "--mem-size", "4"], "mem_size: 8 → 4"),
        ("stella_run", ["--strategy", "stella+"], "strategy: 'stella' → 'stella+'"),
        ("er_run", ["--strategy", "er", "--model", "base"], "model: 'tiny' → 'base'"),
        ("er_run", ["--strategy", "er", "--n-tasks", "3"], "n_tasks: 2 → 3"),
        ("er_run", ["--strategy", "er", "--epochs", "2"], "epochs: 1 → 2"),
        ("stella_run", ["--strategy", "stella", "--option", "rho_v=0.75"], "strategy_options: {} → {'rho_v': 0.75}"),
        ("er_run", ["--strategy", "er", "--synthetic", "image_size=128"], "synthetic_options: {} → {'image_size': 128}"),
    ],
)
def test_resume_refuses_a_changed_experiment(fixture, argv, named, request, tmp_path, capsys, monkeypatch):
    import avalanche_av.experiment as experiment

    out = _copy(request.getfixturevalue(fixture), tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    # Refused before any data is built.
    monkeypatch.setattr(experiment, "build_benchmark", lambda cfg: pytest.fail("data built before the check"))
    # argparse keeps the last value of a repeated flag, so ``argv`` overrides SMALL.
    assert main(["run", "--out", str(out), "--resume", *SMALL, *argv]) == 2
    line = _one_line_error(capsys)
    assert named in line and "checkpoint.pt" in line
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_lists_every_difference_on_one_line(er_run, tmp_path, capsys):
    out = _copy(er_run, tmp_path)
    assert main(["run", "--out", str(out), "--resume", *SMALL, "--strategy", "finetune", "--seed", "5",
                 "--mem-size", "16"]) == 2
    line = _one_line_error(capsys)
    assert "mem_size: 8 → 16" in line and "seed: 0 → 5" in line and "strategy: 'er' → 'finetune'" in line
    assert "device" in line  # the settings that may change are named


def test_resume_refuses_a_checkpoint_without_config(er_run, tmp_path, capsys):
    out = _copy(er_run, tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    del state["extra"]["run_config"]
    torch.save(state, out / "checkpoint.pt")
    assert main(["run", "--strategy", "er", "--out", str(out), "--resume", *SMALL]) == 2
    assert "does not record the settings" in _one_line_error(capsys)


# --------------------------------------------------------------------------- CSV logs on resume
def _csv_rows(out):
    return {f: (out / "csv_logs" / f).read_text().splitlines()
            for f in ("training_results.csv", "eval_results.csv")}


def test_interrupted_and_resumed_run_keeps_every_csv_row(tmp_path, monkeypatch, capsys):
    import avalanche_av.experiment as experiment

    small = [a for a in SMALL if a != "--no-csv"]
    small[small.index("--epochs") + 1] = "2"
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["run", "--strategy", "er", "--out", str(full), *small]) == 0
    reference = _csv_rows(full)
    assert len(reference["training_results.csv"]) == 1 + 2 * 2  # header + 2 tasks x 2 epochs

    # Kill the run after the first epoch of the second experience: its row is written, but the
    # last checkpoint is the one after experience 0.
    original = experiment.ResumableCSVLogger.print_train_metrics

    def interrupt(self, training_exp, epoch, *a):
        original(self, training_exp, epoch, *a)
        if training_exp == 1 and epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment.ResumableCSVLogger, "print_train_metrics", interrupt)
    assert main(["run", "--strategy", "er", "--out", str(cut), *small]) == 130
    assert "--resume" in capsys.readouterr().err
    assert len(_csv_rows(cut)["training_results.csv"]) == 1 + 2 + 1
    monkeypatch.setattr(experiment.ResumableCSVLogger, "print_train_metrics", original)

    assert main(["run", "--strategy", "er", "--out", str(cut), "--resume", *small]) == 0
    assert "1 experience(s) already trained" in capsys.readouterr().out
    # Every row of the uninterrupted run, once, in order (the resume is exact, so the values match too).
    assert _csv_rows(cut) == reference
    res = json.loads((cut / "results.json").read_text())
    assert len(res["train_seconds_per_experience"]) == 2 and res["resumed_after_experiences"] == 1
    # The evidence recorded beside retrieval survives the interruption too: the localization
    # matrices and the diagnostics history equal the uninterrupted run's.
    ref = json.loads((full / "results.json").read_text())
    assert res["localization"] == ref["localization"]
    assert res["diagnostics"] == ref["diagnostics"]
    assert len(res["localization"]["streams"]["test"]["cosine"]["matrices"]["share"]) == 2


# --------------------------------------------------------------------------- user errors
@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--strategy", "gem"], "unknown strategy 'gem'"),
        (["run", "--model", "huge", *SMALL], "unknown model preset 'huge'"),
        (["run", "--epochs", "0"], "--epochs must be >= 1"),
        (["run", "--lr", "-1"], "--lr must be a positive number"),
        (["run", "--option", "novalue"], "KEY=VALUE"),
        (["run", "--strategy", "stella", "--option", "rho=0.3"], "unknown option 'rho' for strategy 'stella'; valid"),
        (["run", "--strategy", "er", "--option", "kappa=3"], "unknown option 'kappa' for strategy 'er'"),
        (["run", "--strategy", "finetune", "--option", "alpha=0.5"], "unknown option 'alpha' for strategy 'finetune'"),
        # Without a METHOD: prefix an option goes to the listed methods that take it; none taking it is a typo.
        (["compare", "--strategies", "er,finetune", "--option", "rho_v=0.3"], "unknown option 'rho_v': none of"),
        (["run", "--device", "tpu"], "--device 'tpu'"),
        (["run", "--benchmark", "continual-vs"], "needs --data-root"),
        (["run", "--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["run", "--synthetic", "image_sise=128"], "--synthetic: unknown setting 'image_sise'; valid: "),
        (["run", "--synthetic", "n_tasks=3"], "--synthetic n_tasks=...: use --n-tasks instead"),
        (["run", "--synthetic", "image_size=100"], "--synthetic: "),  # not a multiple of the patch size
        (["run", "--synthetic", "noequals"], "--synthetic expects KEY=VALUE"),
        (["run", "--benchmark", "continual-vs", "--data-root", "/nonexistent", "--synthetic", "image_size=128"],
         "--synthetic applies to --benchmark synthetic only"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    import avalanche_av.experiment as experiment

    # Every one of these is caught before any data is built.
    monkeypatch.setattr(experiment, "build_benchmark", lambda cfg: pytest.fail("data built before the check"))
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_gpu_is_a_one_line_error(device, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["run", "--device", device, "--out", str(tmp_path / "x")]) == 2
    assert f"--device {device}: no CUDA GPU is available" in _one_line_error(capsys)


def test_prepare_into_an_existing_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["prepare", str(tmp_path / "src"), str(f), "--no-progress"]) == 2
    assert "prepare OUT" in _one_line_error(capsys) and f.read_text() == "x"


def test_out_or_csv_dir_on_an_existing_file(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["run", "--out", str(f), *SMALL]) == 2
    assert "is an existing file" in _one_line_error(capsys)
    assert main(["run", "--out", str(f / "sub"), *SMALL]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert main(["stats", "--benchmark", "continual-vs", "--data-root", str(tmp_path), "--csv-dir", str(f)]) == 2
    assert "--csv-dir" in _one_line_error(capsys)
    assert f.read_text() == "x"


def test_list_strategies_and_warning_filters_are_restored(capsys):
    import warnings

    before = list(warnings.filters)
    assert main(["run", "--list-strategies"]) == 0
    assert "stella" in capsys.readouterr().out.split()
    assert warnings.filters == before
