"""The packages form one-way layers, and no module imports itself back through a cycle.

common <- ir <- frontend <- lowering <- runtime: each layer imports only the ones to its left.
The two commands that run the whole pipeline (``frontend.compile``, ``frontend.demo``) sit on
top of every layer. Checked on the real import graph (grimp, imports inside functions included).
"""

from __future__ import annotations

import grimp
import networkx as nx

LAYERS = ("common", "ir", "frontend", "lowering", "runtime")
ENTRY_POINTS = {"frontend.compile", "frontend.demo"}


def _graph() -> nx.DiGraph:
    g = grimp.build_graph(*LAYERS, cache_dir=None)
    out = nx.DiGraph()
    for m in g.modules:
        out.add_node(m)
        for d in g.find_modules_directly_imported_by(m):
            out.add_edge(m, d)
    return out


def test_no_upward_imports():
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = [(a, b) for a, b in _graph().edges
              if a not in ENTRY_POINTS and rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert not upward, f"imports that point up a layer: {upward}"


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_runtime_needs_no_tvm_and_no_model_config():
    """The device machine has no TVM; the manifest carries all the runtime needs of the model."""
    g = grimp.build_graph(*LAYERS, "tvm", cache_dir=None)
    runtime = {m for m in g.modules if m.startswith("runtime")}
    for banned in ("tvm", "frontend.config", "frontend.qwen3", "lowering"):
        chains = [g.find_shortest_chain(importer=m, imported=banned) for m in runtime]
        assert not any(chains), f"runtime reaches {banned}: {next(c for c in chains if c)}"
