"""benchmarks_av/gpu_check.py's CPU dry run (tiny model, minimal steps), as a user runs it.

The GPU run itself needs a CUDA machine; this checks that every section runs and that the
report has the paper comparison, the STELLA++ search and the host-sync table. The CUDA test
subset is skipped here (``--skip cuda_tests``): the normal test run collects it anyway.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks_av" / "gpu_check.py"), "--dry-run",
                           "--skip", "cuda_tests", "--out-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    s = rep["sections"]
    assert rep["dry_run"] and rep["model"] == "tiny" and rep["device"] == "cpu"
    assert s["cuda_tests"]["status"] == "skipped" and s["ddp"]["status"] == "skipped"
    for name in ("environment", "bf16", "efficiency", "stella_pp", "host_syncs", "score_cache"):
        assert s[name]["status"] == "ok", (name, s[name].get("error"), s[name].get("traceback"))
    table = s["efficiency"]["table"]["fused"]
    assert set(table) == {"finetune", "er", "der++", "stella", "stella+"}
    assert table["der++"]["samples_per_s_x_derpp"] == 1.0
    # STELLA++: a batch >= the Table 2 batch whose activations fit DER++'s
    pp = s["stella_pp"]
    assert pp["stella_pp_batch"] >= rep["batch"] and pp["tried"][str(pp["stella_pp_batch"])]["fits"]
    # host syncs: the CPU harness; a deferred loss check never syncs more than a per-step one
    hs = s["host_syncs"]
    assert hs["stella nan_check_every=4"]["per_step"] <= hs["stella nan_check_every=1"]["per_step"]
    assert "17.45" in md and "30.95" in md and "| stella++ (stella+ batch" in md


def test_every_cuda_marked_test_is_in_the_file_gpu_check_runs():
    """gpu_check runs ``pytest -m cuda tests/test_cuda.py`` only (collecting all of tests/ needs
    packages the GPU image may lack), so a cuda-marked test elsewhere would never run there."""
    import re

    here = Path(__file__).parent
    use = re.compile(r"^\s*(@pytest\.mark\.cuda|pytestmark\s*=.*\bmark\.cuda)", re.M)
    marked = sorted(p.name for p in here.glob("test_*.py") if use.search(p.read_text()))
    assert marked == ["test_cuda.py"]
