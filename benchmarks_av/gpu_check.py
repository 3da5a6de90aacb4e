"""One-go GPU check: CUDA tests, bf16 sanity, host syncs, paper Table 2's efficiency, STELLA++, DDP.

Runs in under 8 minutes on one GPU (``--budget-s``, default 450 s: a section that would start
after the budget is recorded as skipped) and writes ``gpu_check.json`` and ``gpu_check.md`` into
``--out-dir`` (default ``$OUT`` when set, else ``benchmarks_av/results/gpu``). It installs
nothing and needs no network: it imports the package from this checkout (the repository root
goes on ``sys.path``) and uses the ``torch`` already on the machine.

Sections, in order (each one's failure is recorded and the next one runs):

1. ``environment``: GPU, torch, bf16 support, the packages the package needs.
2. ``cuda_tests``: ``pytest -m cuda tests/test_cuda.py`` (the file that holds the tests marked ``cuda``).
3. ``bf16``: the ``base`` model's loss under bf16 autocast against fp32 on the same inputs and
   masks, and one bf16 STELLA training step (finite, not skipped).
4. ``efficiency``: ``bench_efficiency.run_benchmark`` at ``base`` shapes, batch 9 + a memory
   batch of 9 (paper Table 2), Finetune, ER, DER++, STELLA, STELLA+, fused and explicit
   attention: absolute peak CUDA memory and samples/s, against the paper's V100 figures.
5. ``stella_pp``: STELLA++ = STELLA+ with the largest batch whose peak step memory fits DER++'s
   at batch 9 (the paper used batch 15, 1.66x), plus STELLA+ at batch 15.
6. ``host_syncs``: ``torch.cuda.set_sync_debug_mode('warn')`` around training steps of DER++
   and STELLA (``tiny``), syncs per step by call site, with ``nan_check_every`` 1 and 4.
7. ``score_cache``: STELLA / STELLA+ with every row's scores cached vs scored, vs DER++, at
   ``base`` batch 9 (``bench_score_cache.measure_throughput``).
8. ``ddp``: with 2+ GPUs, ``torchrun --nproc_per_node=2 -m avalanche_av.cli run`` on a short
   synthetic stream; skipped with one GPU.

``--dry-run`` (= ``--device cpu --tiny``) runs every section on the CPU with the ``tiny`` model
and minimal steps; ``tests/test_gpu_check.py`` runs it.

On a GPU machine without network whose Python has torch, timm, pytest, pandas and
matplotlib but not Avalanche: bring the wheels of ``benchmarks_av/gpu_wheels.txt`` (downloaded
where pip works, e.g. ``pip download --no-deps -d .whl -r benchmarks_av/gpu_wheels.txt`` with
the target machine's ``--python-version`` and ``--platform``), then::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
      PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks_av/gpu_check.py
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks_av"))

import torch  # noqa: E402

#: Paper Table 2 (single V100, batch 9; STELLA++ batch 15): GPU memory in GB, samples/s.
PAPER_V100 = {
    "finetune": (18.34, 29.46),
    "er": (30.95, 17.70),
    "der++": (30.95, 17.79),
    "stella": (17.45, 17.29),
    "stella+": (17.15, 18.11),
    "stella++": (24.69, None),
}
STRATEGIES = ("finetune", "er", "der++", "stella", "stella+")
NEEDED = ("avalanche", "timm", "einops", "pandas", "matplotlib", "tqdm", "pytest")


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _section(report: dict, name: str, budget: Budget, need_s: float, fn: Callable[[], dict]) -> None:
    """Run ``fn`` if ``need_s`` seconds are left; record its result, failure or skip."""
    t0 = time.perf_counter()
    if budget.left() < need_s:
        report["sections"][name] = {"status": "skipped", "reason": f"time budget ({budget.left():.0f} s left, "
                                                                  f"needs about {need_s:.0f} s)"}
        print(f"[gpu_check] {name}: skipped (budget)", flush=True)
        return
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        res = fn()
        res.setdefault("status", "ok")
    except Exception as e:  # noqa: BLE001 - a failed section must not stop the others
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    report["sections"][name] = res
    print(f"[gpu_check] {name}: {res['status']} in {res['seconds']} s", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- sections
def environment() -> dict:
    pkgs = {}
    for name in NEEDED:
        try:
            mod = importlib.import_module(name)
            pkgs[name] = getattr(mod, "__version__", "present")
        except Exception as e:  # noqa: BLE001
            pkgs[name] = f"MISSING ({type(e).__name__}: {e})"
    out = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
           "cuda_available": torch.cuda.is_available(), "packages": pkgs}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                   cuda=torch.version.cuda)
    missing = [k for k, v in pkgs.items() if str(v).startswith("MISSING")]
    if missing:
        out["status"] = "failed"
        out["error"] = f"missing packages {missing}: carry them as wheels (no network here)"
    return out


def cuda_tests(timeout: float) -> dict:
    # Only the file that holds the cuda-marked tests: collecting all of tests/ would import
    # soundfile & co., which the GPU image need not have (pytest then stops before any test).
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-3000:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", tail)}
    ok = proc.returncode in (0, 5) and not counts.get("failed") and not counts.get("error") and not counts.get("errors")
    return {"status": "ok" if ok else "failed", "command": " ".join(shlex.quote(c) for c in cmd),
            "returncode": proc.returncode, "counts": counts, "tail": tail[-1500:]}


def bf16_sanity(device: str, model_name: str) -> dict:
    from avalanche_av.models import create_model

    dev = torch.device(device)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    model = create_model(model_name).to(dev).eval()
    c = model.config
    b = 4
    audio = torch.randn(b, c.audio_length, c.num_mel_bins, device=dev)
    video = torch.randn(b, c.n_frames, 3, c.image_size, c.image_size, device=dev)
    with torch.no_grad():
        ref = model(audio, video, generator=torch.Generator().manual_seed(1))
        with torch.autocast(dev.type, dtype=dtype):
            low = model(audio, video, generator=torch.Generator().manual_seed(1))
    rel = abs(low.loss.float().item() - ref.loss.item()) / max(abs(ref.loss.item()), 1e-12)
    cos = torch.nn.functional.cosine_similarity(low.pooled_v.float(), ref.pooled_v, dim=-1).min().item()
    out = {"model": model_name, "loss_fp32": ref.loss.item(), "loss_bf16": low.loss.float().item(),
           "relative_difference": rel, "min_cosine_pooled_v": cos}
    # one bf16 training step of STELLA (the template's autocast on CUDA; CPU has no AMP)
    step = _train_steps("stella", model_name, device, steps=1, amp="bf16")
    out["stella_step"] = step
    ok = torch.isfinite(low.loss).item() and rel < 0.05 and cos > 0.98 and step["finite"] and step["skipped_steps"] == 0
    out["status"] = "ok" if ok else "failed"
    return out


def _train_steps(name: str, model_name: str, device: str, steps: int, amp: Optional[str] = "auto",
                 batch_size: int = 4, **template_kw) -> dict:
    from avalanche_av.evaluation import av_evaluator
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer, make_plugins
    from bench_efficiency import build_experiences

    torch.manual_seed(0)
    model = create_model(model_name).to(device)
    exps = build_experiences(model.config, batch_size, n_pool=max(steps, 1), seed=0)
    plugins = [] if name == "finetune" else make_plugins(name, mem_size=batch_size, batch_size=batch_size)
    s = AVPretraining(model=model, optimizer=default_optimizer(model), train_mb_size=batch_size, device=device,
                      plugins=plugins, evaluator=av_evaluator(loggers=[]), amp=amp, **template_kw)
    for e in exps[:steps]:
        s.train(e)
    return {"finite": all(torch.isfinite(p).all().item() for p in model.parameters()),
            "skipped_steps": s.skipped_steps, "loss": float(s.loss.detach().float().item())}


def efficiency(device: str, model_name: str, batch: int, dry: bool, log) -> dict:
    from bench_efficiency import run_benchmark

    kw = dict(warmup=0, count_steps=1, phase_steps=0, steps=1, attention="fused") if dry else \
        dict(warmup=2, count_steps=1, phase_steps=1, steps=5, attention="both")
    rep = run_benchmark([model_name], batch_size=batch, device=device, strategies=STRATEGIES, log=log, **kw)
    return {"report": rep, "table": _table(rep, model_name)}


def _table(rep: dict, model_name: str) -> dict:
    """Per attention mode and strategy: peak GB, samples/s and their ratios to DER++."""
    out = {}
    for mode, mb in rep["models"][model_name]["modes"].items():
        rows = {}
        for name, r in mb["strategies"].items():
            peak = r.get("cuda_peak_bytes")
            rows[name] = {
                "peak_gb": None if peak is None else peak / 1e9,
                "peak_step_gb": None if r.get("cuda_peak_step_bytes") is None else r["cuda_peak_step_bytes"] / 1e9,
                "activation_gb": None if r.get("activation_bytes") is None else r["activation_bytes"] / 1e9,
                "samples_per_s": r.get("samples_per_s"),
            }
        ref = rows.get("der++", {})
        for r in rows.values():
            for k in ("peak_gb", "samples_per_s", "activation_gb"):
                r[f"{k}_x_derpp"] = (r[k] / ref[k]) if r.get(k) and ref.get(k) else None
        out[mode] = rows
    return out


def stella_pp(device: str, model_name: str, batch: int, eff: Optional[dict], dry: bool, log) -> dict:
    """The largest STELLA+ batch whose peak step memory fits DER++'s at ``batch``."""
    from bench_efficiency import run_benchmark

    mode = "fused" if dry else "explicit"  # explicit attention: the paper's kernel
    key = "cuda_peak_step_bytes" if device.startswith("cuda") else "activation_bytes"

    def measure(b: int, strategies) -> dict:
        kw = dict(warmup=0, count_steps=1, phase_steps=0, steps=1) if dry else \
            dict(warmup=1, count_steps=1, phase_steps=0, steps=3)
        rep = run_benchmark([model_name], batch_size=b, device=device, strategies=strategies, attention=mode, log=log, **kw)
        return rep["models"][model_name]["modes"][mode]["strategies"]

    base = None
    if eff and "report" in eff:
        base = eff["report"]["models"][model_name]["modes"].get(mode, {}).get("strategies")
    if not base or key not in base.get("der++", {}) or key not in base.get("stella+", {}):
        base = measure(batch, ["der++", "stella+"])
    budget_bytes = base["der++"][key]
    per_clip = base["stella+"][key] / batch
    guess = max(batch, int(budget_bytes // per_clip))
    tried = {}
    b = guess
    for _ in range(4):  # verify the linear estimate: step down while it does not fit, up while it does
        r = measure(b, ["stella+"])["stella+"]
        tried[b] = {key: r.get(key), "samples_per_s": r.get("samples_per_s"), "peak_bytes": r.get("cuda_peak_bytes"),
                    "fits": r.get(key, float("inf")) <= budget_bytes}
        nxt = b - 1 if not tried[b]["fits"] else b + 1
        if nxt in tried or nxt < batch:
            break
        b = nxt
    fitting = [k for k, v in tried.items() if v["fits"]]
    best = max(fitting) if fitting else None
    out = {"attention": mode, "criterion": key, "derpp_bytes_at_batch": budget_bytes, "batch": batch,
           "estimate": guess, "tried": {str(k): v for k, v in tried.items()}, "stella_pp_batch": best}
    if not dry and 15 not in tried:
        r = measure(15, ["stella+"])["stella+"]
        out["stella+_batch15"] = {key: r.get(key), "samples_per_s": r.get("samples_per_s"),
                                  "peak_bytes": r.get("cuda_peak_bytes")}
    return out


def host_syncs(device: str, dry: bool) -> dict:
    """Syncs per training step by site; CUDA: set_sync_debug_mode('warn'); CPU: HostSyncCounter."""
    out = {}
    steps = 2 if dry else 6
    for name in ("der++", "stella"):
        for k in (1, 4):
            if device.startswith("cuda"):
                out[f"{name} nan_check_every={k}"] = _cuda_syncs(name, steps, k)
            else:
                from bench_host_syncs import count_strategy

                r = count_strategy(name, steps=steps, nan_check_every=k)
                out[f"{name} nan_check_every={k}"] = {"per_step": r["syncs_per_iteration"], "sites": r["by_site"],
                                                      "clock": "cpu harness"}
    return out


def _cuda_syncs(name: str, steps: int, k: int) -> dict:
    from avalanche_av.evaluation import av_evaluator
    from avalanche_av.models import create_model
    from avalanche_av.training import AVPretraining, default_optimizer, make_plugins
    from bench_efficiency import build_experiences

    torch.manual_seed(0)
    model = create_model("tiny").to("cuda")
    exps = build_experiences(model.config, 4, n_pool=steps + 2, seed=0)
    plugins = [] if name == "finetune" else make_plugins(name, mem_size=8, batch_size=4)
    s = AVPretraining(model=model, optimizer=default_optimizer(model), train_mb_size=4, device="cuda",
                      plugins=plugins, evaluator=av_evaluator(loggers=[]), nan_check_every=k)
    for e in exps[:2]:  # fill the memory
        s.train(e)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for e in exps[2:2 + steps]:
                s.train(e)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"per_step": len(syncs) / steps, "sites": {s_: n / steps for s_, n in sites.most_common()},
            "clock": "cuda sync debug mode", "note": "one train() call per step: its per-experience hooks are included"}


def score_cache(device: str, model_name: str, batch: int, dry: bool) -> dict:
    from bench_score_cache import measure_throughput

    return measure_throughput(model_name, batch, steps=1 if dry else 3, device=device)


def ddp(dry: bool) -> dict:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dry or n < 2:
        return {"status": "skipped", "reason": f"{n} GPU(s) visible; the DDP smoke run needs 2"}
    # The run's folder (checkpoint, plots, logs) stays out of out_dir: the device tool brings
    # back only a few files, and gpu_check.json / .md must be among them.
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_check_ddp_"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "avalanche_av.cli", "run", "--n-tasks", "2", "--epochs", "1", "--train-clips-per-class", "16",
           "--eval-clips-per-class", "4", "--batch-size", "8", "--no-progress", "--no-csv", "--out", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    res = {"command": " ".join(shlex.quote(c) for c in cmd), "returncode": proc.returncode,
           "tail": (proc.stdout + proc.stderr)[-2000:]}
    summary = run_dir / "results.json"
    if proc.returncode == 0 and summary.exists():
        data = json.loads(summary.read_text())
        res["distributed"] = data.get("distributed")
        res["status"] = "ok"
    else:
        res["status"] = "failed"
    return res


# ----------------------------------------------------------------------------- report
def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def to_markdown(report: dict) -> str:
    s = report["sections"]
    env = s.get("environment", {})
    lines = ["# GPU check", "", "Command:", "", "```", report["command"], "```", "",
             f"Date {report['date']}, {env.get('gpu', 'no GPU')} ({env.get('gpus', 0)} visible), torch "
             f"{env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, wall {report.get('wall_s', 0):.0f} s"
             f"{' (dry run: CPU, tiny model)' if report['dry_run'] else ''}.", "",
             "| section | status | seconds | note |", "|---|---|---|---|"]
    for name, r in s.items():
        note = r.get("error") or r.get("reason") or ""
        if name == "cuda_tests" and "counts" in r:
            note = ", ".join(f"{v} {k}" for k, v in r["counts"].items())
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '-')} | {note[:160]} |")
    eff = s.get("efficiency", {})
    pp = s.get("stella_pp", {})
    for mode, rows in eff.get("table", {}).items():
        lines += ["", f"## Table 2 setting, {mode} attention, batch {report['batch']} (+ memory batch)", "",
                  "| method | peak GB (ours) | samples/s (ours) | peak x DER++ | samples/s x DER++ "
                  "| paper GB (V100) | paper samples/s | paper GB x DER++ | paper samples/s x DER++ |",
                  "|---|---|---|---|---|---|---|---|---|"]
        pd_gb, pd_tp = PAPER_V100["der++"]
        for name in STRATEGIES:
            r = rows.get(name)
            if r is None:
                continue
            pg, pt = PAPER_V100[name]
            lines.append(f"| {name} | {_fmt(r['peak_gb'])} | {_fmt(r['samples_per_s'])} | {_fmt(r['peak_gb_x_derpp'])} "
                         f"| {_fmt(r['samples_per_s_x_derpp'])} | {pg} | {pt} | {pg / pd_gb:.2f} | {pt / pd_tp:.2f} |")
        if pp.get("status") == "ok" and pp.get("attention") == mode and pp.get("stella_pp_batch"):
            b = pp["stella_pp_batch"]
            t = pp["tried"][str(b)]
            lines.append(f"| stella++ (stella+ batch {b}) | {_fmt(None if t.get('peak_bytes') is None else t['peak_bytes'] / 1e9)} "
                         f"| {_fmt(t.get('samples_per_s'))} | - | - | {PAPER_V100['stella++'][0]} | - | "
                         f"{PAPER_V100['stella++'][0] / pd_gb:.2f} | - |")
    if pp.get("status") == "ok":
        lines += ["", f"STELLA++: the largest STELLA+ batch whose {pp['criterion']} fits DER++'s at batch "
                  f"{pp['batch']} ({pp['derpp_bytes_at_batch'] / 1e9:.2f} GB): **{pp['stella_pp_batch']}** "
                  f"(linear estimate {pp['estimate']}; paper: 15 = 1.66 x 9)."]
        if "stella+_batch15" in pp:
            r = pp["stella+_batch15"]
            lines[-1] += (f" STELLA+ at batch 15: {_fmt(None if r.get('peak_bytes') is None else r['peak_bytes'] / 1e9)} GB "
                          f"peak, {_fmt(r.get('samples_per_s'))} samples/s.")
    hs = s.get("host_syncs", {})
    if hs.get("status") == "ok":
        lines += ["", "## Host syncs per training step", "", "| run | syncs / step | top sites |", "|---|---|---|"]
        for k, v in hs.items():
            if isinstance(v, dict) and "per_step" in v:
                top = "; ".join(f"`{a}` {b:.2f}" for a, b in list(v["sites"].items())[:4])
                lines.append(f"| {k} ({v['clock']}) | {v['per_step']:.2f} | {top} |")
    sc = s.get("score_cache", {})
    if sc.get("status") == "ok":
        lines += ["", "## Score cache (every row cached vs scored)", "", "| run | s / step | x DER++ |", "|---|---|---|"]
        for k in ("der++", "stella", "stella cached", "stella+", "stella+ cached"):
            if k in sc:
                lines.append(f"| {k} | {sc[k]['step_s']:.4f} | {sc[k]['x_derpp']:.2f} |")
        if "stella amortised" in sc:
            lines.append("")
            lines.append("Amortised STELLA x DER++ for k = " + ", ".join(
                f"{k}: {v['x_derpp']:.2f}" for k, v in sc["stella amortised"].items()))
    return "\n".join(lines) + "\n"


