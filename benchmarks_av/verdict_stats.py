"""Welch tests between methods of ``compare.json`` reports, and the same method across two reports.

Reads the per-seed Avg (mean over R@1/5/10, in %) of A and F of every run in one or more
``compare.json`` files written by ``avalanche-av compare`` and prints, per direction:

* each method's mean ± std over seeds (sample std) and its per-seed values;
* for each ``--pair A,B``: the difference of the means, Welch's two-sided p and in how many
  seeds (paired by seed) A is above B;
* with two reports: each method present in both, old against new (``--label``).

Example (the 2026-12-02 rerun of the verdict's methods with the memory seeded by the run)::

    python benchmarks_av/verdict_stats.py benchmarks_av/results/reproduce/table1/compare.json \\
        benchmarks_av/results/reseeded/table1/compare.json --label "memory seed 0,memory seed = run seed" \\
        --pair stella,der++ --out benchmarks_av/results/reseeded/verdict_stats.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from scipy import stats

DIRECTIONS = ("a2v", "v2a")


def per_seed(report: dict, method: str, direction: str, metric: str) -> Dict[int, float]:
    """Seed -> Avg over R@K of ``metric`` (``"A"`` or ``"F"``) for ``method``, in %."""
    runs = report["runs"].get(method, {})
    out = {}
    for seed, run in runs.items():
        m = run.get("metrics", {}).get(direction)
        if m:
            out[int(seed)] = float(np.mean([m[k][metric] for k in sorted(m)]))
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch p of two samples (nan with fewer than 2 values in either)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def describe(values: Dict[int, float]) -> str:
    v = [values[s] for s in sorted(values)]
    sd = np.std(v, ddof=1) if len(v) > 1 else float("nan")
    return f"{np.mean(v):.2f} ± {sd:.2f} ({', '.join(f'{x:.2f}' for x in v)})"


def tables(reports: List[dict], labels: List[str], pairs: List[tuple]) -> str:
    lines: List[str] = []
    for metric in ("A", "F"):
        for d in DIRECTIONS:
            lines += [f"### {metric}, {d} (Avg over R@1/5/10, %; mean ± std over seeds, then per seed)", "",
                      "| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
            methods = [m for m in reports[-1]["strategies"]]
            for m in methods:
                cells = []
                for r in reports:
                    v = per_seed(r, m, d, metric)
                    cells.append(describe(v) if v else "—")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
            for a, b in pairs:
                for label, r in zip(labels, reports):
                    va, vb = per_seed(r, a, d, metric), per_seed(r, b, d, metric)
                    if not va or not vb:
                        continue
                    common = sorted(set(va) & set(vb))
                    above = sum(va[s] > vb[s] for s in common)
                    diff = np.mean(list(va.values())) - np.mean(list(vb.values()))
                    lines.append(f"- {label}: {a} − {b} = {diff:+.2f}, Welch p = {welch(list(va.values()), list(vb.values())):.3f}, "
                                 f"{a} above in {above}/{len(common)} seeds")
            if len(reports) == 2:
                for m in methods:
                    old, new = per_seed(reports[0], m, d, metric), per_seed(reports[1], m, d, metric)
                    if old and new:
                        diff = np.mean(list(new.values())) - np.mean(list(old.values()))
                        lines.append(f"- {m}: {labels[1]} − {labels[0]} = {diff:+.2f}, Welch p = "
                                     f"{welch(list(new.values()), list(old.values())):.3f}")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="compare.json files (1 or 2)")
    ap.add_argument("--label", default=None, help="comma-separated column labels, one per report")
    ap.add_argument("--pair", action="append", default=[], help="A,B: test method A against B (repeatable)")
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    a = ap.parse_args(argv)
    if len(a.reports) > 2:
        ap.error("give one or two compare.json files")
    reports = []
    for path in a.reports:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            ap.error(f"{path}: cannot read a compare.json ({type(e).__name__}: {e})")
        if not isinstance(report, dict) or "runs" not in report or "strategies" not in report:
            ap.error(f"{path}: not a compare.json written by avalanche-av compare (no 'runs'/'strategies')")
        reports.append(report)
    labels = a.label.split(",") if a.label else [str(p) for p in a.reports]
    if len(labels) != len(reports):
        ap.error("--label needs one label per report")
    pairs = [tuple(p.split(",")) for p in a.pair]
    if any(len(p) != 2 for p in pairs):
        ap.error("--pair takes two method names, A,B")
    text = tables(reports, labels, pairs)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        args = " ".join(argv if argv is not None else sys.argv[1:])
        Path(a.out).write_text(f"Command: `python benchmarks_av/verdict_stats.py {args}`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
