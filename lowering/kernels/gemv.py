"""Weight GEMV ``C[0, n] = sum_k A[0, k] * W[n, k] (+ R[0, n])`` as explicitly scheduled TIR.

Why not dlight: TVM's WebGPU codegen types every storage buffer by its element, so dlight's
"vectorized" loads come out as one 2-byte load per f16 weight. Declaring the weight and the
activation as ``float16x4`` / ``float32x4`` buffers makes every load a 8/16-byte vector load, and
WGSL's ``dot`` does the 4-wide multiply-add. The schedule is a family, swept by measurement
(``python -m runtime.tune`` on the device, ``Schedule``): ``ts`` row groups per workgroup
(threadIdx.y), ``tr`` threads splitting each row's K (threadIdx.x, consecutive threads read
consecutive 8/16-byte vectors: coalesced), partial sums combined in shared memory. Row and K
tails are clamped and masked, so any N and any K divisible by 4 work.

Quantized weights (``q8`` / ``q4``, ``common.weight_format``) use the same loop with 16-byte
loads (``vec4<u32>``: a whole q4 group of 32 codes, half a q8 group), dequantized in registers by
``lowering.kernels.quant``, each load's dot product scaled once by its group's f16 scale. Their
own schedules (``QUANT_SCHEDULES``), because a q4 row is 3.6x shorter than an f16 one: with the
wide float schedules (64-256 threads per row) each thread made one or two loads before a
log2(tr)-barrier reduction (the likely cause of 743 GB/s of packed bytes on the H200 vs 2137 for
f16: per-thread work too small to hide latency and the reduction). Here few threads
share a row (4-32), each thread owns ``rows`` rows (one activation load feeds them all) and
issues the loads of ``depth`` steps before their math (several independent 16-byte loads in
flight per thread), and ``span`` 2 reads two adjacent elements per step (a q4 thread's two scales
in one 4-byte load). Float weights have the wide schedules and, from the same machinery, ones
with two rows per thread, a ``depth`` K loop instead of the fully unrolled one, and span 2
(``FLOAT_SCHEDULES``). Every fusion below works for every format and schedule.
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
    their math (0: the whole K loop unrolled), ``span`` adjacent 16-byte loads per row and step
    (2: a q4 thread reads its two groups' scales as one ``vec2<f16>``, a q8 thread a whole group
    and one scale; for a float weight two adjacent vec4s, 16 bytes of f16 per row and step). Partial
    sums meet in shared memory: a tree (log2 ``tr`` barriers) for wide rows (``tr`` >= 32 with one
    row per thread, >= 64 with two), else one barrier and a serial sum by one thread per row."""

    ts: int
    tr: int
    words: int = 1
    rows: int = 1
    depth: int = 0
    span: int = 1

    @property
    def tree(self) -> bool:
        return (self.rows == 1 and self.tr >= 32) or (self.rows == 2 and self.tr >= 64)

    @property
    def name(self) -> str:
        """``vec4-gemv(ts=2,tr=64)``; the 16-byte-load schedules add ``w4``, ``r<rows>``, ``d<depth>``
        and ``s<span>``."""
        extra = "".join(f",{tag}{v}" for tag, v, default in (("w", self.words, 1), ("r", self.rows, 1),
                                                             ("d", self.depth, 0), ("s", self.span, 1))
                        if v != default)
        return f"vec4-gemv(ts={self.ts},tr={self.tr}{extra})"


