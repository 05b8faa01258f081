"""Graph and Node: the op graph every stage of the pipeline reads and writes.

Nodes live in a networkx ``DiGraph`` (edges are tensor uses, so graph algorithms such as
topological order, reachability and DOT export come for free) and keep the ordered input list
on the node itself, since an op's operands are positional.

Passes rewrite a graph in place the way torch.fx passes do: match a pattern, build the
replacement, then ``replace_all_uses_with`` / ``replace`` / ``erase`` and a final
``eliminate_dead_code``. These methods keep the edges (and so ``users``) in step with every
node's input list, which is why a node's inputs are changed through ``set_inputs`` only.
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
    """One op. ``shape``/``dtype`` describe its single output tensor.

    ``attrs`` are the op's semantics (what the shape rule, the reference executor and the kernel
    generators read); ``meta`` holds annotations nothing computes with, like torch.fx's
    ``node.meta``: why a pass chose what it did (``reason``), which traced nodes a fused node
    covers (``covers``), which matmul a chunk was ``split_of``, the classified matmuls a fused
    kernel performs (``fused_matmuls``), the op a view ``was`` before a rewrite. Passes may
    consult meta in their patterns (a ``split_of`` chunk is not fused further), ``lowering.dump``
    shows it; shape rules, the reference executor and kernel generators never read it."""

    name: str
    op: str
    inputs: list[str]
    shape: Shape
    dtype: str
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


NodeRef = Node | str  # a node or its name: every method below takes either


class Graph:
    """An ordered op graph for one phase (``prefill`` or ``decode``).

    The order is the order kernels are dispatched in; passes keep it topological (a node after
    its inputs), which ``verify`` checks after every pass."""

    def __init__(self, phase: str, meta: dict[str, Any] | None = None) -> None:
        self.phase = phase
        self.meta: dict[str, Any] = dict(meta or {})
        self._g = nx.DiGraph()
        self._order: list[str] = []
        self._pos: dict[str, int] | None = None  # name -> index in _order, rebuilt after a change to it

    # construction -------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        """Append ``node`` (its inputs must already be in the graph for ``verify`` to pass)."""
        return self._insert(len(self._order), node)

    def insert_before(self, anchor: NodeRef, node: Node) -> Node:
        return self._insert(self._index(anchor), node)

    def insert_after(self, anchor: NodeRef, node: Node) -> Node:
        return self._insert(self._index(anchor) + 1, node)

    def fresh_name(self, base: str) -> str:
        """A name no node has: ``base``, else ``base_1``, ``base_2``, ... (as the tracer names)."""
        if base not in self._g:
            return base
        i = 1
        while f"{base}_{i}" in self._g:
            i += 1
        return f"{base}_{i}"

    def _insert(self, index: int, node: Node) -> Node:
        if node.name in self._g:
            raise ValueError(f"duplicate node name {node.name!r}")
        self._g.add_node(node.name, node=node)
        for src in node.inputs:
            self._g.add_edge(src, node.name)
        self._order.insert(index, node.name)
        self._pos = None
        return node

    # rewriting ----------------------------------------------------------------------------
    def set_inputs(self, node: NodeRef, inputs: list[str]) -> None:
        """Give ``node`` new operands (the only way to change them: it keeps ``users`` right)."""
        node = self[self._name(node)]
        for src in set(node.inputs) - set(inputs):
            self._g.remove_edge(src, node.name)
        node.inputs = list(inputs)
        for src in node.inputs:
            self._g.add_edge(src, node.name)

    def replace_all_uses_with(self, old: NodeRef, new: NodeRef) -> list[Node]:
        """Every node that reads ``old`` reads ``new`` instead; returns those nodes. ``new``
        itself keeps reading ``old``, so a node inserted to consume ``old`` (``new = f(old)``)
        can take over all of ``old``'s other users in one call."""
        old, new = self._name(old), self._name(new)
        users = [u for u in self.users(old) if u.name != new]
        for u in users:
            self.set_inputs(u, [new if i == old else i for i in u.inputs])
        return users

    def replace(self, old: NodeRef, new: Node) -> Node:
        """``new`` takes ``old``'s place in the order and its users; ``old`` leaves the graph.
        ``new`` may reuse ``old``'s name (a rewrite that keeps the node's identity)."""
        old_name = self._name(old)
        if old_name in new.inputs:
            raise ValueError(f"{new.name!r} cannot replace {old_name!r}, which it reads")
        if new.name == old_name:
            self.set_inputs(old_name, [])
            self._g.nodes[old_name]["node"] = new
            self.set_inputs(new, new.inputs)
            return new
        self.insert_after(old_name, new)
        self.replace_all_uses_with(old_name, new)
        self.erase(old_name)
        return new

    def move_before(self, anchor: NodeRef, node: NodeRef) -> None:
        """Move a node already in the graph to just before ``anchor``."""
        name = self._name(node)
        self._order.remove(name)
        self._order.insert(self._order.index(self._name(anchor)), name)
        self._pos = None

    def erase(self, node: NodeRef) -> None:
        """Remove a node nothing reads any more (a node with users is a ValueError: rewire them
        with ``replace_all_uses_with`` first)."""
        name = self._name(node)
        users = self.users(name)
        if users:
            raise ValueError(f"cannot erase {name!r}: still used by {[u.name for u in users]}")
        self._g.remove_node(name)
        self._order.remove(name)
        self._pos = None

    def eliminate_dead_code(self) -> list[str]:
        """Erase every node no graph output depends on (the pattern nodes a rewrite left unused,
        weights nothing reads any more); returns their names, in graph order."""
        live: set[str] = set()
        stack = [n.name for n in self.by_op("output")]
        while stack:
            cur = stack.pop()
            if cur not in live:
                live.add(cur)
                stack.extend(self[cur].inputs)
        dead = [name for name in self._order if name not in live]
        self._g.remove_nodes_from(dead)
        self._order = [name for name in self._order if name in live]
        self._pos = None
        return dead

    # queries ------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._g

    def __getitem__(self, name: str) -> Node:
        return self._g.nodes[name]["node"]

    def __len__(self) -> int:
        return len(self._order)

    def nodes(self) -> Iterator[Node]:
        """Nodes in graph order, a topological order. A snapshot: the loop may rewrite the graph."""
        for name in list(self._order):
            if name in self._g:  # not erased by the loop body meanwhile
                yield self[name]

    def users(self, node: NodeRef) -> list[Node]:
        """The nodes that read ``node``, in graph order."""
        pos = self._positions()
        return [self[u] for u in sorted(self._g.successors(self._name(node)), key=pos.__getitem__)]

    def by_op(self, op: str) -> list[Node]:
        return [n for n in self.nodes() if n.op == op]

    @property
    def nx(self) -> nx.DiGraph:
        return self._g

    def copy(self) -> Graph:
        """An independent copy (every pass rewrites one, so its input graph stays as it was)."""
        g = Graph(self.phase, copy.deepcopy(self.meta))
        for n in self.nodes():  # field by field: deepcopy of the dataclass itself is 3x slower
            g.add(Node(n.name, n.op, list(n.inputs), n.shape, n.dtype, copy.deepcopy(n.attrs), copy.deepcopy(n.meta)))
        return g

    @staticmethod
    def _name(node: NodeRef) -> str:
        return node if isinstance(node, str) else node.name

    def _positions(self) -> dict[str, int]:
        if self._pos is None:
            self._pos = {name: i for i, name in enumerate(self._order)}
        return self._pos

    def _index(self, node: NodeRef) -> int:
        return self._positions()[self._name(node)]
