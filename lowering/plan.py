"""Execution plan of a lowered phase: where every tensor lives and the dispatch list.

Storage kinds: ``weight`` (a param, or a row range of one, uploaded once), ``input`` (token ids),
``cache`` (a layer's KV cache, persistent across steps), ``const`` (tables the runtime computes,
e.g. RoPE cos/sin), and ``slot`` (activation buffers; tensors whose lifetimes do not overlap share
a slot, sized for the largest step: ``seq`` = prefill chunk, ``total`` = max context). Views
(reshape, kv_cache_read, output) and in-place ops (kv_cache_write) resolve to their source.
"""

from __future__ import annotations

from collections.abc import Mapping

from common.dtypes import DTYPE_BYTES
from common.manifest import Storage, WeightSpec
from common.weight_format import of_dtype
from ir.graph import Graph
from ir.ops import VIEW_OPS
from ir.shapes import resolve


def storage_root(g: Graph, name: str) -> str:
    n = g[name]
    while n.op in VIEW_OPS or n.op == "kv_cache_write":
        n = g[n.inputs[0]]
    return n.name


def plan_memory(g: Graph, max_dims: dict[str, int],
                param_shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, Storage], list[int], list[WeightSpec]]:
    """Greedy liveness-based slot sharing. Returns where each tensor lives, the slot sizes in
    bytes, and the weights the phase reads (``param_shapes``: each checkpoint tensor's shape)."""
    order = [n.name for n in g.nodes()]
    last_use: dict[str, int] = {}
    for idx, n in enumerate(g.nodes()):
        for i in n.inputs:
            last_use[storage_root(g, i)] = idx
        if n.op == "output":
            last_use[storage_root(g, n.name)] = len(order)
    tensors: dict[str, Storage] = {}
    weights: list[WeightSpec] = []
    slots: list[int] = []
    slot_free_at: list[int] = []
    for idx, n in enumerate(g.nodes()):
        root = storage_root(g, n.name)
        if root != n.name:
            continue
        if n.op == "weight":
            rows = n.attrs.get("rows")
            w = WeightSpec(n.attrs["param"], tuple(param_shapes[n.attrs["param"]]), of_dtype(n.dtype).name,
                           tuple(rows) if rows else None)
            weights.append(w)
            tensors[n.name] = Storage("weight", tuple(n.shape), n.dtype, weight=w.key)
            continue
        if n.op == "input":
            kind = "cache" if n.attrs.get("role") == "kv_cache" else "input"
            tensors[n.name] = Storage(kind, tuple(n.shape), n.dtype)
            continue
        size = DTYPE_BYTES[n.dtype]
        for d in resolve(n.shape, max_dims):
            size *= d
        size = max(size, 16)
        # a tensor another node's kernel writes (``written_by``) is born at that kernel: a slot the
        # writer still reads (its last use) must not be handed to it
        born = order.index(n.attrs["written_by"]) if n.attrs.get("written_by") else idx
        free = [s for s in range(len(slots)) if slot_free_at[s] < born]
        fit = [s for s in free if slots[s] >= size]
        s = min(fit, key=lambda k: slots[k]) if fit else (max(free, key=lambda k: slots[k]) if free else None)
        if s is None:
            slots.append(size)
            slot_free_at.append(0)
            s = len(slots) - 1
        slots[s] = max(slots[s], size)
        slot_free_at[s] = last_use.get(n.name, idx)
        tensors[n.name] = Storage("slot", tuple(n.shape), n.dtype, slot=s)
    return tensors, slots, weights
