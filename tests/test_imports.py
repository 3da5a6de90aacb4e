"""Imports: the package's import graph follows the documented layering (docs/training.md) and has no
cycle, and importing the package changes no global state (warning filters).

Every module of ``avalanche_av`` is parsed with :mod:`ast` (nothing is imported), and every
``import`` / ``from ... import`` statement counts: at module level, inside functions (lazy
imports), under ``if TYPE_CHECKING``. Layers, top to bottom::

    cli -> experiment -> training -> evaluation -> models
           experiment -> benchmarks -> io
    downstream -> evaluation, models, benchmarks (-> io)

A module may import its own layer and the layers its layer is allowed to use, nothing else.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import avalanche_av

PKG_ROOT = Path(avalanche_av.__file__).resolve().parent
PKG = "avalanche_av"

#: What each layer may import besides itself. ``root`` is the package ``__init__`` (version only).
ALLOWED: dict[str, set[str]] = {
    "cli": {"experiment", "training", "evaluation", "models", "benchmarks", "io", "downstream", "root"},
    "experiment": {"training", "evaluation", "models", "benchmarks", "io", "root"},
    "training": {"evaluation", "models", "root"},
    "evaluation": {"models", "root"},
    "models": {"root"},
    # Downstream tasks score with the evaluation layer's functions (e.g. recall@K); evaluation
    # uses only models, so this adds no upward edge.
    "downstream": {"models", "evaluation", "benchmarks", "io", "root"},
    "benchmarks": {"io", "root"},
    "io": {"root"},
    "root": set(),
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == PKG, module
    if len(parts) == 1:
        return "root"
    top = parts[1]
    if top == "benchmarks" and len(parts) > 2 and parts[2] == "io":
        return "io"
    if top == "analysis":  # inspection of run checkpoints: the experiment layer (the layering of docs/training.md)
        return "experiment"
    if top in ("compare", "presets"):  # method comparison and benchmark presets: the experiment layer
        return "experiment"
    if top in ("cli", "experiment", "training", "evaluation", "models", "benchmarks", "downstream"):
        return top
    raise AssertionError(f"module {module} is in no layer; add its folder to ALLOWED in {__file__}")


def all_modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PKG_ROOT.rglob("*.py")):
        rel = path.relative_to(PKG_ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of our modules."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in mods:
            return cand
    return None


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of one of our modules in ``path``."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PKG:
                    target = _resolve(a.name, mods)
                    if target:
                        out.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            if base_name.split(".")[0] != PKG:
                continue
            for a in node.names:
                # ``from pkg import sub`` imports the submodule when there is one.
                target = _resolve(f"{base_name}.{a.name}", mods) if a.name != "*" else None
                if target is None or target == _resolve(base_name, mods):
                    target = _resolve(base_name, mods)
                if target:
                    out.append((target, node.lineno))
    return out


def import_graph() -> dict[str, list[tuple[str, int]]]:
    mods = all_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def layering_violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad: list[str] = []
    for mod, targets in graph.items():
        src = layer_of(mod)
        for target, line in targets:
            dst = layer_of(target)
            msg = f"{mod}:{line} ({src}) imports {target} ({dst})"
            if dst != src and dst not in ALLOWED[src] and msg not in bad:
                bad.append(msg)
    return bad


def find_cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    edges = {m: sorted({t for t, _ in ts if t in graph}) for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan; the graph has ~60 nodes, recursion is fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                comps.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return comps


# --------------------------------------------------------------------------- the checker itself
def test_checker_sees_lazy_relative_and_from_imports(tmp_path):
    src = (
        "from .. import experiment\n"
        "def f():\n"
        "    from avalanche_av.models import presets\n"
        "    import avalanche_av.training.checkpoint\n"
    )
    p = tmp_path / "x.py"
    p.write_text(src)
    mods = all_modules()
    got = imports_of("avalanche_av.benchmarks.x", p, mods)
    assert got == [("avalanche_av.experiment", 1), ("avalanche_av.models.presets", 3),
                   ("avalanche_av.training.checkpoint", 4)]
    graph = {"avalanche_av.benchmarks.x": got}
    assert len(layering_violations(graph)) == 3


def test_checker_finds_a_planted_cycle():
    graph = {"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}
    assert find_cycles(graph) == [["a", "b", "c"]]


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_import_goes_down_the_layers(graph):
    bad = layering_violations(graph)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# --------------------------------------------------------------------------- import side effects
_FILTERS_PROBE = """
import importlib, pkgutil, warnings
# Third-party packages may set filters when imported; import them first.
import torch, avalanche.training, avalanche.evaluation, avalanche.logging, avalanche.benchmarks
before = list(warnings.filters)
import avalanche_av
names = [m.name for m in pkgutil.walk_packages(avalanche_av.__path__, "avalanche_av.")]
for name in names:
    importlib.import_module(name)
added = [f for f in warnings.filters if f not in before]
removed = [f for f in before if f not in warnings.filters]
print(len(names), repr(added), repr(removed))
"""


def test_importing_the_package_leaves_warning_filters_alone():
    # A fresh interpreter: in this one the package is long imported.
    res = subprocess.run([sys.executable, "-c", _FILTERS_PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    n, added, removed = res.stdout.split(" ", 2)
    assert int(n) > 30  # every module was imported
    assert (added, removed.strip()) == ("[]", "[]"), res.stdout
