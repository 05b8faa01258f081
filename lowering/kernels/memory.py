"""Embedding gather (table possibly split into row chunks that each fit one storage binding) and
the in-place KV-cache write."""

from __future__ import annotations

from tvm import te, tirx
from tvm.script import tirx as T

from common.weight_format import of_dtype
from ir.graph import Graph, Node
from lowering.kernels.common import DTYPE_BYTES, bytes_expr, dim_vars, placeholder, shape_key, te_shape
from lowering.kernels.elementwise import rope_tables
from lowering.kernels.quant import weight_args, weight_placeholders, weight_read
from lowering.kernels.spec import KernelSpec, generator
from lowering.kernels.tir_reduce import tree_reduce
from lowering.options import LowerOptions


@generator("embedding")
def embedding(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    """Row gather; a quantized table's rows are dequantized on the fly (``lowering.kernels.quant``)."""
    ids, *chunks = (g[i] for i in node.inputs)
    reads = [weight_read(c) for c in chunks]
    ctx = opts.max_context

    def build():
        v = dim_vars(g)
        I = placeholder(ids.shape, "int32", "ids", v, ctx)
        Ts = [weight_placeholders(r, f"table{k}") for k, r in enumerate(reads)]

        def body(i, h):
            tok = I[i]
            val, off = None, sum(r.rows for r in reads)
            for t, r in reversed(list(zip(Ts, reads, strict=True))):
                off -= r.rows
                row = tirx.min(tirx.max(tok - off, 0), r.rows - 1)
                here = r.value(t[0], t[-1], row, h)
                val = here if val is None else tirx.Select(tok < off + r.rows, here, val)  # rows [off, off + rows)
            return val

        out = te.compute(te_shape(node.shape, v, ctx), body, name="E")
        return te.create_prim_func([I, *(p for t in Ts for p in t), out])

    key = f"embedding:{shape_key(node)}:{[shape_key(c) for c in chunks]}"
    args = [ids.name, *(a for c in chunks for a in weight_args(c))]
    # per token: one row of the table (codes and scales) in, one f32 row out
    row_bytes = int(of_dtype(chunks[0].dtype).row_bytes(chunks[0].shape[1]))
    return KernelSpec(key, "gather", build, [*args, node.name], [len(args)],
                      bytes=f"{bytes_expr([ids, node], ctx)} + seq*{row_bytes}")


def _kv_write_func(nkv: int, ctx: int, hd: int, cdtype: str, packed: tuple[int, int] | None):
    """TIR, not TE: the cache (of dtype ``cdtype``) is updated in place (TE can only produce
    fresh tensors). ``packed=(offset, width)``: the rows are read from a packed [seq, width]
    QKV output (else ``new`` is [seq, nkv * hd])."""
    off, width = packed or (0, nkv * hd)

    @T.prim_func(private=True, s_tir=True)
    def kv_write(cache: T.Buffer((nkv, ctx, hd), cdtype), var_new: T.handle, total: T.int32):
        seq = T.int32()
        new = T.match_buffer(var_new, (seq, width))
        for i, h, d in T.grid(seq, nkv, hd):
            with T.sblock("write"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                cache[vh, total - seq + vi, vd] = T.Cast(cdtype, new[vi, off + vh * hd + vd])

    return kv_write


def _norm_rope_write_func(nkv: int, ctx: int, hd: int, wdtype: str, cdtype: str, eps: float,
                          packed: tuple[int, int] | None):
    """K rows: RMSNorm over the head dim, rotate-half RoPE at position past + s, stored into the
    cache (dtype ``cdtype``; computed in f32, rounded once at the store). One workgroup per
    (position, kv head), one thread per element, shared-memory sum.
    ``packed=(offset, width)``: the rows are read at that offset of a packed [seq, width] q | k | v
    output (decode's packed GEMV, prefill's packed GEMM)."""
    off, width = packed or (0, nkv * hd)
    threads = 1 << (hd - 1).bit_length()
    half = hd // 2

    @T.prim_func(private=True)
    def norm_rope_write(cache: T.Buffer((nkv, ctx, hd), cdtype), var_new: T.handle,
                        W: T.Buffer((hd,), dtype=wdtype), cos: T.Buffer((ctx, half), "float32"),
                        sin: T.Buffer((ctx, half), "float32"), total: T.int32):
        seq = T.int32()
        new = T.match_buffer(var_new, (seq, width))
        for b in T.thread_binding(seq * nkv, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                xs = T.alloc_buffer((hd,), "float32", scope="shared")
                red = T.alloc_buffer((threads,), "float32", scope="shared")
                red[tx] = T.float32(0)
                if tx < hd:
                    xs[tx] = new[b // nkv, off + b % nkv * hd + tx]
                    red[tx] = xs[tx] * xs[tx]
                T.tvm_storage_sync("shared")
                tree_reduce(red, tx, threads, False)
                if tx < hd:
                    cache[b % nkv, total - seq + b // nkv, tx] = T.Cast(cdtype, T.rsqrt(
                        red[0] / T.float32(hd) + T.float32(eps)) * (
                        xs[tx] * T.Cast("float32", W[tx]) * cos[total - seq + b // nkv, tx % half]
                        + T.if_then_else(tx < half, -xs[T.min(tx + half, hd - 1)] * T.Cast("float32", W[T.min(
                            tx + half, hd - 1)]), xs[T.max(tx - half, 0)] * T.Cast("float32", W[T.max(tx - half, 0)]))
                        * sin[total - seq + b // nkv, tx % half]))

    return norm_rope_write


@generator("kv_cache_write")
def kv_cache_write(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    if node.attrs.get("gemv") is not None:
        from lowering.kernels.gemv import kv_write_gemv

        return kv_write_gemv(node, g, opts)
    cache, new = g[node.inputs[0]], g[node.inputs[1]]
    nkv, _, hd = cache.shape
    ctx = opts.max_context
    packed = None
    if node.attrs.get("packed_offset") is not None:
        packed = (int(node.attrs["packed_offset"]), int(new.shape[1]))
    if node.attrs.get("norm_eps") is not None:
        w = g[node.inputs[2]]
        eps = float(node.attrs["norm_eps"])
        consts = rope_tables(node.attrs["rope"], hd, ctx)
        build = lambda: _norm_rope_write_func(nkv, ctx, hd, w.dtype, cache.dtype, eps, packed)  # noqa: E731
        return KernelSpec(f"kv_cache_write:norm_rope:{shape_key(cache)}x{ctx}:{w.dtype}:eps{eps}:{consts[0]}:{packed}",
                          "kv_write", build, [cache.name, new.name, w.name, *consts], [0], flops=f"7*seq*{nkv}*{hd}",
                          bytes=f"4*seq*{nkv * hd} + {bytes_expr([w], ctx)} + {_row_bytes(cache)}",
                          variants=[("norm-rope-write", build)])
    # the bytes read: the rows' own values, not the whole packed row
    return KernelSpec(f"kv_cache_write:{shape_key(cache)}x{ctx}:{packed}", "kv_write",
                      lambda: _kv_write_func(nkv, ctx, hd, cache.dtype, packed), [cache.name, new.name], [0],
                      bytes=f"4*seq*{nkv * hd} + {_row_bytes(cache)}")


def _row_bytes(cache: Node) -> str:
    """Bytes the step's new rows take in the cache (the rest of the cache is not touched)."""
    return f"{DTYPE_BYTES[cache.dtype]}*seq*{cache.shape[0]}*{cache.shape[2]}"
