"""JSON round trip of a graph (the compiled module stores its lowered graphs this way): per node
its semantic ``attrs`` and, apart, its annotations (``meta``: reason, covers, ...)."""

from __future__ import annotations

import json
from typing import Any

from ir.graph import Graph, Node


def to_dict(g: Graph) -> dict[str, Any]:
    return {
        "phase": g.phase,
        "meta": g.meta,
        "nodes": [
            {"name": n.name, "op": n.op, "inputs": n.inputs, "shape": list(n.shape), "dtype": n.dtype,
             "attrs": n.attrs, "meta": n.meta}
            for n in g.nodes()
        ],
    }


def from_dict(d: dict[str, Any]) -> Graph:
    g = Graph(d["phase"], d.get("meta", {}))
    for nd in d["nodes"]:
        attrs = dict(nd.get("attrs", {}))
        if "shape" in attrs:
            attrs["shape"] = tuple(attrs["shape"])
        g.add(Node(nd["name"], nd["op"], list(nd["inputs"]), tuple(nd["shape"]), nd["dtype"], attrs,
                   dict(nd.get("meta", {}))))
    return g


def to_json(g: Graph) -> str:
    return json.dumps(to_dict(g), indent=1)


def from_json(text: str) -> Graph:
    return from_dict(json.loads(text))
