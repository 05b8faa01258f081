"""Graph and Node: the op graph every stage of the pipeline reads and writes.

Nodes live in a networkx ``DiGraph`` (edges are tensor uses, so graph algorithms such as
topological order, reachability and DOT export come for free) and keep the ordered input list
on the node itself, since an op's operands are positional.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from ir.shapes import Shape


@dataclass
class Node:
    """One op. ``shape``/``dtype`` describe its single output tensor."""

    name: str
    op: str
    inputs: list[str]
    shape: Shape
    dtype: str
    attrs: dict[str, Any] = field(default_factory=dict)


class Graph:
    """An ordered op graph for one phase (``prefill`` or ``decode``)."""

    def __init__(self, phase: str, meta: dict[str, Any] | None = None) -> None:
        self.phase = phase
        self.meta: dict[str, Any] = dict(meta or {})
        self._g = nx.DiGraph()
        self._order: list[str] = []

    # construction -------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self._g:
            raise ValueError(f"duplicate node name {node.name!r}")
        self._g.add_node(node.name, node=node)
        for src in node.inputs:
            self._g.add_edge(src, node.name)
        self._order.append(node.name)
        return node

    def fresh_name(self, base: str) -> str:
        if base not in self._g:
            return base
        i = 1
        while f"{base}_{i}" in self._g:
            i += 1
        return f"{base}_{i}"

    # queries ------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._g

    def __getitem__(self, name: str) -> Node:
        return self._g.nodes[name]["node"]

    def __len__(self) -> int:
        return len(self._order)

    def nodes(self) -> Iterator[Node]:
        """Nodes in insertion order (always a topological order: inputs are added first)."""
        for name in self._order:
            yield self[name]

    def users(self, name: str) -> list[Node]:
        return [self[u] for u in self._order if name in self[u].inputs]

    def by_op(self, op: str) -> list[Node]:
        return [n for n in self.nodes() if n.op == op]

    @property
    def nx(self) -> nx.DiGraph:
        return self._g

    def copy(self) -> Graph:
        g = Graph(self.phase, copy.deepcopy(self.meta))
        for n in self.nodes():
            g.add(copy.deepcopy(n))
        return g

    @classmethod
    def from_nodes(cls, phase: str, meta: dict[str, Any], nodes: list[Node]) -> Graph:
        """Rebuild a graph from a node list, dropping nodes nothing reaches from an output."""
        by_name = {n.name: n for n in nodes}
        live: set[str] = set()
        stack = [n.name for n in nodes if n.op == "output"]
        while stack:
            cur = stack.pop()
            if cur in live:
                continue
            live.add(cur)
            stack.extend(by_name[cur].inputs)
        g = cls(phase, meta)
        for n in nodes:
            if n.name in live:
                g.add(n)
        return g
