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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Schedule:
    """One GEMV schedule: ``ts`` row groups per workgroup (threadIdx.y), ``tr`` threads splitting
    each row's K (threadIdx.x), ``rows`` rows per thread (they share each activation load),
    ``words`` u32 words per quantized load (4: one 16-byte ``vec4<u32>`` load = a whole q4 group),
    ``depth`` K steps per iteration of the K loop whose weight loads are all issued before any of
    their math (0: the whole K loop unrolled). Partial sums meet in shared memory: a tree (log2
    ``tr`` barriers) for wide rows, else one barrier and a serial sum by one thread per row."""

    ts: int
    tr: int
    words: int = 1
    rows: int = 1
    depth: int = 0

    @property
    def tree(self) -> bool:
        return self.rows == 1 and self.tr >= 32

    @property
    def name(self) -> str:
        """``vec4-gemv(ts=2,tr=64)``; the 16-byte-load schedules add ``w4``, ``r<rows>`` and ``d<depth>``."""
        extra = "".join(f",{tag}{v}" for tag, v, default in (("w", self.words, 1), ("r", self.rows, 1),
                                                             ("d", self.depth, 0)) if v != default)
        return f"vec4-gemv(ts={self.ts},tr={self.tr}{extra})"


# Quantized weights: few threads per row (each streams many 16-byte groups), several rows per
# thread, loads issued ``depth`` steps ahead; plus two of the wide schedules above for comparison.
QUANT_SCHEDULES: tuple[Schedule, ...] = (
    Schedule(8, 16, 4, 2, 2), Schedule(16, 8, 4, 1, 4), Schedule(8, 8, 4, 2, 4), Schedule(8, 8, 4, 4, 2),
    Schedule(4, 16, 4, 4, 2), Schedule(32, 4, 4, 2, 4), Schedule(4, 32, 4, 2, 2), Schedule(8, 32, 4, 1, 4),
    Schedule(2, 64, 4), Schedule(4, 32, 4))


def schedule_list(wdtype: str) -> list[Schedule]:
    """The schedules ``runtime.tune`` chooses among for a weight of this dtype, the default first."""
    if of_dtype(wdtype).quantized:
        return list(QUANT_SCHEDULES)
    return [Schedule(ts, tr) for ts, tr in VARIANTS]


def schedules(n: int, k: int, wdtype: str, residual: bool = False, **fusions) -> list[tuple[str, Callable]]:
    """Every schedule of one GEMV as (name, builder), the default first; all are compiled into
    the module and ``runtime.tune`` picks among them on the device."""
    return [(s.name, gemv_func(n, k, wdtype, residual, s, **fusions)) for s in schedule_list(wdtype)]


