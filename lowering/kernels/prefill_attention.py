"""Prefill attention as one flash-attention kernel: causal GQA ``softmax(q k^T * scale) v`` for
``seq`` new query rows over the KV cache, the scores never written to memory.

Why: unfused, prefill attention is a batched GEMM into a ``[heads, seq, total]`` f32 score
tensor, a softmax over it and a second batched GEMM (plus two transpose copies): at the 4B shape
with a 512-token chunk and a 4608 context the score slots are ~886 MiB of activations, and it
costs four dispatches per layer. Here one workgroup computes a tile of output rows start to end.

A workgroup owns ``rows`` (query head, query position) pairs: ``heads`` query heads of one GQA
group (they read the same kv head, so each staged K/V tile serves all of them) times ``queries``
consecutive positions ``q0 ..``. It walks the cache in tiles of ``bk`` positions, only up to the
last position its last query may see (``past + q0 + queries``): tiles wholly above the causal
diagonal are never visited. The grid dispatches the query blocks last-first (blockIdx.y counts
from the end, blockIdx.x walks the heads): the workgroups with the longest walks start first and
the short ones fill the tail. Per tile:

1. the K tile, whose global loads were issued a phase earlier into registers (raw cache dtype),
   -> shared memory as f32; this tile's V loads are issued (they land during steps 2-3);
2. scores: each thread holds one row's q in registers (scaled on load) and dots it with ``cpt =
   bk / (threads / rows)`` consecutive staged K rows (a warp reads one K row: a broadcast); causal
   and ``total`` masks; the scores stay in its registers, their max goes to shared memory;
3. online softmax, spread over all threads: each of a row's ``threads / rows`` threads takes the
   row's new max from the others' (all compute the same), writes its columns' exp weights as
   vec4s and their sum to shared memory and keeps the running max and sum itself; then the V tile
   -> the buffer K used (K is dead after step 2's barrier) and the next K tile's loads are issued
   (they land during step 4);
4. PV: each thread owns ``rows / (threads / hd4)`` rows of one vec4 lane of the output in f32
   registers: ``acc = acc * alpha + sum_j p_j v_j``, per 4 positions 4 V vec4s (shared by the
   thread's rows) and one weight vec4 per row.

Without the register prefetch each tile waited twice for global memory (K, then V) with nothing
to overlap: at the 0.6B shape (512-token chunk) the kernel took 120 us per layer, 78 with it (H200).
Four barriers per tile. The output is written as ``[seq, heads * hd]``, the layout the o-proj
GEMM reads (the trace's pv -> transpose -> reshape chain is absorbed). Shared memory stays small
(the default schedule at head_dim 128: 12 KiB, within WebGPU's default 16 KiB): q lives in
registers, not shared memory, and K and V take turns in one tile buffer. With the q RMSNorm +
RoPE prologue the kernel reads the raw q projection (see ``prefill_attention_func``), possibly
the q part of packed q | k | v rows.
"""

# no `from __future__ import annotations`: it breaks TVMScript buffer params with a computed dtype
from collections.abc import Callable
from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

from ir.graph import Graph, Node
from ir.ops import EMPTY_MAX
from lowering.kernels.attention import _flushed_exp
from lowering.kernels.common import DTYPE_BYTES, shape_key
from lowering.kernels.elementwise import rope_tables
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions

# Workgroup storage: 32 KiB, as the prefill GEMM's schedules (lavapipe's limit; NVIDIA's Vulkan
# limit is 48 KiB; WebGPU's default 16 KiB). The default schedule stays within 16 KiB.
SHARED_BYTES = 32768
MAX_HEAD_DIM = 128  # q of one row lives in registers: hd / 4 vec4s per thread
# (rows per workgroup, cache positions per tile, threads): the default first; runtime.tune picks.
# More rows: each staged K/V tile serves more queries (fewer tile loads in all), but coarser causal
# skipping and fewer workgroups; a longer tile: fewer barriers per cache position, more shared
# memory. Each thread's columns are a whole number of vec4s (``tiling``). At head_dim 128 the first
# two and the fourth fit 16 KiB.
VARIANTS: tuple[tuple[int, int, int], ...] = ((32, 16, 128), (16, 16, 64), (32, 32, 128), (64, 16, 256),
                                              (32, 32, 256), (16, 32, 64))