# Quantized weights: few threads per row (each streams many 16-byte groups), several rows per
# thread, loads issued ``depth`` steps ahead; 4 to 64 rows per workgroup (a 2560-row GEMV has only
# 160 workgroups of 16 rows for 132 SMs: unbalanced; a 150k-row lm_head has plenty); plus two of
# the wide schedules above (the previous family) for comparison; then 1-2 rows per workgroup for
# small N.
QUANT_SCHEDULES: tuple[Schedule, ...] = (
    Schedule(8, 16, 4, 2, 2), Schedule(16, 8, 4, 1, 4), Schedule(8, 8, 4, 2, 4), Schedule(8, 8, 4, 4, 2),
    Schedule(4, 16, 4, 4, 2), Schedule(32, 4, 4, 2, 4), Schedule(4, 32, 4, 2, 2), Schedule(8, 32, 4, 1, 4),
    Schedule(4, 16, 4, 1, 4), Schedule(8, 16, 4, 2, 1, 2), Schedule(16, 8, 4, 1, 2, 2),
    Schedule(2, 64, 4), Schedule(4, 32, 4),
    # small N (the 0.6B shapes: N 1024..4096, K 1024..3072): 1-2 rows per workgroup, so N=1024 is
    # 512-1024 workgroups on 132 SMs instead of 64-128; each thread one 16-byte group per row and
    # step, two steps' loads in flight
    Schedule(1, 32, 4, 1, 2), Schedule(1, 64, 4, 1, 2), Schedule(2, 16, 4, 1, 2, 2),
    # one u32 word (8 q4 / 4 q8 codes) per thread and step, the wide schedules: the shape of the
    # previous quantized GEMV, which ran the 4B q4 decode at 178 tok/s on the H200 where the
    # 16-byte schedules above measured 100-700 GB/s in runtime.tune (146 tok/s): kept as
    # candidates until the tuner shows which wins where
    Schedule(2, 64), Schedule(4, 32), Schedule(1, 128), Schedule(4, 64))


# Float weights: the wide schedules above (the whole K loop unrolled, one row per thread; the
# first stays the default), then ones with the 16-byte-load machinery, for the 4B decode shapes
# (K 2560..9728, N 2560..19456 and the lm_head's chunks): two rows per thread share each activation
# load (half the activation traffic and its L1 pressure per weight byte), a K loop of ``depth``
# steps (4: eight vec4 loads in flight per thread with two rows) instead of 38 unrolled steps for
# K=9728 at tr=64, and span 2 (two adjacent f16 vec4s: 16 bytes per row and step).
FLOAT_SCHEDULES: tuple[Schedule, ...] = (
    *(Schedule(ts, tr) for ts, tr in VARIANTS),
    Schedule(2, 64, rows=2, depth=4),   # 4 rows/workgroup: 640 workgroups for N=2560 (o, down)
    Schedule(1, 128, rows=2, depth=4),  # 2 rows/workgroup, long K (down: 19 steps -> 5 x 4)
    Schedule(4, 64, rows=2, depth=2),   # 8 rows/workgroup, 256 threads: wide N (qkv, gate/up, lm_head)
    Schedule(2, 64, depth=4, span=2),   # 16-byte f16 steps, one row per thread
    Schedule(2, 128, depth=4),          # (2, 128) with a K loop instead of full unrolling for long K
)


