"""Scaled, causally masked softmax over attention scores [1, heads, seq, total].

Query row ``m`` sits at position ``past + m`` (``past = total - seq``) and may see keys
``t <= past + m``. Masked scores become the lowest finite f32 (WGSL has no -inf literal).
"""

from __future__ import annotations

from tvm import te, tirx

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, dim_vars, numel_expr, placeholder, shape_key, te_shape
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions

_LOWEST = -3.4028234663852886e38


@generator("softmax")
def softmax(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    x = g[node.inputs[0]]
    scale = float(node.attrs["scale"])
    causal = bool(node.attrs.get("causal"))
    ctx = opts.max_context

    def build():
        v = dim_vars(g)
        X = placeholder(x.shape, "float32", "X", v, ctx)
        shape = te_shape(x.shape, v, ctx)
        past = v["total"] - v["seq"]

        def scaled(b, h, m, t):
            s = X[b, h, m, t] * tirx.const(scale, "float32")
            if causal:
                s = tirx.Select(t > past + m, tirx.const(_LOWEST, "float32"), s)
            return s

        S = te.compute(shape, scaled, name="scaled")
        k1, k2 = te.reduce_axis((0, shape[3]), "t1"), te.reduce_axis((0, shape[3]), "t2")
        mx = te.compute(shape[:3], lambda b, h, m: te.max(S[b, h, m, k1], axis=k1), name="rowmax")
        E = te.compute(shape, lambda b, h, m, t: te.exp(S[b, h, m, t] - mx[b, h, m]), name="exp")
        sm = te.compute(shape[:3], lambda b, h, m: te.sum(E[b, h, m, k2], axis=k2), name="rowsum")
        out = te.compute(shape, lambda b, h, m, t: E[b, h, m, t] / sm[b, h, m], name="P")
        return te.create_prim_func([X, out])

    return KernelSpec(f"softmax:{shape_key(x)}:s{scale}:c{causal}", "softmax", build, [x.name, node.name], [1],
                      flops=f"5*{numel_expr(x.shape, ctx)}", bytes=bytes_expr([x, node], ctx))
