"""Decode: the flash-decoding merge rides on the split attention kernel.

``split_decode_attention`` leaves two dispatches per layer: ``attention_partial`` (one workgroup
per kv head and split) and ``attention_combine`` (one small workgroup per query head). At short
context the combine's launch and dependent loads cost about as much as the attention itself (H200,
4B shape, inside the decode step at context 135: 34 us attention + 22 us combine per layer; fused,
32 us). Fused, the last workgroup of each kv head to finish merges its group's split records (an
atomic arrival counter per kv head, ``lowering.kernels.attention``, which also says what this
rests on). The ``attention_combine`` node stays in the graph, marked ``written_by`` the partial
node, as the K and V cache writes are: the graph's meaning and its reference are unchanged, only
the dispatch is gone."""

from __future__ import annotations

from ir.graph import Graph, Node
from lowering.options import LowerOptions
from lowering.passes import is_decode


def fuse_attention_combine(g: Graph, opts: LowerOptions) -> Graph:
    if not opts.fuse_attention_combine or not is_decode(g):
        return g
    g = g.copy()
    for comb in g.by_op("attention_combine"):
        part = g[comb.inputs[0]]
        if part.op != "attention_partial" or part.attrs.get("combine") or comb.attrs.get("written_by") \
                or [u.name for u in g.users(part)] != [comb.name]:
            continue
        g.replace(part, Node(part.name, part.op, part.inputs, part.shape, part.dtype,
                             {**part.attrs, "combine": comb.name},
                             {**part.meta, "covers": [*part.meta.get("covers", [part.name]), comb.name],
                              "reason": part.meta.get("reason", "") + f"; the merge ({comb.name}) is done by the "
                              "last workgroup of each kv head to finish (an atomic arrival counter): no dispatch"}))
        g.replace(comb, Node(comb.name, comb.op, comb.inputs, comb.shape, comb.dtype,
                             {**comb.attrs, "written_by": part.name}, dict(comb.meta)))
    return g