def schedule_list(wdtype: str) -> list[Schedule]:
    """The schedules ``runtime.tune`` chooses among for a weight of this dtype, the default first."""
    if of_dtype(wdtype).quantized:
        return list(QUANT_SCHEDULES)
    return list(FLOAT_SCHEDULES)


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
    element and its activation again (in bounds, cached) and multiply their contribution by 0, so
    they need no branch: a branch around each step would keep the compiler from hoisting its loads.
    """
    if k % 4:
        raise ValueError("vec4 GEMV needs K divisible by 4")
    ts, tr, nr = sched.ts, sched.tr, sched.rows
    if 1 << (tr.bit_length() - 1) != tr:
        raise ValueError("tr must be a power of two")
    if nr > tr:
        raise ValueError("rows per thread must not exceed tr (one thread finishes each row)")
    span = sched.span
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
    if span > 1 and not (span == 2 and (not quant or sched.words == 4)):
        raise ValueError("span 2 is for float vec4 or quantized 16-byte loads")
    av = rw.unit_values // 4  # activation vec4s per data element
    blocks, depth = _k_blocks((ku + tr * span - 1) // (tr * span), sched.depth)
    masked = blocks * depth * tr * span != ku  # some elements fall past the row's end
    # span 2: q4's two groups' scales as one vec2<f16> (a row's scale count must be even to keep
    # the pairs aligned), q8's two halves of one group share one scale
    pair = span == 2 and rw.fmt.bits == 4 and ku % 2 == 0
    sstride = 0 if span == 2 and rw.fmt.bits == 8 else 1  # scale slot step per element
    sdtype, sdiv = ("float16x2", 2) if pair else ("float16", 1)
    rpw = ts * nr  # rows per workgroup
    nsum, jst, lst = (1, 0, tr) if tree else (tr, rpw, 1)  # finishing sum: red[j * jst + lid * lst]
    nsum2, jst2, lst2 = (1, 0, tr) if tree else (tr, ts, 1)  # the same for the norm (one per row group)
    wa, wb, wa2, wb2 = (1, tr, 1, tr) if tree else (rpw, 1, ts, 1)  # partial of (tx, ty): red[tx * wa + ty * wb]
    csize = kvh * ctx * hd if to_cache and not seg else n
    cdtype = kv_dtype if to_cache and not seg else "float32"
    ahead = depth if sched.depth > 0 else 1  # steps whose loads go first (the wide schedules: one)
    nld = ahead * nr * span  # weight elements loaded ahead per thread

    def clamp(u):
        """An element index, kept in the row where the loop runs past its end."""
        return T.min(u, ku - 1) if masked else u

    def live(x, u):
        """``x``, or 0 for an element ``u`` past the row's end (a multiply, not a branch or a
        ``select``: TVM turns a ``select`` around a load into a branch)."""
        return x * T.Cast("float32", u < ku) if masked else x

    def term(a, base, word, scale, u):
        """Element ``u``'s contribution to a row: the dot product (times the group scale if quantized)."""
        return live(rw.unit_dot(a, word, base) * scale if quant else rw.unit_dot(a, word, base), u)

    @T.macro
    def load(Wb, Sb, rd, rrow, wbuf, sbuf, slot, e0):
        """The ``span`` elements of row ``rrow`` from ``e0`` and their scales into slot ``slot``."""
        for j in T.unroll(span):
            wbuf[slot * span + j] = Wb[rrow, clamp(e0 + j)]
        if quant:
            if pair:
                both = T.Cast("float32x2", Sb[rd.pair_index(rrow, clamp(e0))])  # one 4-byte load
                sbuf[slot * span] = T.Shuffle([both], [0])
                sbuf[slot * span + 1] = T.Shuffle([both], [1])
            else:
                for j in T.unroll(1 + (span - 1) * sstride):
                    sbuf[slot * span + j] = rd.unit_scale(Sb, rrow, clamp(e0 + j))

    def build():
        @T.prim_func(private=True)
        def gemv(A: T.Buffer((1, k4), "float32x4"), W: T.Buffer((n1, ku), dtype=unit),
                 WS: T.Buffer((rw.scale_len // sdiv,), sdtype), U: T.Buffer((n2, ku), dtype=unit),
                 US: T.Buffer((ru.scale_len // sdiv,), sdtype), X: T.Buffer((n3, ku), dtype=unit),
                 XS: T.Buffer((rx.scale_len // sdiv,), sdtype), G: T.Buffer((k4,), dtype=f"{gdtype}x4"),
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
                        a = T.alloc_buffer((av * span,), "float32x4", scope="local")
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
                                        e0 = ((io * depth + ib * ahead + ii) * tr + tx) * span
                                        if seg:
                                            if row < n1:
                                                load(W, WS, rw, row, wq, sc, ii * nr + r, e0)
                                            elif row < n1 + n2:
                                                load(U, US, ru, row - n1, wq, sc, ii * nr + r, e0)
                                            else:
                                                load(X, XS, rx, row - n1 - n2, wq, sc, ii * nr + r, e0)
                                        else:
                                            load(W, WS, rw, row, wq, sc, ii * nr + r, e0)
                                        if swiglu:
                                            load(U, US, ru, row, uq, usc, ii * nr + r, e0)
                                for ii in T.unroll(ahead):
                                    for j in T.unroll(span):
                                        u = ((io * depth + ib * ahead + ii) * tr + tx) * span + j  # may be past the end
                                        for v in T.unroll(av):
                                            a[j * av + v] = A[0, clamp(u) * av + v]
                                            if norm:
                                                ssq[0] = ssq[0] + live(T.call_pure_extern(
                                                    "float32", "dot", a[j * av + v], a[j * av + v]), u)
                                                a[j * av + v] = a[j * av + v] * T.Cast("float32x4",
                                                                                       G[clamp(u) * av + v])
                                    for r in T.unroll(nr):
                                        for j in T.unroll(span):
                                            acc[r * nd] = acc[r * nd] + term(
                                                a, j * av, wq[(ii * nr + r) * span + j],
                                                sc[(ii * nr + r) * span + j * sstride],
                                                ((io * depth + ib * ahead + ii) * tr + tx) * span + j)
                                            if swiglu:
                                                acc[r * nd + 1] = acc[r * nd + 1] + term(
                                                    a, j * av, uq[(ii * nr + r) * span + j],
                                                    usc[(ii * nr + r) * span + j * sstride],
                                                    ((io * depth + ib * ahead + ii) * tr + tx) * span + j)
                        for r in T.unroll(nr):
                            red0[tx * wa + (ty * nr + r) * wb] = acc[r * nd]
                            if swiglu:
                                red1[tx * wa + (ty * nr + r) * wb] = acc[r * nd + 1]
                        if norm:
                            red2[tx * wa2 + ty * wb2] = ssq[0]
                        T.tvm_storage_sync("shared")
                        for s in T.unroll(levels):
                            if nr == 1:
                                if tx < (tr >> (s + 1)):  # unrolled by hand: no loops under a sync'd condition
                                    red0[ty * tr + tx] = red0[ty * tr + tx] + red0[ty * tr + tx + (tr >> (s + 1))]
                                    if swiglu:
                                        red1[ty * tr + tx] = red1[ty * tr + tx] + red1[ty * tr + tx + (tr >> (s + 1))]
                                    if norm:
                                        red2[ty * tr + tx] = red2[ty * tr + tx] + red2[ty * tr + tx + (tr >> (s + 1))]
                            else:
                                # two rows per thread: thread p = ty * tr + tx adds pair p of the level's
                                # rpw * half pairs (row p // half at red0[row * tr ..]): ts * tr pairs at most
                                if ty * tr + tx < rpw * (tr >> (s + 1)):
                                    red0[(ty * tr + tx) // (tr >> (s + 1)) * tr + (ty * tr + tx) % (tr >> (s + 1))] = (
                                        red0[(ty * tr + tx) // (tr >> (s + 1)) * tr + (ty * tr + tx) % (tr >> (s + 1))]
                                        + red0[(ty * tr + tx) // (tr >> (s + 1)) * tr + (ty * tr + tx) % (tr >> (s + 1))
                                               + (tr >> (s + 1))])
                                    if swiglu:
                                        red1[(ty * tr + tx) // (tr >> (s + 1)) * tr
                                             + (ty * tr + tx) % (tr >> (s + 1))] = (
                                            red1[(ty * tr + tx) // (tr >> (s + 1)) * tr
                                                 + (ty * tr + tx) % (tr >> (s + 1))]
                                            + red1[(ty * tr + tx) // (tr >> (s + 1)) * tr
                                                   + (ty * tr + tx) % (tr >> (s + 1)) + (tr >> (s + 1))])
                                if norm:  # one sum of squares per row group
                                    if tx < (tr >> (s + 1)):
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
