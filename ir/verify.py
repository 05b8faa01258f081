"""Graph verifier, run after tracing and after every lowering pass."""

from __future__ import annotations

import networkx as nx

from ir.graph import Graph
from ir.ops import LEAF_OPS, OPS, OpError, infer


class GraphError(ValueError):
    """The graph is malformed; the message names the node."""


def verify(g: Graph) -> None:
    seen: set[str] = set()
    for n in g.nodes():
        if n.op not in OPS:
            raise GraphError(f"node {n.name}: unknown op {n.op!r}")
        for i in n.inputs:
            if i not in seen:
                raise GraphError(f"node {n.name}: input {i!r} is not defined before it")
        seen.add(n.name)
        if n.op in LEAF_OPS:
            if n.inputs:
                raise GraphError(f"node {n.name}: {n.op} takes no inputs")
            continue
        try:
            shape, dtype = infer(n.op, [(g[i].shape, g[i].dtype) for i in n.inputs], n.attrs)
        except (OpError, KeyError, IndexError, ValueError) as e:
            raise GraphError(f"node {n.name} ({n.op}): {e}") from None
        if tuple(shape) != tuple(n.shape) or dtype != n.dtype:
            raise GraphError(f"node {n.name} ({n.op}): recorded {n.dtype}{list(n.shape)} "
                             f"but the op gives {dtype}{list(shape)}")
    if not nx.is_directed_acyclic_graph(g.nx):
        raise GraphError("graph has a cycle")
    if not g.by_op("output"):
        raise GraphError("graph has no output node")
