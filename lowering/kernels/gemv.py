"""Weight GEMV ``C[0, n] = sum_k A[0, k] * W[n, k] (+ R[0, n])`` as explicitly scheduled TIR.

Why not dlight: TVM's WebGPU codegen types every storage buffer by its element, so dlight's
"vectorized" loads come out as one 2-byte load per f16 weight. Declaring the weight and the
activation as ``float16x4`` / ``float32x4`` buffers makes every load a 8/16-byte vector load, and
WGSL's ``dot`` does the 4-wide multiply-add. The schedule is a family, swept by measurement
(``python -m runtime.tune`` on the device): ``ts`` rows per workgroup (threadIdx.y), ``tr`` threads splitting
each row's K (threadIdx.x, consecutive threads read consecutive 8/16-byte vectors: coalesced),
a shared-memory tree reduction across ``tr``. Row and K tails are guarded, so any N and any K
divisible by 4 work.

Quantized weights (``q8`` / ``q4``, ``common.weight_format``) use the same loop: a thread's step
reads one u32 word of codes (4 or 8 values, one or two activation vec4s), dequantizes it in
registers and scales the word's dot product by its group's f16 scale
(``lowering.kernels.quant``); every fusion below works for every format.
"""


from collections.abc import Callable

from tvm import tirx
from tvm.script import tirx as T

from common.weight_format import of_dtype
from ir.graph import Graph, Node
from lowering.kernels.common import DTYPE_BYTES, bytes_expr
from lowering.kernels.quant import WeightRead, weight_args
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions

# (ts, tr): tried by the tuner; the first is the default where no tuning result exists.
VARIANTS: tuple[tuple[int, int], ...] = ((2, 64), (4, 32), (1, 128), (4, 64), (8, 32), (1, 256), (2, 128))
# u32 words of codes a thread loads per step of a quantized GEMV (4: one 16-byte load, 32 q4 codes)
QUANT_WORDS = (1, 4)


def variant_name(ts: int, tr: int, words: int = 1) -> str:
    return f"vec4-gemv(ts={ts},tr={tr}{f',words={words}' if words > 1 else ''})"


def schedules(n: int, k: int, wdtype: str, residual: bool = False, **fusions) -> list[tuple[str, Callable]]:
    """Every (ts, tr) schedule of one GEMV (a quantized one also per load width) as (name,
    builder), the default first; all are compiled into the module and ``runtime.tune`` picks among
    them on the device."""
    widths = QUANT_WORDS if of_dtype(wdtype).quantized else (1,)
    return [(variant_name(ts, tr, words), gemv_func(n, k, wdtype, residual, ts, tr, words=words, **fusions))
            for words in widths for ts, tr in VARIANTS]


