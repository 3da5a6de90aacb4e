"""Micro-benchmark: vectorised audio time-chunk selection vs a per-sample loop.

Compares ``avalanche_av.training.selection.select_audio_time_chunks`` (whole
batch at once) with the per-sample Algorithm-1-style loop kept as the
structural reference in ``tests/test_selection.py``, at the base shapes
(64 time x 8 frequency patches, κ_a = 256, L_c = 4) and batch 48.

Run from the repository root::

    python benchmarks_av/bench_audio_selection.py [--batch 48] [--repeats 20] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for tests.*

from avalanche_av.training.selection import (  # noqa: E402
    audio_chunks_from_order,
    bernoulli_exclusion,
    select_audio_time_chunks,
)
from tests.test_selection import (  # noqa: E402
    reference_audio_chunks,
    reference_select_audio_time_chunks,
)


def _time(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--n-time", type=int, default=64)
    ap.add_argument("--n-freq", type=int, default=8)
    ap.add_argument("--kappa", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--p-exclude", type=float, default=0.25, help="exclusion probability of each patch")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    b, nt, nf, k, lc = args.batch, args.n_time, args.n_freq, args.kappa, args.chunk
    g_cpu = torch.Generator().manual_seed(0)
    imp = torch.softmax(torch.randn(b, nt * nf, generator=g_cpu), dim=1)
    ex = bernoulli_exclusion(torch.full((b, nt * nf), args.p_exclude), g_cpu)

    # Correctness first: same chunk order and coin -> identical indices.
    n_chunks = -(-nt // lc)
    order = torch.stack([torch.randperm(n_chunks, generator=g_cpu) for _ in range(b)])
    side = torch.rand(b, generator=g_cpu) < 0.5
    vec = audio_chunks_from_order(ex.to(dev), order.to(dev), nt, nf, k, lc, side.to(dev)).cpu()
    ref = reference_audio_chunks(ex, order, nt, nf, k, lc, side)
    if not torch.equal(vec, ref):
        raise SystemExit("vectorised and per-sample selections differ")

    imp_d, ex_d = imp.to(dev), ex.to(dev)
    g_dev = torch.Generator(device=dev).manual_seed(1)
    t_vec = _time(lambda: select_audio_time_chunks(imp_d, ex_d, nt, nf, k, lc, g_dev), args.repeats, sync)
    t_loop = _time(
        lambda: reference_select_audio_time_chunks(imp, ex, nt, nf, k, lc, g_cpu),
        max(3, args.repeats // 4),
        lambda: None,
    )
    print("command: python " + " ".join(sys.argv))
    print(
        f"batch={b} grid={nt}x{nf} kappa={k} L_c={lc} p_exclude={args.p_exclude} "
        f"threads={torch.get_num_threads()} device={dev} (loop on cpu)"
    )
    print(f"per-sample loop : {t_loop * 1e3:9.2f} ms / batch")
    print(f"vectorised      : {t_vec * 1e3:9.2f} ms / batch")
    print(f"speedup         : {t_loop / t_vec:9.1f}x")


if __name__ == "__main__":
    main()
