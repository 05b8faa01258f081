"""Weight GEMV ``C[0, n] = sum_k A[0, k] * W[n, k] (+ R[0, n])`` as explicitly scheduled TIR.

Why not dlight: TVM's WebGPU codegen types every storage buffer by its element, so dlight's
"vectorized" loads come out as one 2-byte load per f16 weight. Declaring the weight and the
activation as ``float16x4`` / ``float32x4`` buffers makes every load a 8/16-byte vector load, and
WGSL's ``dot`` does the 4-wide multiply-add. The schedule is a family, swept by measurement
(``python -m runtime.tune`` on the device, ``Schedule``): ``ts`` row groups per workgroup
(threadIdx.y), ``tr`` threads splitting each row's K (threadIdx.x, consecutive threads read
consecutive 8/16-byte vectors: coalesced), partial sums combined in shared memory. Row and K
tails are clamped and masked, so any N and any K divisible by 4 work.

Quantized weights (``q8`` / ``q4``, ``common.weight_format``) are dequantized in registers by
``lowering.kernels.quant`` (an AND-OR and an exact FMA per code, no shifts or int -> float
conversions), each element's dot product scaled once by its group's f16 scale, and have their own
schedules (``QUANT_SCHEDULES``): per weight byte a q4 row needs 8 bytes of f32 activations (q8: 4),
so how the activations reach the threads decides their speed. Two families: *staged* (``stage``):
the workgroup stages the activations (times the norm weight) in shared memory once, in the order
the dequantization consumes them (planes: the 4 activations of one code position of a 16-byte
element's 4 words, read by consecutive threads as consecutive vec4s, conflict-free), then each
thread streams 16-byte loads (``words`` 4: a q4 group, half a q8 one) of ``rows`` rows that share
each plane read; when K fits in shared memory, all of a thread's loads are in flight while the
activations are staged, with one barrier in all. *Word* schedules (``words`` 1): consecutive
threads read consecutive u32 words and their activation vec4s (coalesced), ``rows`` rows per
thread sharing them, ``depth`` steps' loads in flight. Float weights have the wide schedules and,
from the same machinery, ones with two rows per thread, a ``depth`` K loop instead of the fully
unrolled one, and span 2 (``FLOAT_SCHEDULES``). Every fusion below works for every format and schedule.
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
from lowering.kernels.tir_reduce import tree_reduce
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
    and one scale; for a float weight two adjacent vec4s, 16 bytes of f16 per row and step), ``stage``
    (quantized 16-byte loads): the activations staged in shared memory, once per workgroup, in the
    order the dequantization consumes them (``gemv_func``). Partial sums meet in shared memory: a
    tree (log2 ``tr`` barriers) for wide rows (``tr`` >= 32 with one row per thread, >= 64 with
    two), else one barrier and a serial sum by one thread per row."""

    ts: int
    tr: int
    words: int = 1
    rows: int = 1
    depth: int = 0
    span: int = 1
    stage: bool = False

    @property
    def tree(self) -> bool:
        return (self.rows == 1 and self.tr >= 32) or (self.rows == 2 and self.tr >= 64)

    @property
    def name(self) -> str:
        """``vec4-gemv(ts=2,tr=64)``; the 16-byte-load schedules add ``w4``, ``r<rows>``, ``d<depth>``
        and ``s<span>``, the staged ones ``smem``."""
        extra = "".join(f",{tag}{v}" for tag, v, default in (("w", self.words, 1), ("r", self.rows, 1),
                                                             ("d", self.depth, 0), ("s", self.span, 1))
                        if v != default)
        return f"vec4-gemv(ts={self.ts},tr={self.tr}{extra}{',smem' if self.stage else ''})"