@dataclass(frozen=True)
class Tiling:
    """How one schedule maps onto a head_dim and GQA group (``None`` from :func:`tiling` if it cannot)."""

    rows: int  # (query head, query position) pairs per workgroup
    bk: int  # cache positions per tile
    threads: int
    heads: int  # query heads per workgroup (a divisor of the GQA group: one kv head)
    queries: int  # consecutive query positions per workgroup (rows = heads * queries)

    def name(self) -> str:
        return (f"prefill-attention(rows={self.rows}: {self.heads} heads x {self.queries} queries, "
                f"tile={self.bk}, threads={self.threads})")


@T.macro
def _fetch_tile(reg, src, kh, c, total, tx, loads: int, threads: int, hd4: int, bk: int):
    """Issue the global loads of cache tile ``c`` of kv head ``kh`` into registers, raw (``reg``:
    ``loads`` vec4s of the cache dtype per thread), without waiting for them: the tile is stored to
    shared memory by ``_store_tile`` a phase later, so the load latency overlaps a phase's math.
    Positions are clamped into the cache (the extra loads of a partial thread row read a valid row
    and are never stored); ``_store_tile`` zeroes positions >= total."""
    for it in T.unroll(loads):
        reg[it] = src[kh, T.min(c * bk + (it * threads + tx) // hd4, total - 1),
                      (it * threads + tx) % hd4]


@T.macro
def _store_tile(kv_sh, reg, c, total, tx, loads: int, threads: int, hd4: int, bk: int, exact: bool):
    """Fetched tile ``c`` (``bk`` positions x ``hd4`` vec4 lanes) -> ``kv_sh`` as f32, 0 at positions
    >= total (stale or never-written cache rows may hold NaN, and 0 * NaN is NaN). One
    unconditional store per element: TVM's sync planner refuses two stores to a shared buffer in
    the branches of a thread-dependent ``if`` (``exact``: the threads divide the tile, no guard)."""
    for it in T.unroll(loads):
        if exact or it * threads + tx < bk * hd4:
            kv_sh[(it * threads + tx) // hd4, (it * threads + tx) % hd4] = T.if_then_else(
                c * bk + (it * threads + tx) // hd4 < total, T.Cast("float32x4", reg[it]),
                T.Broadcast(T.float32(0), 4))


def _shared_bytes(hd: int, rows: int, bk: int, threads: int) -> int:
    # the K/V tile (f32), the weight tile (rows padded by one vec4), the column groups' maxima and
    # sums, alpha
    return 4 * (bk * hd + (bk + 4) * rows + 2 * threads + rows)


def tiling(hd: int, group: int, rows: int, bk: int, threads: int) -> Tiling | None:
    """The schedule ``(rows, bk, threads)`` for this head_dim and GQA group, if it fits: vec4 rows,
    q in registers (head_dim <= 128), thread counts that tile the score and PV phases exactly
    (each thread's score columns a whole number of vec4s of weights),
    ``SHARED_BYTES`` of shared memory. Heads per workgroup: the largest divisor of the group that still
    leaves >= 4 query positions (fewer positions per workgroup: finer causal skipping)."""
    hd4 = hd // 4
    if hd % 4 or hd > MAX_HEAD_DIM or threads % rows or bk % (4 * (threads // rows)) or threads % hd4:
        return None
    if threads < rows or _shared_bytes(hd, rows, bk, threads) > SHARED_BYTES:
        return None
    heads = max(d for d in range(1, group + 1) if group % d == 0 and rows % d == 0 and (rows // d >= 4 or d == 1))
    return Tiling(rows, bk, threads, heads, rows // heads)


def tilings(hd: int, group: int) -> list[Tiling]:
    return [t for t in (tiling(hd, group, *v) for v in VARIANTS) if t is not None]


def supports(head_dim: int, group: int = 1) -> bool:
    """Whether some schedule fits (else the pass keeps the batched GEMM + softmax path)."""
    return bool(tilings(head_dim, group))


def prefill_attention_func(nh: int, nkv: int, hd: int, ctx: int, scale: float, kv_dtype: str,
                           t: Tiling, q_norm: tuple[float, str] | None = None, q_width: int = 0) -> tirx.PrimFunc:
    """Q ``[seq, nh, hd]``, K/V caches ``[nkv, ctx, hd]`` in ``kv_dtype``, O ``[seq, nh * hd]``;
    runtime scalars ``seq`` and ``total`` (``past = total - seq``). ``q_norm=(eps, weight dtype)``:
    Q arrives raw from its projection and each thread applies Qwen3's per-head q RMSNorm (weight
    ``G``) and RoPE at position ``past + i`` (tables ``COS``/``SIN``) to the row it holds: the whole
    row is in its registers, so the norm is a thread-local sum and rotate-half pairs registers
    ``d`` and ``d + hd / 8`` (vec4s) - no dispatch, no q tensor in memory. None: Q is final.
    ``q_width`` > 0: Q's rows are the first ``nh * hd`` values of a packed [seq, q_width] q | k | v
    projection output (``lowering.fuse_prefill_qkv``)."""
    qw4 = (q_width or nh * hd) // 4
    group = nh // nkv
    hd4 = hd // 4
    h4 = hd4 // 2
    prologue = q_norm is not None
    eps, gdtype = q_norm or (0.0, "float32")
    rows, bk, threads, heads, queries = t.rows, t.bk, t.threads, t.heads, t.queries
    bk4 = bk // 4
    cols = threads // rows  # score phase: column groups; thread (row tx % rows, columns (tx // rows) * cpt ..)
    cpt = bk // cols  # scores per thread, consecutive columns: cpt / 4 vec4s of weights
    prow = bk4 + 1  # vec4s per row of the weight tile, padded: conflict-free 16-byte stores
    rgs = threads // hd4  # PV phase: row groups; thread (lane tx % hd4, rows tx // hd4 + rgs * a)
    rpt = (rows + rgs - 1) // rgs  # output rows per thread
    loads = (bk * hd4 + threads - 1) // threads  # vec4 loads per thread to stage one K or V tile
    exact_loads = bk * hd4 % threads == 0
    kvec = f"{kv_dtype}x4"
    neg = EMPTY_MAX  # exp(neg - m) == 0 without the inf - inf NaN of a real -inf

    @T.prim_func(private=True)
    def prefill_attention(var_q: T.handle, K: T.Buffer((nkv, ctx, hd4), kvec), V: T.Buffer((nkv, ctx, hd4), kvec),
                          G: T.Buffer((hd4,), dtype=f"{gdtype}x4"), COS: T.Buffer((ctx, max(h4, 1)), "float32x4"),
                          SIN: T.Buffer((ctx, max(h4, 1)), "float32x4"), var_o: T.handle, total: T.int32):
        seq = T.int32()
        Q = T.match_buffer(var_q, (seq, qw4), "float32x4")
        O = T.match_buffer(var_o, (seq, nh, hd4), "float32x4")
        # blockIdx.x (dispatched fastest) walks the heads, blockIdx.y the query blocks from the
        # last: the blocks that walk the most cache tiles start first, the short ones fill the tail
        for bx in T.thread_binding(nh // heads, thread="blockIdx.x"):
            for by in T.thread_binding((seq + queries - 1) // queries, thread="blockIdx.y"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    kv_sh = T.alloc_buffer((bk, hd4), "float32x4", scope="shared")  # K, then V, of one tile
                    p_sh = T.alloc_buffer((rows * prow,), "float32x4", scope="shared")  # the tile's exp weights
                    m_sh = T.alloc_buffer((cols, rows), "float32", scope="shared")  # per column group: tile max,
                    l_sh = T.alloc_buffer((cols, rows), "float32", scope="shared")  # and sum of weights
                    alpha = T.alloc_buffer((rows,), "float32", scope="shared")
                    qv = T.alloc_buffer((hd4,), "float32x4", scope="local")
                    sc = T.alloc_buffer((cpt,), "float32", scope="local")
                    acc = T.alloc_buffer((rpt,), "float32x4", scope="local")
                    kreg = T.alloc_buffer((loads,), kvec, scope="local")  # the next K tile, in flight
                    vreg = T.alloc_buffer((loads,), kvec, scope="local")  # this tile's V, in flight
                    vv = T.alloc_buffer((4,), "float32x4", scope="local")
                    pw = T.alloc_buffer((1,), "float32x4", scope="local")
                    st = T.alloc_buffer((4,), "float32", scope="local")  # running max, sum; tile max, sum
                    rot = T.alloc_buffer((2,), "float32x4", scope="local")
                    kh = T.meta_var(bx * heads // group)
                    qb = T.meta_var((seq + queries - 1) // queries - 1 - by)  # this workgroup's query block
                    past = T.meta_var(total - seq)
                    # this thread's score row: query head bx * heads + r // queries, position q0 + r % queries
                    r = T.meta_var(tx % rows)
                    qi = T.meta_var(qb * queries + r % queries)
                    c0 = T.meta_var((tx // rows) * cpt)  # its first score column
                    # the cache tiles the workgroup's last query sees: past + q0 + queries positions
                    ntiles = T.meta_var((T.min(total, past + qb * queries + queries) + bk - 1) // bk)
                    _fetch_tile(kreg, K, kh, 0, total, tx, loads, threads, hd4, bk)
                    for d in T.unroll(hd4):
                        qv[d] = T.Broadcast(T.float32(0), 4)
                    if qi < seq:
                        for d in T.unroll(hd4):
                            qv[d] = Q[qi, (bx * heads + r // queries) * hd4 + d]
                        if prologue:
                            st[0] = T.float32(0)
                            for d in T.unroll(hd4):
                                st[0] = st[0] + T.call_pure_extern("float32", "dot", qv[d], qv[d])
                            st[0] = T.rsqrt(st[0] / T.float32(hd) + T.float32(eps))
                            for d in T.unroll(hd4):
                                qv[d] = qv[d] * T.Cast("float32x4", G[d]) * T.Broadcast(st[0], 4)
                            for d in T.unroll(h4):  # rotate-half at position past + qi
                                rot[0] = qv[d]
                                rot[1] = qv[d + h4]
                                qv[d] = rot[0] * COS[past + qi, d] - rot[1] * SIN[past + qi, d]
                                qv[d + h4] = rot[1] * COS[past + qi, d] + rot[0] * SIN[past + qi, d]
                        for d in T.unroll(hd4):
                            qv[d] = qv[d] * T.Broadcast(T.float32(scale), 4)
                    for a in T.unroll(rpt):
                        acc[a] = T.Broadcast(T.float32(0), 4)
                    st[0] = T.float32(neg)
                    st[1] = T.float32(0)
                    for c in range(ntiles):
                        # 1. K tile (fetched a phase ago) -> shared as f32; this tile's V in flight
                        _store_tile(kv_sh, kreg, c, total, tx, loads, threads, hd4, bk, exact_loads)
                        _fetch_tile(vreg, V, kh, c, total, tx, loads, threads, hd4, bk)
                        T.tvm_storage_sync("shared")
                        # 2. scores of row r against columns c0 .. c0 + cpt, masked; their max
                        st[2] = st[0]
                        for b in T.unroll(cpt):
                            sc[b] = T.float32(0)
                        for d in T.unroll(hd4):
                            for b in T.unroll(cpt):
                                sc[b] = sc[b] + T.call_pure_extern("float32", "dot", qv[d], kv_sh[c0 + b, d])
                        for b in T.unroll(cpt):
                            sc[b] = T.if_then_else(c * bk + c0 + b <= past + qi, sc[b], T.float32(neg))
                            st[2] = T.max(st[2], sc[b])
                        m_sh[tx // rows, r] = st[2]
                        T.tvm_storage_sync("shared")
                        # 3. online softmax: the row's new max from its column groups' (each of the
                        # row's threads computes the same), the weights of this thread's columns as
                        # vec4s and their sum; the V tile -> shared (K is dead), the next K in flight
                        for g2 in T.unroll(cols):
                            st[2] = T.max(st[2], m_sh[g2, r])
                        for b in T.unroll(cpt):
                            sc[b] = _flushed_exp(sc[b] - st[2])
                        for b4 in T.unroll(cpt // 4):
                            p_sh[r * prow + c0 // 4 + b4] = T.Shuffle(
                                [sc[b4 * 4], sc[b4 * 4 + 1], sc[b4 * 4 + 2], sc[b4 * 4 + 3]], [0, 1, 2, 3])
                        st[3] = T.float32(0)
                        for b in T.unroll(cpt):
                            st[3] = st[3] + sc[b]
                        l_sh[tx // rows, r] = st[3]
                        st[3] = _flushed_exp(st[0] - st[2])
                        if tx < rows:
                            alpha[tx] = st[3]
                        st[1] = st[1] * st[3]
                        st[0] = st[2]
                        _store_tile(kv_sh, vreg, c, total, tx, loads, threads, hd4, bk, exact_loads)
                        _fetch_tile(kreg, K, kh, T.min(c + 1, ntiles - 1), total, tx, loads, threads, hd4, bk)
                        T.tvm_storage_sync("shared")
                        # 4. PV: rows tx // hd4 + rgs * a, lane tx % hd4; the running sum of row r.
                        # Per 4 positions: 4 V vec4s and one weight vec4 per row
                        for g2 in T.unroll(cols):
                            st[1] = st[1] + l_sh[g2, r]
                        for a in T.unroll(rpt):
                            if rows % rgs == 0 or tx // hd4 + rgs * a < rows:
                                acc[a] = acc[a] * T.Broadcast(alpha[tx // hd4 + rgs * a], 4)
                        for j4 in T.unroll(bk4):
                            for i in T.unroll(4):
                                vv[i] = kv_sh[j4 * 4 + i, tx % hd4]
                            for a in T.unroll(rpt):
                                if rows % rgs == 0 or tx // hd4 + rgs * a < rows:
                                    pw[0] = p_sh[(tx // hd4 + rgs * a) * prow + j4]
                                    acc[a] = (acc[a] + T.Broadcast(T.Shuffle([pw[0]], [0]), 4) * vv[0]
                                              + T.Broadcast(T.Shuffle([pw[0]], [1]), 4) * vv[1]
                                              + T.Broadcast(T.Shuffle([pw[0]], [2]), 4) * vv[2]
                                              + T.Broadcast(T.Shuffle([pw[0]], [3]), 4) * vv[3])
                        T.tvm_storage_sync("shared")
                    if tx < rows:
                        alpha[tx] = st[1]  # the row's sum of weights
                    T.tvm_storage_sync("shared")
                    for a in T.unroll(rpt):
                        if rows % rgs == 0 or tx // hd4 + rgs * a < rows:
                            if qb * queries + (tx // hd4 + rgs * a) % queries < seq:
                                O[qb * queries + (tx // hd4 + rgs * a) % queries,
                                  bx * heads + (tx // hd4 + rgs * a) // queries,
                                  tx % hd4] = acc[a] / T.Broadcast(alpha[tx // hd4 + rgs * a], 4)

    if prologue:
        return prefill_attention
    # without the q prologue its params are never read; drop them (each param is a binding)
    return tirx.PrimFunc([p for p in prefill_attention.params if p.name not in ("G", "COS", "SIN")],
                         prefill_attention.body, prefill_attention.ret_type, prefill_attention.attrs)


def _builders(nh: int, nkv: int, hd: int, ctx: int, scale: float, kv_dtype: str, q_norm: tuple[float, str] | None,
              q_width: int) -> list[tuple[str, Callable[[], object]]]:
    what = "+q_norm+rope" if q_norm else ""
    out = [(t.name() + what, lambda t=t: prefill_attention_func(nh, nkv, hd, ctx, scale, kv_dtype, t, q_norm, q_width))
           for t in tilings(hd, nh // nkv)]
    if not out:
        raise KeyError(f"no prefill attention schedule fits head_dim {hd} with GQA group {nh // nkv}")
    return out


@generator("prefill_attention")
def prefill_attention(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    q, k_view, v_view = (g[i] for i in node.inputs[:3])
    kc, vc = g[k_view.inputs[0]], g[v_view.inputs[0]]
    nkv, _, hd = kc.shape
    nh = nkv * node.attrs.get("gqa_group", 1)
    q_width = q.shape[1] if node.attrs.get("q_packed") else 0  # reads q from a packed q | k | v row
    ctx, scale = opts.max_context, float(node.attrs["scale"])
    q_norm, extra = None, []
    if node.attrs.get("q_norm_eps") is not None:
        w = g[node.inputs[3]]
        q_norm = (float(node.attrs["q_norm_eps"]), w.dtype)
        extra = [w.name, *rope_tables(node.attrs["rope"], hd, ctx)]
    variants = _builders(nh, nkv, hd, ctx, scale, kc.dtype, q_norm, q_width)
    # causal: row i of the chunk sees past + i + 1 positions
    seen = "(seq*(total-seq) + seq*(seq+1)//2)"
    kv_bytes = f"2*{DTYPE_BYTES[kc.dtype]}*{nkv}*total*{hd}"
    args = [q.name, kc.name, vc.name, *extra, node.name]
    return KernelSpec(f"prefill_attention:{shape_key(q)}x{shape_key(kc)}:s{scale!r}:{q_norm}:{extra[1:]}:{q_width}",
                      "attention", variants[0][1], args, [len(args) - 1],
                      flops=f"4*{nh}*{hd}*{seen}", bytes=f"2*4*seq*{nh * hd} + {kv_bytes}", variants=variants)
