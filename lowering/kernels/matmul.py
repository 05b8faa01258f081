"""Matmul kernels: weight GEMV/GEMM (``x @ W.T``, W in HF [out, in] layout, optional residual
epilogue) and attention batched GEMM/GEMV reading the KV cache in place (GQA: query head ``h``
uses kv head ``h // group``; only the first ``total`` cache rows are read)."""

from __future__ import annotations

from tvm import te

from ir.graph import Graph, Node
from lowering.kernels import gemm, gemv
from lowering.kernels.common import DTYPE_BYTES, bytes_expr, dim_vars, numel_expr, placeholder, shape_key, te_shape
from lowering.kernels.quant import weight_args, weight_placeholders, weight_read
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions


def _weight_matmul(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    a, w = g[node.inputs[0]], g[node.inputs[1]]
    res = g[node.inputs[2]] if len(node.inputs) > 2 else None
    ctx = opts.max_context
    K = a.shape[1]
    rw = weight_read(w)

    def build():
        v = dim_vars(g)
        A = placeholder(a.shape, "float32", "A", v, ctx)
        ins = [A, *weight_placeholders(rw)]
        W, WS = ins[1], ins[-1]
        k = te.reduce_axis((0, K), "k")
        out = te.compute(te_shape(node.shape, v, ctx),
                         lambda i, j: te.sum(A[i, k] * rw.value(W, WS, j, k), axis=k), name="C")
        if res is not None:
            R = placeholder(res.shape, "float32", "R", v, ctx)
            acc = out
            out = te.compute(acc.shape, lambda i, j: acc[i, j] + R[i, j], name="C_res")
            ins.append(R)
        return te.create_prim_func([*ins, out])

    key = f"matmul_w:{shape_key(a)}x{shape_key(w)}" + (":res" if res is not None else "")
    moved = [a, w, node] + ([res] if res is not None else [])
    args = [a.name, *weight_args(w), *node.inputs[2:]]
    scratch, variants = [], []
    if node.attrs["kernel_class"] == "gemm" and gemm.supports(K):
        scratch, variants = gemm.schedules(w.shape[0], K, w.dtype, res is not None, rows=_split_k_rows(opts),
                                           max_bytes=opts.max_binding_bytes)
    spec = KernelSpec(key + (":splitk" if scratch else ""), node.attrs["kernel_class"], build,
                      [*args, *scratch, node.name], [len(args) + len(scratch)],
                      flops=f"2*{numel_expr(node.shape, ctx)}*{K}", bytes=bytes_expr(moved, ctx), variants=variants)
    if spec.kclass == "gemv" and a.shape[0] == 1 and K % 4 == 0:
        spec.variants = gemv.schedules(w.shape[0], K, w.dtype, res is not None)
    return spec


def _split_k_rows(opts: LowerOptions) -> int:
    """The rows split-K GEMM schedules are built for: the prefill chunk, or none (0) when only the
    default schedules are built (they are never split)."""
    return opts.prefill_chunk if opts.tuning_candidates else 0


@generator("fused_gemm")
def fused_gemm(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    """One GEMM over several weights (``gemm.schedules``): SwiGLU ``silu(x W^T) * (x U^T)``
    (``lowering.fuse_prefill_swiglu``) or packed ``[x Wq^T | x Wk^T | x Wv^T]``
    (``lowering.fuse_prefill_qkv``). Its cost counts every weight's GEMM."""
    a, *ws = (g[i] for i in node.inputs)
    K = ws[0].shape[1]
    swiglu = bool(node.attrs.get("swiglu"))
    packed = None if swiglu else tuple(w.shape[0] for w in ws)
    n = ws[0].shape[0] if swiglu else sum(packed)
    scratch, variants = gemm.schedules(n, K, ws[0].dtype, False, swiglu=swiglu, rows=_split_k_rows(opts),
                                       max_bytes=opts.max_binding_bytes, packed=packed)
    args = [a.name, *(arg for w in ws for arg in weight_args(w)), *scratch]
    mode = "swiglu" if swiglu else f"packed{list(packed)}"
    return KernelSpec(f"fused_gemm:{mode}:{shape_key(a)}x{shape_key(ws[0])}" + (":splitk" if scratch else ""), "gemm",
                      variants[0][1], [*args, node.name], [len(args)],
                      flops=f"2*{node.shape[0]}*{K * sum(w.shape[0] for w in ws)}",
                      bytes=bytes_expr([a, *ws, node], opts.max_context), variants=variants)


def _attention_matmul(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    a, view = g[node.inputs[0]], g[node.inputs[1]]
    if view.op != "kv_cache_read":
        raise ValueError(f"node {node.name}: batched matmul operand {view.name} must be a kv_cache_read")
    cache = g[view.inputs[0]]
    group = node.attrs.get("gqa_group", 1)
    qk = bool(node.attrs.get("transpose_b"))
    ctx = opts.max_context
    _, nh, M, K = a.shape

    def build():
        v = dim_vars(g)
        A = placeholder(a.shape, "float32", "A", v, ctx)
        C = placeholder(cache.shape, cache.dtype, "KV", v, ctx)
        if qk:  # scores[h, m, t] = sum_d q[h, m, d] * k[h // group, t, d]
            r = te.reduce_axis((0, K), "d")
            out = te.compute(te_shape(node.shape, v, ctx), lambda b, h, m, t: te.sum(
                A[b, h, m, r] * C[h // group, t, r].astype("float32"), axis=r), name="S")
        else:  # out[h, m, d] = sum_t p[h, m, t] * v[h // group, t, d]
            r = te.reduce_axis((0, v["total"]), "t")
            out = te.compute(te_shape(node.shape, v, ctx), lambda b, h, m, d: te.sum(
                A[b, h, m, r] * C[h // group, r, d].astype("float32"), axis=r), name="O")
        return te.create_prim_func([A, C, out])

    key = f"matmul_attn:{'qk' if qk else 'pv'}:{shape_key(a)}x{shape_key(cache)}:g{group}"
    inner = "*".join(map(str, a.shape[3:])) if qk else "total"
    kv_bytes = f"{DTYPE_BYTES[cache.dtype]}*{cache.shape[0]}*total*{cache.shape[2]}"
    return KernelSpec(key, node.attrs["kernel_class"], build, [a.name, cache.name, node.name], [2],
                      flops=f"2*{numel_expr(node.shape, ctx)}*{inner}",
                      bytes=f"{bytes_expr([a, node], ctx)} + {kv_bytes}")


@generator("matmul")
def matmul(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    if len(node.shape) == 2:
        return _weight_matmul(node, g, opts)
    return _attention_matmul(node, g, opts)
