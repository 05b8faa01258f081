"""Weight GEMV ``C[0, n] = sum_k A[0, k] * W[n, k] (+ R[0, n])`` as explicitly scheduled TIR.

Why not dlight: TVM's WebGPU codegen types every storage buffer by its element, so dlight's
"vectorized" loads come out as one 2-byte load per f16 weight. Declaring the weight and the
activation as ``float16x4`` / ``float32x4`` buffers makes every load a 8/16-byte vector load, and
WGSL's ``dot`` does the 4-wide multiply-add. The schedule is a family, swept by measurement
(``python -m runtime.tune`` on the device): ``ts`` rows per workgroup (threadIdx.y), ``tr`` threads splitting
each row's K (threadIdx.x, consecutive threads read consecutive 8/16-byte vectors: coalesced),
a shared-memory tree reduction across ``tr``. Row and K tails are guarded, so any N and any K
divisible by 4 work.
"""


from collections.abc import Callable

from tvm import tirx
from tvm.script import tirx as T

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr
from lowering.kernels.spec import KernelSpec, LowerOptions, generator

# (ts, tr): tried by the tuner; the first is the default where no tuning result exists.
VARIANTS: tuple[tuple[int, int], ...] = ((2, 64), (4, 32), (1, 128), (4, 64), (8, 32), (1, 256), (2, 128))


def variant_name(ts: int, tr: int) -> str:
    return f"vec4-gemv(ts={ts},tr={tr})"


def schedules(n: int, k: int, wdtype: str, residual: bool = False, **fusions) -> list[tuple[str, Callable]]:
    """Every (ts, tr) schedule of one GEMV as (name, builder), the default first; all are compiled
    into the module and ``runtime.tune`` picks among them on the device."""
    return [(variant_name(ts, tr), gemv_func(n, k, wdtype, residual, ts, tr, **fusions)) for ts, tr in VARIANTS]