def gemv_func(n: int, k: int, wdtype: str, residual: bool, ts: int, tr: int, norm_eps: float | None = None,
              swiglu: bool = False, kv_cache: tuple[int, int, int] | None = None,
              segments: tuple[int, int, int] | None = None, kv_dtype: str = "float32",
              gdtype: str | None = None, words: int = 1) -> Callable[[], object]:
    """A builder of the scheduled PrimFunc (built lazily: TVMScript parsing costs ~20 ms).

    ``wdtype``: the weights' graph dtype (float16 | float32 | q8 | q4); a quantized weight is two
    params, its codes (``W``) and its scales (``WS``), views of one buffer. ``gdtype``: the
    RMSNorm weight's dtype (never quantized; default: ``wdtype`` for float weights, else float16).
    ``words``: u32 words of a quantized weight one thread reads per step (a vector load).

    Fusions that ride on the same loop (decode only, see ``lowering.passes.fuse_decode_gemv``):
    ``norm_eps``: RMSNorm of the activation as a prologue: the same loads of ``A`` accumulate
    ``sum(a * a)``, the weight is multiplied by ``a * g``, and the row result is scaled by
    ``rsqrt(mean + eps)`` at the end (every workgroup recomputes the tiny norm instead of a
    separate dispatch). ``swiglu``: two weights (gate, up) read in the same loop,
    ``C = silu(A W^T) * (A U^T)``. ``kv_cache=(kv_heads, ctx, head_dim)``: ``C`` is that KV cache
    and row ``r`` is stored at ``[r // head_dim, total - 1, r % head_dim]`` (the V projection
    writes the cache itself). ``segments=(nq, nk, nv)``: rows come from three weights (W, U, X),
    the output is packed [q | k | v] and the v rows also go to the ``kv_cache`` (QKV in one dispatch).
    ``kv_dtype``: the cache's element type (rows are rounded to it once, at the store).
    """
    if k % 4:
        raise ValueError("vec4 GEMV needs K divisible by 4")
    k4 = k // 4
    levels = tr.bit_length() - 1
    if 1 << levels != tr:
        raise ValueError("tr must be a power of two")
    norm = norm_eps is not None
    eps = float(norm_eps or 0.0)
    nred = 1 + swiglu + norm  # reduced values per row: dot(s), sum of squares
    to_cache = kv_cache is not None
    kvh, ctx, hd = kv_cache or (1, 1, n)
    seg = segments is not None
    n1, n2, n3 = segments or (n, n, n)
    rw, ru, rx = (WeightRead(wdtype, rows, k, words) for rows in (n1, n2, n3))
    quant, unit, ku = rw.quantized, rw.unit, rw.units  # a thread's step: one data element of a row
    gdtype = gdtype or ("float16" if quant else wdtype)
    av = rw.unit_values // 4  # activation vec4s per step
    steps = (ku + tr - 1) // tr
    csize = kvh * ctx * hd if to_cache and not seg else n
    cdtype = kv_dtype if to_cache and not seg else "float32"

    def build():
        @T.prim_func(private=True)
        def gemv(A: T.Buffer((1, k4), "float32x4"), W: T.Buffer((n1, ku), dtype=unit),
                 WS: T.Buffer((rw.scale_len,), "float16"), U: T.Buffer((n2, ku), dtype=unit),
                 US: T.Buffer((ru.scale_len,), "float16"), X: T.Buffer((n3, ku), dtype=unit),
                 XS: T.Buffer((rx.scale_len,), "float16"), G: T.Buffer((k4,), dtype=f"{gdtype}x4"),
                 R: T.Buffer((1, n), "float32"), C: T.Buffer((csize,), dtype=cdtype),
                 KV: T.Buffer((kvh * ctx * hd,), dtype=kv_dtype), total: T.int32):
            for bx in T.thread_binding((n + ts - 1) // ts, thread="blockIdx.x"):
                for ty in T.thread_binding(ts, thread="threadIdx.y"):
                    for tx in T.thread_binding(tr, thread="threadIdx.x"):
                        # one buffer per reduced value: the sync planner treats a buffer as a whole
                        red0 = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        red1 = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        red2 = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        acc = T.alloc_buffer((max(nred, 2),), "float32", scope="local")
                        a = T.alloc_buffer((av,), "float32x4", scope="local")
                        wq = T.alloc_buffer((1,), unit if quant else "uint32", scope="local")  # words, loaded once
                        row = T.min(bx * ts + ty, n - 1)
                        acc[0] = T.float32(0)
                        if nred > 1:
                            acc[1] = T.float32(0)
                        if nred > 2:
                            acc[2] = T.float32(0)
                        for i in T.unroll(steps):
                            if ku % tr == 0 or i * tr + tx < ku:
                                for v in T.unroll(av):
                                    a[v] = A[0, (i * tr + tx) * av + v]
                                    if norm:
                                        acc[nred - 1] = acc[nred - 1] + T.call_pure_extern("float32", "dot", a[v],
                                                                                           a[v])
                                        a[v] = a[v] * T.Cast("float32x4", G[(i * tr + tx) * av + v])
                                if seg:
                                    if row < n1:
                                        if quant:
                                            wq[0] = W[row, i * tr + tx]
                                        acc[0] = acc[0] + rw.unit_dot(a, W, WS, row, i * tr + tx, wq[0])
                                    elif row < n1 + n2:
                                        if quant:
                                            wq[0] = U[row - n1, i * tr + tx]
                                        acc[0] = acc[0] + ru.unit_dot(a, U, US, row - n1, i * tr + tx, wq[0])
                                    else:
                                        if quant:
                                            wq[0] = X[row - n1 - n2, i * tr + tx]
                                        acc[0] = acc[0] + rx.unit_dot(a, X, XS, row - n1 - n2, i * tr + tx, wq[0])
                                else:
                                    if quant:
                                        wq[0] = W[row, i * tr + tx]
                                    acc[0] = acc[0] + rw.unit_dot(a, W, WS, row, i * tr + tx, wq[0])
                                if swiglu:
                                    if quant:
                                        wq[0] = U[row, i * tr + tx]
                                    acc[1] = acc[1] + ru.unit_dot(a, U, US, row, i * tr + tx, wq[0])
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
                                C[(bx * ts + ty) // hd * ctx * hd + (total - 1) * hd + (bx * ts + ty) % hd] = T.Cast(
                                    cdtype, acc[0])
                            else:
                                C[bx * ts + ty] = T.Cast(cdtype, acc[0])
                            if seg and bx * ts + ty >= n1 + n2:
                                KV[(bx * ts + ty - n1 - n2) // hd * ctx * hd + (total - 1) * hd
                                   + (bx * ts + ty - n1 - n2) % hd] = T.Cast(kv_dtype, acc[0])

        # drop the params this variant never reads (each param is a binding)
        unused = {name for name, used in (("U", swiglu or seg), ("X", seg), ("G", norm), ("R", residual),
                                          ("KV", seg), ("total", to_cache), ("WS", quant),
                                          ("US", quant and (swiglu or seg)), ("XS", quant and seg)) if not used}
        return tirx.PrimFunc([p for p in gemv.params if p.name not in unused], gemv.body, gemv.ret_type,
                             gemv.attrs)

    return build


def _args(g: Graph, names: list[str]) -> list[str]:
    """Kernel args for these operands: a quantized weight twice (codes, scales: ``WS`` after ``W``)."""
    return [a for name in names for a in weight_args(g[name])]


def _norm_dtype(g: Graph, node: Node, index: int, eps: float | None) -> str | None:
    return g[node.inputs[index]].dtype if eps is not None else None


@generator("fused_gemv")
def fused_gemv(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    w = g[node.inputs[1]]
    n, k = w.shape
    swiglu, eps, res = bool(node.attrs.get("swiglu")), node.attrs.get("norm_eps"), node.attrs.get("epilogue") == "add"
    gdtype = _norm_dtype(g, node, 2 + swiglu, eps)
    key = f"fused_gemv:{n}x{k}:{w.dtype}:swiglu{swiglu}:norm{eps}:{gdtype}:res{res}"
    variants = schedules(n, k, w.dtype, res, norm_eps=eps, swiglu=swiglu, gdtype=gdtype)
    ctx = opts.max_context
    args = _args(g, node.inputs)
    return KernelSpec(key, "gemv", variants[0][1], [*args, node.name], [len(args)],
                      flops=f"{2 * (1 + swiglu)}*{n}*{k}",
                      bytes=bytes_expr([g[i] for i in node.inputs] + [node], ctx), variants=variants)


def kv_write_gemv(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    """``kv_cache_write(cache, x, W[, norm weight])`` with attrs.gemv: the GEMV stores into the cache."""
    cache, w = g[node.inputs[0]], g[node.inputs[2]]
    n, k = w.shape
    eps = node.attrs["gemv"].get("norm_eps")
    gdtype = _norm_dtype(g, node, 3, eps)
    ctx = opts.max_context
    kv = (cache.shape[0], ctx, cache.shape[2])
    key = f"kv_write_gemv:{n}x{k}:{w.dtype}:norm{eps}:{gdtype}:{kv}:{cache.dtype}"
    variants = schedules(n, k, w.dtype, norm_eps=eps, kv_cache=kv, kv_dtype=cache.dtype, gdtype=gdtype)
    ins = node.inputs[1:]
    args = _args(g, ins)
    return KernelSpec(key, "gemv", variants[0][1], [*args, cache.name], [len(args)], flops=f"2*{n}*{k}",
                      bytes=bytes_expr([*(g[i] for i in ins)], ctx) + f" + {DTYPE_BYTES[cache.dtype]}*{n}",
                      variants=variants)


@generator("qkv_gemv")
def qkv_gemv(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    x, wq, wk, wv, _, cache = (g[i] for i in node.inputs)
    segs = (wq.shape[0], wk.shape[0], wv.shape[0])
    n, k = sum(segs), x.shape[1]
    eps = float(node.attrs["norm_eps"])
    ctx = opts.max_context
    kv = (cache.shape[0], ctx, cache.shape[2])
    gdtype = g[node.inputs[4]].dtype
    key = f"qkv_gemv:{segs}x{k}:{wq.dtype}:norm{eps}:{gdtype}:{kv}:{cache.dtype}"
    variants = schedules(n, k, wq.dtype, norm_eps=eps, kv_cache=kv, segments=segs, kv_dtype=cache.dtype,
                         gdtype=gdtype)
    # PrimFunc order: A, W (WS), U (US), X (XS), G, C (packed), KV (cache)
    args = [*_args(g, node.inputs[:5]), node.name, cache.name]
    return KernelSpec(key, "gemv", variants[0][1], args, [len(args) - 2, len(args) - 1], flops=f"2*{n}*{k}",
                      bytes=bytes_expr([x, wq, wk, wv, node], ctx) + f" + {DTYPE_BYTES[cache.dtype]}*{segs[2]}",
                      variants=variants)
