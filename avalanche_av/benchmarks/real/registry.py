"""Real benchmarks by name, as ``--benchmark`` spells them (``continual-vs``, ``continual-as-shuffled``, ...).

Pure data logic: the name picks the builder and the task order; decoding shapes and sizes are
the caller's keyword arguments. Matching them to a model preset is the runner's job
(:func:`avalanche_av.experiment.build_benchmark`), not the benchmark layer's.
"""
from __future__ import annotations

from typing import Any, Optional

from avalanche_av.benchmarks.base import RealAVBenchmark
from avalanche_av.benchmarks.io.errors import PathLike
from avalanche_av.benchmarks.real.continual import continual_as, continual_vs

__all__ = ["REAL_BENCHMARKS", "parse_benchmark_name", "real_benchmark"]

#: Benchmark names accepted by ``--benchmark`` (``-shuffled``: the task order of paper Table 7).
REAL_BENCHMARKS = ("continual-vs", "continual-vs-shuffled", "continual-as", "continual-as-shuffled")


def parse_benchmark_name(name: str) -> tuple[str, bool]:
    """``"continual-vs-shuffled"`` -> ``("continual_vs", True)``; ``ValueError`` for unknown names."""
    if name not in REAL_BENCHMARKS:
        raise ValueError(f"unknown real benchmark {name!r}; allowed: {list(REAL_BENCHMARKS)}")
    shuffled = name.endswith("-shuffled")
    base = name[: -len("-shuffled")] if shuffled else name
    return base.replace("-", "_"), shuffled


def real_benchmark(name: str, data_root: Optional[PathLike], **kwargs: Any) -> RealAVBenchmark:
    """Build the real benchmark ``name`` from the local copy at ``data_root``.

    Args:
        name: one of :data:`REAL_BENCHMARKS`.
        data_root: the dataset root (see ``docs/datasets.md``).
        kwargs: passed to :func:`~avalanche_av.benchmarks.continual_vs` /
            :func:`~avalanche_av.benchmarks.continual_as` (decoding shapes, sizes, seed, ...).

    Raises:
        ValueError: an unknown name, or no ``data_root``.
    """
    base, shuffled = parse_benchmark_name(name)
    if not data_root:
        raise ValueError(f"--benchmark {name} needs --data-root PATH (the local dataset copy)")
    gen = continual_vs if base == "continual_vs" else continual_as
    return gen(data_root, shuffled=shuffled, **kwargs)