# Quantized weights. Per weight byte a q4 row needs 8 bytes of f32 activations (q8: 4), so what
# bounds these GEMVs is how activations reach the threads, not the weight stream: the 16-byte
# schedules that read them from global memory per thread (8 strided vec4 loads per group, a whole
# 128-byte line per thread: 100-700 GB/s on the H200) are gone but one; the wide one-word ones
# (743 GB/s) stay for comparison. New:
QUANT_SCHEDULES: tuple[Schedule, ...] = (
    # staged (``smem``): the workgroup stages the activations (times the norm weight) in shared
    # memory once, as planes read conflict-free (consecutive threads, consecutive vec4s) with no
    # register gather; 16-byte weight loads (a whole q4 group, half a q8 one: 5 registers per 16
    # bytes in flight with the scale), 2-4 rows per thread sharing each plane read; when K fits (up
    # to 4096), all of a thread's loads (up to 20) are in flight while the activations are staged,
    # one barrier in all. Rows / threads per workgroup:
    Schedule(4, 16, 4, 2, 2, stage=True),  # 8 / 64 (the default)
    Schedule(2, 16, 4, 2, 2, stage=True),  # 4 / 32: N 1024-2560 (0.6B; 4B o, down) in 256-640 workgroups
    Schedule(2, 16, 4, 4, 2, stage=True),  # 8 / 32, 4 rows per thread
    Schedule(4, 16, 4, 4, 2, stage=True),  # 16 / 64: fewer workgroups staging the same activations
    Schedule(4, 8, 4, 4, 2, stage=True),   # 16 / 32, 8 threads per row: more of K per thread
    Schedule(2, 32, 4, 2, 2, stage=True),  # 4 / 64, 32 threads per row (q8 rows are twice as long)
    # one u32 word per row and step: consecutive threads read consecutive words and their
    # activation vec4s (coalesced, from L1), 2-8 rows per thread share them, 2-4 steps in flight
    Schedule(2, 32, 1, 4, 4), Schedule(1, 64, 1, 4, 4), Schedule(4, 32, 1, 2, 4), Schedule(2, 32, 1, 8, 2),
    # the previous families, for comparison: the wide one-word ones (the 4B q4 decode at 178
    # tok/s), the previous default, a small-N 16-byte one
    Schedule(2, 64), Schedule(4, 32), Schedule(1, 128), Schedule(8, 16, 4, 2, 2), Schedule(1, 32, 4, 1, 2))


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


# Shared memory of a staged GEMV: double-buffered chunks within WebGPU's default
# maxComputeWorkgroupStorageSize; a K staged all at once may take a little more (K = 4096, the
# 4B o_proj and most 8B GEMVs, in one chunk: 16 KiB of activations; lavapipe has 32 KiB, GPUs more)
STAGE_BYTES = 16384
STAGE_ONCE_BYTES = 20480


