"""RMSNorm over the last axis (hidden states [seq, H] or per-head q/k [seq, heads, head_dim]), and
RMSNorm fused with the RoPE that follows it (Qwen3's q_norm/k_norm: one kernel instead of two)."""

from __future__ import annotations

from tvm import te

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, dim_vars, numel_expr, placeholder, shape_key, te_shape
from lowering.kernels.elementwise import rope_tables, rotate
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions


@generator("rms_norm", "rms_norm_rope")
def rms_norm(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    x, w = g[node.inputs[0]], g[node.inputs[1]]
    D = x.shape[-1]
    eps = float(node.attrs["eps"])
    ctx = opts.max_context
    rope = node.attrs.get("rope")
    consts = rope_tables(rope, D, ctx) if node.op == "rms_norm_rope" else ()

    def build():
        v = dim_vars(g)
        X = placeholder(x.shape, "float32", "X", v, ctx)
        W = placeholder(w.shape, w.dtype, "W", v, ctx)
        tables = [placeholder((ctx, D // 2), "float32", f"c{i}", v, ctx) for i in range(len(consts))]
        k = te.reduce_axis((0, D), "k")
        lead = te_shape(x.shape[:-1], v, ctx)
        ss = te.compute(lead, lambda *i: te.sum(X[(*i, k)] * X[(*i, k)], axis=k), name="sumsq")

        def normed(*i):
            return X[i] * te.rsqrt(ss[i[:-1]] / float(D) + eps) * W[i[-1]].astype("float32")

        if tables:
            out = te.compute(te_shape(x.shape, v, ctx), lambda *i: rotate(normed, *tables, v, i, D), name="Y")
            return te.create_prim_func([X, W, *tables, out, v["total"]])
        out = te.compute(te_shape(x.shape, v, ctx), normed, name="Y")
        return te.create_prim_func([X, W, out])

    key = f"{node.op}:{shape_key(x)}:{w.dtype}:eps{eps}" + (f":{rope}:{ctx}" if consts else "")
    args = [*node.inputs, *consts, node.name]
    return KernelSpec(key, "norm", build, args, [len(args) - 1], flops=f"{4 + 3 * bool(consts)}*"
                      f"{numel_expr(x.shape, ctx)}", bytes=bytes_expr([x, w, node], ctx))
