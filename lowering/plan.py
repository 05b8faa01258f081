"""Execution plan of a lowered phase: where every tensor lives and the dispatch list.

Storage kinds: ``weight`` (a param, or a row range of one, uploaded once), ``input`` (token ids),
``cache`` (a layer's KV cache, persistent across steps), ``const`` (tables the runtime computes,
e.g. RoPE cos/sin), and ``slot`` (activation buffers; tensors whose lifetimes do not overlap share
a slot, sized for the largest step: ``seq`` = prefill chunk, ``total`` = max context). Views
(reshape, kv_cache_read, output) and in-place ops (kv_cache_write) resolve to their source.
"""

from __future__ import annotations

from typing import Any

from ir.graph import Graph
from ir.ops import VIEW_OPS
from ir.shapes import resolve
from lowering.kernels.common import DTYPE_BYTES


def storage_root(g: Graph, name: str) -> str:
    n = g[name]
    while n.op in VIEW_OPS or n.op == "kv_cache_write":
        n = g[n.inputs[0]]
    return n.name


def plan_memory(g: Graph, max_dims: dict[str, int]) -> dict[str, Any]:
    """Greedy liveness-based slot sharing. Returns {"tensors": name -> storage, "slots": sizes}."""
    order = [n.name for n in g.nodes()]
    last_use: dict[str, int] = {}
    for idx, n in enumerate(g.nodes()):
        for i in n.inputs:
            last_use[storage_root(g, i)] = idx
        if n.op == "output":
            last_use[storage_root(g, n.name)] = len(order)
    tensors: dict[str, dict[str, Any]] = {}
    slots: list[int] = []
    slot_free_at: list[int] = []
    for idx, n in enumerate(g.nodes()):
        root = storage_root(g, n.name)
        if root != n.name:
            continue
        if n.op == "weight":
            tensors[n.name] = {"kind": "weight", "param": n.attrs["param"], "rows": n.attrs.get("rows"),
                               "shape": list(n.shape), "dtype": n.dtype}
            continue
        if n.op == "input":
            kind = "cache" if n.attrs.get("role") == "kv_cache" else "input"
            tensors[n.name] = {"kind": kind, "shape": list(n.shape), "dtype": n.dtype}
            continue
        size = DTYPE_BYTES[n.dtype]
        for d in resolve(n.shape, max_dims):
            size *= d
        size = max(size, 16)
        free = [s for s in range(len(slots)) if slot_free_at[s] < idx]
        fit = [s for s in free if slots[s] >= size]
        s = min(fit, key=lambda k: slots[k]) if fit else (max(free, key=lambda k: slots[k]) if free else None)
        if s is None:
            slots.append(size)
            slot_free_at.append(0)
            s = len(slots) - 1
        slots[s] = max(slots[s], size)
        slot_free_at[s] = last_use.get(n.name, idx)
        tensors[n.name] = {"kind": "slot", "slot": s, "shape": list(n.shape), "dtype": n.dtype}
    return {"tensors": tensors, "slots": slots}