def _k_blocks(steps: int, depth: int) -> tuple[int, int]:
    """(iterations, steps per iteration) of the K loop for ``steps`` steps and a wanted ``depth``
    (at least that many steps' loads in flight): a divisor of ``steps`` in ``depth .. 2 depth``
    (no masked tail), else the whole loop unrolled when it is short, else iterations of ``depth``
    steps, the few past the end masked."""
    if depth <= 0 or steps <= 3 * depth:
        near = [d for d in range(max(depth, 1), 2 * depth + 1) if steps % d == 0 and d < steps]
        return (steps // near[0], near[0]) if near and depth > 0 else (1, steps)
    near = [d for d in range(depth, 2 * depth + 1) if steps % d == 0]
    if near:
        return steps // near[0], near[0]
    return -(-steps // depth), depth


def gemv_func(n: int, k: int, wdtype: str, residual: bool, sched: Schedule, norm_eps: float | None = None,
              swiglu: bool = False, kv_cache: tuple[int, int, int] | None = None,
              segments: tuple[int, int, int] | None = None, kv_dtype: str = "float32",
              gdtype: str | None = None) -> Callable[[], object]:
    """A builder of the scheduled PrimFunc (built lazily: TVMScript parsing costs ~20 ms).

    ``wdtype``: the weights' graph dtype (float16 | float32 | q8 | q4); a quantized weight is two
    params, its codes (``W``) and its scales (``WS``), views of one buffer. ``gdtype``: the
    RMSNorm weight's dtype (never quantized; default: ``wdtype`` for float weights, else float16).

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

    K steps past the end of a row (a K loop rounded up to whole iterations) read the row's last
    element again (in bounds, cached) against a zeroed activation, so they add nothing and need no
    branch: a branch around each step would keep the compiler from hoisting its loads.
    """
    if k % 4:
        raise ValueError("vec4 GEMV needs K divisible by 4")
    ts, tr, nr = sched.ts, sched.tr, sched.rows
    if 1 << (tr.bit_length() - 1) != tr:
        raise ValueError("tr must be a power of two")
    if nr > tr and not sched.tree:
        raise ValueError("rows per thread must not exceed tr (one thread finishes each row)")
    tree = sched.tree
    levels = tr.bit_length() - 1 if tree else 0
    k4 = k // 4
    norm = norm_eps is not None
    eps = float(norm_eps or 0.0)
    nd = 1 + swiglu  # dot products per row
    to_cache = kv_cache is not None
    kvh, ctx, hd = kv_cache or (1, 1, n)
    seg = segments is not None
    n1, n2, n3 = segments or (n, n, n)
    rw, ru, rx = (WeightRead(wdtype, rows, k, sched.words) for rows in (n1, n2, n3))
    quant, unit, ku = rw.quantized, rw.unit, rw.units  # a thread's step: one data element of a row
    gdtype = gdtype or ("float16" if quant else wdtype)
    av = rw.unit_values // 4  # activation vec4s per step
    blocks, depth = _k_blocks((ku + tr - 1) // tr, sched.depth)
    masked = blocks * depth * tr != ku  # some steps fall past the row's end
    rpw = ts * nr  # rows per workgroup
    nsum, jst, lst = (1, 0, tr) if tree else (tr, rpw, 1)  # finishing sum: red[j * jst + lid * lst]
    nsum2, jst2, lst2 = (1, 0, tr) if tree else (tr, ts, 1)  # the same for the norm (one per row group)
    wa, wb, wa2, wb2 = (1, tr, 1, tr) if tree else (rpw, 1, ts, 1)  # partial of (tx, ty): red[tx * wa + ty * wb]
    csize = kvh * ctx * hd if to_cache and not seg else n
    cdtype = kv_dtype if to_cache and not seg else "float32"
    ahead = depth if sched.depth > 0 else 1  # steps whose loads go first (the wide schedules: one)
    nld = ahead * nr  # weight elements loaded ahead per thread

    def clamp(u):
        """A step's element index, kept in the row where the loop runs past its end."""
        return T.min(u, ku - 1) if masked else u

    def term(a, word, scale):
        """One step's contribution to a row: the dot product, times the group scale if quantized."""
        return rw.unit_dot(a, word) * scale if quant else rw.unit_dot(a, word)

    def build():
        @T.prim_func(private=True)
        def gemv(A: T.Buffer((1, k4), "float32x4"), W: T.Buffer((n1, ku), dtype=unit),
                 WS: T.Buffer((rw.scale_len,), "float16"), U: T.Buffer((n2, ku), dtype=unit),
                 US: T.Buffer((ru.scale_len,), "float16"), X: T.Buffer((n3, ku), dtype=unit),
                 XS: T.Buffer((rx.scale_len,), "float16"), G: T.Buffer((k4,), dtype=f"{gdtype}x4"),
                 R: T.Buffer((1, n), "float32"), C: T.Buffer((csize,), dtype=cdtype),
                 KV: T.Buffer((kvh * ctx * hd,), dtype=kv_dtype), total: T.int32):
            for bx in T.thread_binding((n + rpw - 1) // rpw, thread="blockIdx.x"):
                for ty in T.thread_binding(ts, thread="threadIdx.y"):
                    for tx in T.thread_binding(tr, thread="threadIdx.x"):
                        # one buffer per reduced value: the sync planner treats a buffer as a whole
                        red0 = T.alloc_buffer((tr * rpw,), "float32", scope="shared")
                        red1 = T.alloc_buffer((tr * rpw,), "float32", scope="shared")
                        red2 = T.alloc_buffer((tr * ts,), "float32", scope="shared")
                        acc = T.alloc_buffer((nd * nr,), "float32", scope="local")
                        ssq = T.alloc_buffer((1,), "float32", scope="local")
                        fin = T.alloc_buffer((3,), "float32", scope="local")
                        a = T.alloc_buffer((av,), "float32x4", scope="local")
                        wq = T.alloc_buffer((nld,), unit, scope="local")  # loaded ahead of the math
                        uq = T.alloc_buffer((nld,), unit, scope="local")
                        sc = T.alloc_buffer((nld,), "float32", scope="local")
                        usc = T.alloc_buffer((nld,), "float32", scope="local")
                        for r in T.unroll(nd * nr):
                            acc[r] = T.float32(0)
                        ssq[0] = T.float32(0)
                        for io in range(blocks):
                            for ib in T.unroll(depth // ahead):
                                # the weight loads of ``ahead`` steps before their math: in flight together
                                for ii in T.unroll(ahead):
                                    for r in T.unroll(nr):
                                        row = T.min(bx * rpw + ty * nr + r, n - 1)
                                        uu = clamp((io * depth + ib * ahead + ii) * tr + tx)
                                        if seg:
                                            if row < n1:
                                                wq[ii * nr + r] = W[row, uu]
                                                if quant:
                                                    sc[ii * nr + r] = rw.unit_scale(WS, row, uu)
                                            elif row < n1 + n2:
                                                wq[ii * nr + r] = U[row - n1, uu]
                                                if quant:
                                                    sc[ii * nr + r] = ru.unit_scale(US, row - n1, uu)
                                            else:
                                                wq[ii * nr + r] = X[row - n1 - n2, uu]
                                                if quant:
                                                    sc[ii * nr + r] = rx.unit_scale(XS, row - n1 - n2, uu)
                                        else:
                                            wq[ii * nr + r] = W[row, uu]
                                            if quant:
                                                sc[ii * nr + r] = rw.unit_scale(WS, row, uu)
                                        if swiglu:
                                            uq[ii * nr + r] = U[row, uu]
                                            if quant:
                                                usc[ii * nr + r] = ru.unit_scale(US, row, uu)
                                for ii in T.unroll(ahead):
                                    u = (io * depth + ib * ahead + ii) * tr + tx  # may be past the end
                                    for v in T.unroll(av):
                                        if masked:  # past the end: a zero activation (the weight load is clamped)
                                            a[v] = T.if_then_else(u < ku, A[0, clamp(u) * av + v],
                                                                  T.Broadcast(T.float32(0), 4))
                                        else:
                                            a[v] = A[0, u * av + v]
                                        if norm:
                                            ssq[0] = ssq[0] + T.call_pure_extern("float32", "dot", a[v], a[v])
                                            a[v] = a[v] * T.Cast("float32x4", G[clamp(u) * av + v])
                                    for r in T.unroll(nr):
                                        acc[r * nd] = acc[r * nd] + term(a, wq[ii * nr + r], sc[ii * nr + r])
                                        if swiglu:
                                            acc[r * nd + 1] = acc[r * nd + 1] + term(a, uq[ii * nr + r],
                                                                                     usc[ii * nr + r])
                        for r in T.unroll(nr):
                            red0[tx * wa + (ty * nr + r) * wb] = acc[r * nd]
                            if swiglu:
                                red1[tx * wa + (ty * nr + r) * wb] = acc[r * nd + 1]
                        if norm:
                            red2[tx * wa2 + ty * wb2] = ssq[0]
                        T.tvm_storage_sync("shared")
                        for s in T.unroll(levels):
                            if tx < (tr >> (s + 1)):  # unrolled by hand: no loops under a sync'd condition
                                red0[ty * tr + tx] = red0[ty * tr + tx] + red0[ty * tr + tx + (tr >> (s + 1))]
                                if swiglu:
                                    red1[ty * tr + tx] = red1[ty * tr + tx] + red1[ty * tr + tx + (tr >> (s + 1))]
                                if norm:
                                    red2[ty * tr + tx] = red2[ty * tr + tx] + red2[ty * tr + tx + (tr >> (s + 1))]
                            T.tvm_storage_sync("shared")
                        # thread lid finishes the workgroup's row lid
                        if ty * tr + tx < rpw and bx * rpw + ty * tr + tx < n:
                            fin[0] = T.float32(0)
                            fin[1] = T.float32(0)
                            fin[2] = T.float32(0)
                            for j in T.unroll(nsum):
                                fin[0] = fin[0] + red0[j * jst + (ty * tr + tx) * lst]
                                if swiglu:
                                    fin[1] = fin[1] + red1[j * jst + (ty * tr + tx) * lst]
                            if norm:
                                for j in T.unroll(nsum2):
                                    fin[2] = fin[2] + red2[j * jst2 + (ty * tr + tx) // nr * lst2]
                                fin[2] = T.rsqrt(fin[2] / T.float32(k) + T.float32(eps))
                            else:
                                fin[2] = T.float32(1)
                            fin[0] = fin[0] * fin[2]
                            if swiglu:
                                fin[0] = fin[0] / (T.float32(1) + T.exp(-fin[0])) * (fin[1] * fin[2])
                            if residual:
                                fin[0] = fin[0] + R[0, bx * rpw + ty * tr + tx]
                            if to_cache and not seg:
                                C[(bx * rpw + ty * tr + tx) // hd * ctx * hd + (total - 1) * hd
                                  + (bx * rpw + ty * tr + tx) % hd] = T.Cast(cdtype, fin[0])
                            else:
                                C[bx * rpw + ty * tr + tx] = T.Cast(cdtype, fin[0])
                            if seg and bx * rpw + ty * tr + tx >= n1 + n2:
                                KV[(bx * rpw + ty * tr + tx - n1 - n2) // hd * ctx * hd + (total - 1) * hd
                                   + (bx * rpw + ty * tr + tx - n1 - n2) % hd] = T.Cast(kv_dtype, fin[0])

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
