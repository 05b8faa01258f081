"""Decode: the new K row's RMSNorm + RoPE + cache store ride on the attention kernel's prologue.

After ``pack_qkv`` a decode layer runs ``qkv_gemv`` (packed [q | k | v], v already stored into
its cache by that kernel), then a ``kv_cache_write`` for K (k RMSNorm + RoPE + store: one small
workgroup per kv head, whose time is launch and memory latency, not work), then attention, whose
prologue already normalizes and rotates q from the same packed row. K's row becomes one more row
of that prologue's reductions, and the workgroup that covers position ``total - 1`` stores it:
one dispatch fewer per layer. The ``kv_cache_write`` node stays, marked ``written_by`` the
attention node (the cache's new value is what the reference, the graph outputs and later steps
read), exactly like v's write inside ``qkv_gemv``."""

from __future__ import annotations

from ir.graph import Graph, Node
from lowering.kernels import attention as attention_kernel
from lowering.options import LowerOptions
from lowering.passes import is_decode


def fuse_k_write(g: Graph, opts: LowerOptions) -> Graph:
    if not is_decode(g):
        return g
    g = g.copy()
    for att in g.by_op("attention"):
        if not att.attrs.get("q_packed") or att.attrs.get("k_write") is not None:
            continue
        k_view = g[att.inputs[1]]
        kw = g[k_view.inputs[0]] if k_view.op == "kv_cache_read" else None
        if kw is None or kw.op != "kv_cache_write" or kw.attrs.get("norm_eps") is None \
                or kw.attrs.get("written_by") or kw.inputs[1] != att.inputs[0] \
                or kw.attrs.get("rope") != att.attrs.get("rope"):
            continue
        nkv, _, hd = g[kw.inputs[0]].shape
        group = int(att.attrs.get("gqa_group", 1))
        # the kernel finds the raw k row right after q in the packed row
        if kw.attrs.get("packed_offset") != nkv * group * hd or not attention_kernel.supports(hd, group, True):
            continue
        g.replace(att, Node(att.name, att.op, [*att.inputs, kw.inputs[2]], att.shape, att.dtype,
                            {**att.attrs, "k_write": {"norm_eps": kw.attrs["norm_eps"]}},
                            {**att.meta, "covers": [*att.meta.get("covers", []), *kw.meta.get("covers", [kw.name])],
                             "reason": att.meta.get("reason", "") + "; the new K row's RMSNorm, RoPE and cache "
                             f"store ride on the q prologue ({kw.name} needs no dispatch)"}))
        g.replace(kw, Node(kw.name, kw.op, kw.inputs, kw.shape, kw.dtype, {**kw.attrs, "written_by": att.name},
                           {**kw.meta, "covers": [kw.name]}))
    return g
