"""Readable one-line-per-node text form, in the spirit of torch.fx's ``graph.print_tabular``."""

from __future__ import annotations

from ir.graph import Graph, Node
from ir.shapes import fmt

_SHOWN_ATTRS = ("param", "role", "transpose_b", "gqa_group", "eps", "rope", "scale", "causal", "perm",
                "shape", "epilogue", "name")


def format_attrs(n: Node) -> str:
    parts = [f"{k}={n.attrs[k]}" for k in _SHOWN_ATTRS if k in n.attrs and not (k == "shape" and n.op != "reshape")]
    return ", ".join(parts)


def format_node(n: Node, extra: str = "") -> str:
    args = ", ".join(f"%{i}" for i in n.inputs)
    attrs = format_attrs(n)
    body = f"{n.op}({args}{', ' if args and attrs else ''}{attrs})"
    line = f"%{n.name}: {n.dtype}{fmt(n.shape)} = {body}"
    return f"{line}  # {extra}" if extra else line


def to_text(g: Graph) -> str:
    counts: dict[str, int] = {}
    for n in g.nodes():
        counts[n.op] = counts.get(n.op, 0) + 1
    lines = [f"graph {g.phase}({', '.join(f'{k}={v}' for k, v in g.meta.get('dims', {}).items())}) {{"]
    lines += ["  " + format_node(n) for n in g.nodes()]
    lines.append("}")
    lines.append("# ops: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
