"""Embedding gather (table possibly split into row chunks that each fit one storage binding) and
the in-place KV-cache write."""

from __future__ import annotations

from tvm import te, tirx
from tvm.script import tirx as T

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, dim_vars, placeholder, shape_key, te_shape
from lowering.kernels.spec import KernelSpec, LowerOptions, generator


@generator("embedding")
def embedding(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    ids, *chunks = (g[i] for i in node.inputs)
    rows = [c.shape[0] for c in chunks]
    ctx = opts.max_context

    def build():
        v = dim_vars(g)
        I = placeholder(ids.shape, "int32", "ids", v, ctx)
        Ts = [placeholder(c.shape, c.dtype, f"table{k}", v, ctx) for k, c in enumerate(chunks)]

        def body(i, h):
            tok = I[i]
            val, off = None, sum(rows)
            for t, r in reversed(list(zip(Ts, rows, strict=True))):
                off -= r
                row = tirx.min(tirx.max(tok - off, 0), r - 1)
                here = t[row, h].astype("float32")
                val = here if val is None else tirx.Select(tok >= off, here, val)
            return val

        out = te.compute(te_shape(node.shape, v, ctx), body, name="E")
        return te.create_prim_func([I, *Ts, out])

    key = f"embedding:{shape_key(node)}:{[shape_key(c) for c in chunks]}"
    return KernelSpec(key, "gather", build, [*node.inputs, node.name], [len(node.inputs)],
                      bytes=bytes_expr([ids, node, node], ctx))


def _kv_write_func(nkv: int, ctx: int, hd: int):
    """TIR, not TE: the cache is updated in place (TE can only produce fresh tensors)."""

    @T.prim_func(private=True, s_tir=True)
    def kv_write(cache: T.Buffer((nkv, ctx, hd), "float32"), var_new: T.handle, total: T.int32):
        seq = T.int32()
        new = T.match_buffer(var_new, (seq, nkv, hd))
        for i, h, d in T.grid(seq, nkv, hd):
            with T.sblock("write"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                cache[vh, total - seq + vi, vd] = new[vi, vh, vd]

    return kv_write


@generator("kv_cache_write")
def kv_cache_write(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    cache, new = g[node.inputs[0]], g[node.inputs[1]]
    nkv, _, hd = cache.shape
    ctx = opts.max_context
    return KernelSpec(f"kv_cache_write:{nkv}x{ctx}x{hd}", "kv_write", lambda: _kv_write_func(nkv, ctx, hd),
                      [cache.name, new.name], [0], bytes=bytes_expr([new, new], ctx))
