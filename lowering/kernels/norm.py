"""RMSNorm over the last axis (hidden states [seq, H] or per-head q/k [seq, heads, head_dim])."""

from __future__ import annotations

from tvm import te

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, dim_vars, numel_expr, placeholder, shape_key, te_shape
from lowering.kernels.spec import KernelSpec, LowerOptions, generator


@generator("rms_norm")
def rms_norm(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    x, w = g[node.inputs[0]], g[node.inputs[1]]
    D = x.shape[-1]
    eps = float(node.attrs["eps"])
    ctx = opts.max_context

    def build():
        v = dim_vars(g)
        X = placeholder(x.shape, "float32", "X", v, ctx)
        W = placeholder(w.shape, w.dtype, "W", v, ctx)
        k = te.reduce_axis((0, D), "k")
        lead = te_shape(x.shape[:-1], v, ctx)
        ss = te.compute(lead, lambda *i: te.sum(X[(*i, k)] * X[(*i, k)], axis=k), name="sumsq")
        out = te.compute(te_shape(x.shape, v, ctx), lambda *i: X[i] * te.rsqrt(ss[i[:-1]] / float(D) + eps)
                         * W[i[-1]].astype("float32"), name="Y")
        return te.create_prim_func([X, W, out])

    return KernelSpec(f"rms_norm:{shape_key(x)}:{w.dtype}:eps{eps}", "norm", build,
                      [*node.inputs, node.name], [2], flops=f"4*{numel_expr(x.shape, ctx)}",
                      bytes=bytes_expr([x, w, node], ctx))