def _staged_blocks(steps: int, depth: int, step_bytes: int, other_bytes: int, loads: int) -> tuple[int, int, int]:
    """(chunks, sub-blocks per chunk, steps per sub-block) of a staged K loop of ``steps`` steps
    (``loads`` weight elements per step, ``step_bytes`` of activations, ``other_bytes`` of shared
    memory besides). A sub-block's weight loads are issued together, at most 20 elements
    (registers). When all of K fits (``STAGE_ONCE_BYTES``), one chunk: the first sub-block's loads
    (as many steps as divide ``steps``: no masked step) are in flight while the activations are
    staged, one barrier, the rest straight-line. Else double-buffered chunks (one barrier each) of
    sub-blocks of ``depth`` steps, a chunk count near the fewest that leaves no sub-block wholly past
    the row's end."""
    most = max(1, 20 // loads)
    if steps * step_bytes + other_bytes <= STAGE_ONCE_BYTES:
        ahead = max(a for a in range(1, most + 1) if steps % a == 0)
        return 1, steps // ahead, ahead
    ahead = max(1, min(depth, most, (STAGE_BYTES - other_bytes) // (2 * step_bytes)))
    subs = -(-steps // ahead)
    per = (STAGE_BYTES - other_bytes) // (2 * ahead * step_bytes)
    if per < 1:
        raise ValueError(f"a staged chunk of {ahead * step_bytes} bytes does not fit in {STAGE_BYTES}")
    fewest = -(-subs // per)
    chunks = next((c for c in range(fewest, fewest + 3) if subs % c == 0), fewest)
    return chunks, -(-subs // chunks), ahead


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

    ``sched.stage`` (quantized 16-byte loads): K in chunks whose activations the workgroup stages
    in shared memory (``stage``: each thread loads whole vec4s and stores their 4x4 transpose as
    planes, zeros past the row's end, so the clamped weights there add nothing), one barrier per
    chunk (two buffers alternate when there are several), each chunk's first weight loads issued
    before its staging (``_staged_blocks``). The norm's sum of squares is then the workgroup's.
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
    staged = sched.stage
    nt = ts * tr  # threads
    planes = rw.fmt.per_word  # staged: activation planes per element (code position q of its 4 words)
    halves = planes // 4  # staged: activation vec4s of one word
    subs = upt = units = 1
    if staged:
        if not (quant and sched.words == 4 and span == 1):
            raise ValueError("staged activations are for quantized 16-byte loads (words 4, span 1)")
        # K in sub-blocks of ``ahead`` steps (their weight loads issued together), sub-blocks in chunks
        # of ``depth`` steps whose activations are staged at once (one barrier per chunk)
        blocks, subs, ahead = _staged_blocks((ku + tr - 1) // tr, sched.depth, tr * rw.unit_values * 4,
                                             4 * (tr * rpw * nd + nt * norm), nr * nd)
        depth = subs * ahead
        masked = blocks * depth * tr != ku
        units = tr * depth * halves  # staging units per chunk: (element, half of its words' codes)
        upt = (units + nt - 1) // nt
    ce = tr * depth  # staged: elements per chunk
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

    @T.macro
    def load_rows(W, WS, U, US, X, XS, wq, sc, uq, usc, bx, ty, tx, e_base):
        """The weight loads of ``ahead`` steps from element ``e_base`` (``tr`` threads per step, ``span``
        elements each) of the thread's ``nr`` rows: issued together, before their math."""
        for ii in T.unroll(ahead):
            for r in T.unroll(nr):
                row = T.min(bx * rpw + ty * nr + r, n - 1)
                e0 = e_base + (ii * tr + tx) * span
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

    @T.macro
    def stage(A, G, sbuf, sv, ssq, lid, io):
        """Chunk ``io``'s activations (times the norm weight) into shared ``sbuf`` as planes: unit
        ``(el, h)`` of the chunk reads the vec4s ``j halves + h`` (j = 0..3) of element ``el``,
        and stores their transpose, plane ``4 h + c`` = component ``c`` of the 4 vec4s (the
        activations of code position ``4 h + c`` of the element's 4 words). Past the row's end: zeros
        (so the weights there, clamped in bounds, add nothing)."""
        for m in T.unroll(upt):
            if units % nt == 0 or lid + m * nt < units:
                for j in T.unroll(4):
                    sv[j] = A[0, clamp(io * ce + (lid + m * nt) // halves) * av + j * halves
                              + (lid + m * nt) % halves]
                    if masked:
                        sv[j] = sv[j] * T.Cast("float32", io * ce + (lid + m * nt) // halves < ku)
                    if norm:
                        ssq[0] = ssq[0] + T.call_pure_extern("float32", "dot", sv[j], sv[j])
                        sv[j] = sv[j] * T.Cast("float32x4", G[clamp(io * ce + (lid + m * nt) // halves) * av
                                                             + j * halves + (lid + m * nt) % halves])
                for c in T.unroll(4):
                    sbuf[((lid + m * nt) % halves * 4 + c) * ce + (lid + m * nt) // halves] = T.Shuffle(
                        [sv[0], sv[1], sv[2], sv[3]], [c, 4 + c, 8 + c, 12 + c])

    @T.macro
    def compute_staged(sbuf, aq, wq, sc, uq, usc, acc, tx, el_base):
        """The math of ``ahead`` steps from chunk element ``el_base``: each element's activation
        planes from shared memory (conflict-free: consecutive threads, consecutive vec4s), shared
        by the thread's rows."""
        for ii in T.unroll(ahead):
            for q in T.unroll(planes):
                aq[q] = sbuf[q * ce + el_base + ii * tr + tx]
            for r in T.unroll(nr):
                acc[r * nd] = acc[r * nd] + rw.plane_dot(aq, wq[ii * nr + r]) * sc[ii * nr + r]
                if swiglu:
                    acc[r * nd + 1] = acc[r * nd + 1] + ru.plane_dot(aq, uq[ii * nr + r]) * usc[ii * nr + r]

    @T.macro
    def chunk(A, G, W, WS, U, US, X, XS, sbuf, sv, aq, wq, sc, uq, usc, acc, ssq, bx, ty, tx, io):
        """One staged chunk: the first sub-block's weight loads, then the staging and its barrier
        (the loads in flight meanwhile), then the math, the later sub-blocks' loads and math."""
        for ib in T.unroll(subs):
            load_rows(W, WS, U, US, X, XS, wq, sc, uq, usc, bx, ty, tx, io * ce + ib * ahead * tr)
            if ib == 0:  # unrolled: no barrier under a condition is left
                stage(A, G, sbuf, sv, ssq, ty * tr + tx, io)
                T.tvm_storage_sync("shared")
            compute_staged(sbuf, aq, wq, sc, uq, usc, acc, tx, ib * ahead * tr)

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
                        # staged activations, double-buffered when there are several chunks
                        sa0 = T.alloc_buffer((planes * ce,), "float32x4", scope="shared")
                        sa1 = T.alloc_buffer((planes * ce,), "float32x4", scope="shared")
                        sv = T.alloc_buffer((4,), "float32x4", scope="local")
                        aq = T.alloc_buffer((planes,), "float32x4", scope="local")
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
                        if staged:
                            # touched before the K loop so that their lifetimes overlap the staging
                            # buffers': TVM would otherwise reuse a vec4 buffer's memory for them, which
                            # the WGSL codegen emits with the wrong element type
                            red0[ty * tr + tx] = T.float32(0)
                            if swiglu:
                                red1[ty * tr + tx] = T.float32(0)
                            if norm:
                                red2[ty * tr + tx] = T.float32(0)
                            if blocks == 1:
                                chunk(A, G, W, WS, U, US, X, XS, sa0, sv, aq, wq, sc, uq, usc, acc, ssq, bx, ty, tx, 0)
                            else:
                                # two buffers, alternate chunks: one barrier per chunk (a buffer is
                                # rewritten only after the barrier of the chunk between); an odd
                                # count's last pair has one (the condition is uniform)
                                for io2 in range((blocks + 1) // 2):
                                    chunk(A, G, W, WS, U, US, X, XS, sa0, sv, aq, wq, sc, uq, usc, acc, ssq, bx, ty,
                                          tx, io2 * 2)
                                    if blocks % 2 == 0 or io2 * 2 + 1 < blocks:
                                        chunk(A, G, W, WS, U, US, X, XS, sa1, sv, aq, wq, sc, uq, usc, acc, ssq, bx,
                                              ty, tx, io2 * 2 + 1)
                        else:
                            for io in range(blocks):
                                for ib in T.unroll(depth // ahead):
                                    load_rows(W, WS, U, US, X, XS, wq, sc, uq, usc, bx, ty, tx,
                                              (io * depth + ib * ahead) * tr * span)
                                    for ii in T.unroll(ahead):
                                        for j in T.unroll(span):
                                            # the element, which may be past the end
                                            u = ((io * depth + ib * ahead + ii) * tr + tx) * span + j
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
                        if staged and norm:  # every thread staged a part of the activation: sum them all
                            tree_reduce(red2, ty * tr + tx, nt, False)
                        for s in T.unroll(levels):
                            if nr == 1:
                                if tx < (tr >> (s + 1)):  # unrolled by hand: no loops under a sync'd condition
                                    red0[ty * tr + tx] = red0[ty * tr + tx] + red0[ty * tr + tx + (tr >> (s + 1))]
                                    if swiglu:
                                        red1[ty * tr + tx] = red1[ty * tr + tx] + red1[ty * tr + tx + (tr >> (s + 1))]
                                    if norm and not staged:
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
                                if norm and not staged:  # one sum of squares per row group
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
                                if staged:
                                    fin[2] = red2[0]
                                else:
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