def gemv_func(n: int, k: int, wdtype: str, residual: bool, ts: int, tr: int, norm_eps: float | None = None,
              swiglu: bool = False, kv_cache: tuple[int, int, int] | None = None,
              segments: tuple[int, int, int] | None = None) -> Callable[[], object]:
    """A builder of the scheduled PrimFunc (built lazily: TVMScript parsing costs ~20 ms).

    Fusions that ride on the same loop (decode only, see ``lowering.passes.fuse_decode_gemv``):
    ``norm_eps``: RMSNorm of the activation as a prologue: the same loads of ``A`` accumulate
    ``sum(a * a)``, the weight is multiplied by ``a * g``, and the row result is scaled by
    ``rsqrt(mean + eps)`` at the end (every workgroup recomputes the tiny norm instead of a
    separate dispatch). ``swiglu``: two weights (gate, up) read in the same loop,
    ``C = silu(A W^T) * (A U^T)``. ``kv_cache=(kv_heads, ctx, head_dim)``: ``C`` is that KV cache
    and row ``r`` is stored at ``[r // head_dim, total - 1, r % head_dim]`` (the V projection
    writes the cache itself). ``segments=(nq, nk, nv)``: rows come from three weights (W, U, X),
    the output is packed [q | k | v] and the v rows also go to the ``kv_cache`` (QKV in one dispatch).
    """
    if k % 4:
        raise ValueError("vec4 GEMV needs K divisible by 4")
    k4 = k // 4
    steps = (k4 + tr - 1) // tr
    levels = tr.bit_length() - 1
    if 1 << levels != tr:
        raise ValueError("tr must be a power of two")
    wvec = f"{wdtype}x4"
    norm = norm_eps is not None
    eps = float(norm_eps or 0.0)
    nred = 1 + swiglu + norm  # reduced values per row: dot(s), sum of squares
    to_cache = kv_cache is not None
    kvh, ctx, hd = kv_cache or (1, 1, n)
    seg = segments is not None
    n1, n2, _n3 = segments or (n, n, n)
    csize = kvh * ctx * hd if to_cache and not seg else n

    def build():
        @T.prim_func(private=True)
        def gemv(A: T.Buffer((1, k4), "float32x4"), W: T.Buffer((n1, k4), dtype=wvec),
                 U: T.Buffer((n2, k4), dtype=wvec), X: T.Buffer((max(n - n1 - n2, 1), k4), dtype=wvec),
                 G: T.Buffer((k4,), dtype=wvec), R: T.Buffer((1, n), "float32"), C: T.Buffer((csize,), "float32"),
                 KV: T.Buffer((kvh * ctx * hd,), "float32"), total: T.int32):
            for bx in T.thread_binding((n + ts - 1) // ts, thread="blockIdx.x"):
                for ty in T.thread_binding(ts, thread="threadIdx.y"):
                    for tx in T.thread_binding(tr, thread="threadIdx.x"):
                        # one buffer per reduced value: the sync planner treats a buffer as a whole
                        red0 = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        red1 = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        red2 = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        acc = T.alloc_buffer((max(nred, 2),), "float32", scope="local")
                        a = T.alloc_buffer((1,), "float32x4", scope="local")
                        row = T.min(bx * ts + ty, n - 1)
                        acc[0] = T.float32(0)
                        if nred > 1:
                            acc[1] = T.float32(0)
                        if nred > 2:
                            acc[2] = T.float32(0)
                        for i in T.unroll(steps):
                            if k4 % tr == 0 or i * tr + tx < k4:
                                a[0] = A[0, i * tr + tx]
                                if norm:
                                    acc[nred - 1] = acc[nred - 1] + T.call_pure_extern("float32", "dot", a[0], a[0])
                                    a[0] = a[0] * T.Cast("float32x4", G[i * tr + tx])
                                if seg:
                                    if row < n1:
                                        acc[0] = acc[0] + T.call_pure_extern(
                                            "float32", "dot", a[0], T.Cast("float32x4", W[row, i * tr + tx]))
                                    elif row < n1 + n2:
                                        acc[0] = acc[0] + T.call_pure_extern(
                                            "float32", "dot", a[0], T.Cast("float32x4", U[row - n1, i * tr + tx]))
                                    else:
                                        acc[0] = acc[0] + T.call_pure_extern(
                                            "float32", "dot", a[0], T.Cast("float32x4", X[row - n1 - n2, i * tr + tx]))
                                else:
                                    acc[0] = acc[0] + T.call_pure_extern(
                                        "float32", "dot", a[0], T.Cast("float32x4", W[row, i * tr + tx]))
                                if swiglu:
                                    acc[1] = acc[1] + T.call_pure_extern(
                                        "float32", "dot", a[0], T.Cast("float32x4", U[row, i * tr + tx]))
                        red0[ty, tx] = acc[0]
                        if nred > 1:
                            red1[ty, tx] = acc[1]
                        if nred > 2:
                            red2[ty, tx] = acc[2]
                        T.tvm_storage_sync("shared")
                        for s in T.unroll(levels):
                            if tx < (tr >> (s + 1)):  # unrolled by hand: no loops under a sync'd condition
                                red0[ty, tx] = red0[ty, tx] + red0[ty, tx + (tr >> (s + 1))]
                                if nred > 1:
                                    red1[ty, tx] = red1[ty, tx] + red1[ty, tx + (tr >> (s + 1))]
                                if nred > 2:
                                    red2[ty, tx] = red2[ty, tx] + red2[ty, tx + (tr >> (s + 1))]
                            T.tvm_storage_sync("shared")
                        if tx == 0 and bx * ts + ty < n:
                            acc[0] = red0[ty, 0]
                            acc[1] = T.float32(1)
                            if norm:  # the sum of squares is the last reduced value
                                acc[1] = T.rsqrt((red2[ty, 0] if swiglu else red1[ty, 0]) / T.float32(k)
                                                 + T.float32(eps))
                            acc[0] = acc[0] * acc[1]
                            if swiglu:
                                acc[0] = acc[0] / (T.float32(1) + T.exp(-acc[0])) * (red1[ty, 0] * acc[1])
                            if residual:
                                acc[0] = acc[0] + R[0, bx * ts + ty]
                            if to_cache and not seg:
                                C[(bx * ts + ty) // hd * ctx * hd + (total - 1) * hd + (bx * ts + ty) % hd] = acc[0]
                            else:
                                C[bx * ts + ty] = acc[0]
                            if seg and bx * ts + ty >= n1 + n2:
                                KV[(bx * ts + ty - n1 - n2) // hd * ctx * hd + (total - 1) * hd
                                   + (bx * ts + ty - n1 - n2) % hd] = acc[0]

        # drop the params this variant never reads (each param is a binding)
        unused = {name for name, used in (("U", swiglu or seg), ("X", seg), ("G", norm), ("R", residual),
                                          ("KV", seg), ("total", to_cache)) if not used}
        return tirx.PrimFunc([p for p in gemv.params if p.name not in unused], gemv.body, gemv.ret_type,
                             gemv.attrs)

    return build


@generator("fused_gemv")
def fused_gemv(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    w = g[node.inputs[1]]
    n, k = w.shape
    swiglu, eps, res = bool(node.attrs.get("swiglu")), node.attrs.get("norm_eps"), node.attrs.get("epilogue") == "add"
    key = f"fused_gemv:{n}x{k}:{w.dtype}:swiglu{swiglu}:norm{eps}:res{res}"
    variants = schedules(n, k, w.dtype, res, norm_eps=eps, swiglu=swiglu)
    ctx = opts.max_context
    return KernelSpec(key, "gemv", variants[0][1], [*node.inputs, node.name], [len(node.inputs)],
                      flops=f"{2 * (1 + swiglu)}*{n}*{k}",
                      bytes=bytes_expr([g[i] for i in node.inputs] + [node], ctx), variants=variants)


def kv_write_gemv(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    """``kv_cache_write(cache, x, W[, norm weight])`` with attrs.gemv: the GEMV stores into the cache."""
    cache, w = g[node.inputs[0]], g[node.inputs[2]]
    n, k = w.shape
    eps = node.attrs["gemv"].get("norm_eps")
    ctx = opts.max_context
    kv = (cache.shape[0], ctx, cache.shape[2])
    key = f"kv_write_gemv:{n}x{k}:{w.dtype}:norm{eps}:{kv}"
    variants = schedules(n, k, w.dtype, norm_eps=eps, kv_cache=kv)
    ins = node.inputs[1:]
    return KernelSpec(key, "gemv", variants[0][1], [*ins, cache.name], [len(ins)], flops=f"2*{n}*{k}",
                      bytes=bytes_expr([*(g[i] for i in ins)], ctx) + f" + 4*{n}", variants=variants)


@generator("qkv_gemv")
def qkv_gemv(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    x, wq, wk, wv, _, cache = (g[i] for i in node.inputs)
    segs = (wq.shape[0], wk.shape[0], wv.shape[0])
    n, k = sum(segs), x.shape[1]
    eps = float(node.attrs["norm_eps"])
    ctx = opts.max_context
    kv = (cache.shape[0], ctx, cache.shape[2])
    key = f"qkv_gemv:{segs}x{k}:{wq.dtype}:norm{eps}:{kv}"
    variants = schedules(n, k, wq.dtype, norm_eps=eps, kv_cache=kv, segments=segs)
    # PrimFunc order: A, W, U, X, G, C (packed), KV (cache)
    args = [x.name, wq.name, wk.name, wv.name, node.inputs[4], node.name, cache.name]
    return KernelSpec(key, "gemv", variants[0][1], args, [5, 6], flops=f"2*{n}*{k}",
                      bytes=bytes_expr([x, wq, wk, wv, node], ctx) + f" + 4*{segs[2]}", variants=variants)
