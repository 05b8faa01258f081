"""Graphviz DOT export (``dot -Tsvg``) of a graph, with optional per-node annotations."""

from __future__ import annotations

from collections.abc import Callable

from ir.graph import Graph, Node
from ir.shapes import fmt

_COLORS = {"matmul": "lightskyblue", "weight": "lightgrey", "input": "palegreen", "output": "palegreen"}


def to_dot(g: Graph, label: Callable[[Node], str] | None = None) -> str:
    lines = [f'digraph "{g.phase}" {{', "  rankdir=TB; node [shape=box, style=filled, fontsize=10];"]
    for n in g.nodes():
        text = f"{n.name}\\n{n.op} {n.dtype}{fmt(n.shape)}"
        if label:
            extra = label(n)
            if extra:
                text += "\\n" + extra.replace('"', "'")
        lines.append(f'  "{n.name}" [label="{text}", fillcolor={_COLORS.get(n.op, "white")}];')
    for n in g.nodes():
        for i in n.inputs:
            lines.append(f'  "{i}" -> "{n.name}";')
    lines.append("}")
    return "\n".join(lines)