def _json_default(o):
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    return repr(o)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=None, help="default: $OUT, else benchmarks_av/results/gpu")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, minimal steps (same as --device cpu --tiny)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny model instead of base")
    ap.add_argument("--batch-size", type=int, default=9, help="paper Table 2: 9")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; later sections are skipped")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    dry = args.dry_run or device == "cpu"
    model_name = "tiny" if (args.tiny or dry) else "base"
    batch = 4 if dry and args.batch_size == 9 else args.batch_size
    if device == "cpu":
        torch.set_num_threads(1)
    out_dir = Path(args.out_dir or os.environ.get("OUT") or ROOT / "benchmarks_av" / "results" / "gpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    report = {"command": "python3 " + " ".join(shlex.quote(a) for a in
                                               ["benchmarks_av/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "device": device,
              "dry_run": dry, "model": model_name, "batch": batch, "paper_v100": PAPER_V100, "sections": {}}
    log = lambda m: print(m, flush=True)  # noqa: E731

    def write() -> None:
        report["wall_s"] = budget.seconds - budget.left()
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
        (out_dir / "gpu_check.md").write_text(to_markdown(report))

    plan = [
        ("environment", 0, environment),
        ("cuda_tests", 60, lambda: cuda_tests(timeout=max(30.0, min(150.0, budget.left() - 240)))),
        ("bf16", 20, lambda: bf16_sanity(device, model_name)),
        ("efficiency", 60, lambda: efficiency(device, model_name, batch, dry, log)),
        ("stella_pp", 45, lambda: stella_pp(device, model_name, batch, report["sections"].get("efficiency"), dry, log)),
        ("host_syncs", 20, lambda: host_syncs(device, dry)),
        ("score_cache", 30, lambda: score_cache(device, model_name, batch, dry)),
        ("ddp", 60, lambda: ddp(dry)),
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        for name, need, fn in plan:
            if name in skip:
                report["sections"][name] = {"status": "skipped", "reason": "--skip"}
                continue
            _section(report, name, budget, need, fn)
            write()
    write()
    print(to_markdown(report))
    print(f"[gpu_check] wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}", flush=True)
    return report


if __name__ == "__main__":
    main()
