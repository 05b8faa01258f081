"""Decode attention over the KV cache: ``softmax(q k^T * scale) v`` for one query row per head.

Explicitly scheduled TIR (no dlight rule covers a reduction, a softmax and a second reduction in
one kernel). Flash-decoding: the cache positions ``0..total`` are cut into splits of ``chunk``
positions (``ir.ops.attention_split``: the split count grows with ``total`` up to
``max_splits``), one workgroup per (split, kv head), so a long context fills the GPU instead of
running one workgroup per head. The merge reads only the step's splits (``_merge_splits``: in
groups of ``MERGE_UNROLL`` records whose loads are in flight together, an online rescaling between
groups); the record slots past them are neither written nor read. A workgroup serves every query
head of its GQA group (head ``kv * group + g``), so each K/V row is read once for the whole group,
not ``group`` times.

Inside a workgroup the split is walked in tiles of ``threads * per_thread`` positions with an
online softmax: each thread scores ``per_thread`` positions (a vec4 dot product over the head dim
per query head, q kept in shared memory), the workgroup reduces the tile's max and sum per head,
then each thread accumulates one vec4 lane of every head's output over a strided subset of the
tile's positions (consecutive threads read consecutive vec4s of a V row: coalesced; unrolled, so
the loads overlap), and the position groups are summed at the end. The q norm weight and RoPE row
are loaded with q (at the short splits of flash-decoding a workgroup's time is its chain of
dependent memory round trips, not bandwidth). Loading the K row and the V rows into registers
ahead of their use was tried: twice as fast for 3 splits, 3.5x slower for 64 (register
pressure), and slower in the decode step (RESULTS.md). The workgroup writes its
split's partial ``(unnormalized output, max, sum)``; the partials are merged with the usual
rescaling either by ``attention_combine`` (a second, tiny kernel: one workgroup per query head) or,
fused (``lowering.fuse_attention_combine``), by the last workgroup of each kv head to finish: each
workgroup fences its records (``storageBarrier()``: naga emits a device-scope acquire-release
barrier on storage memory) and takes a ticket from an atomic counter per kv head; the one holding
the last ticket merges its group's heads and resets the counter (with threads to spare, up to
``MERGE_PARTS`` threads per (head, vec4 lane) pair each merge a consecutive share of the records
and their states meet in shared memory: at the 0.6B shape, 2 heads x 32 lanes on 128 threads,
the merge of 128 records, context 4096 in splits of 32, is two chains of 8 groups instead of one
of 16). A dispatch fewer per layer: at
short context the combine's launch and round trips cost as much as the attention itself (H200,
4B: 34 + 22 us per layer inside the decode step; fused: 32 us, and decode 272 vs 266 tok/s at 4B,
764 vs 703 at 0.6B, RESULTS.md). What it rests on: the records are plain stores, naga declares
storage buffers without ``Coherent`` (GLSL450 memory model) and the WGSL spec gives
``storageBarrier`` workgroup scope only, so the visibility of one workgroup's records to another
is what the drivers do with naga's device-scope barrier, not a guarantee of the spec: checked on
NVIDIA (H200) and lavapipe. ``--separate-attention-combine`` is the form that needs none of it. The unsplit form (one
split covering the whole cache, ``attention``) normalizes in place and needs no combine.

K/V are read in the cache's dtype (f16 or f32) and accumulated in f32. With one query at position
``total - 1`` every cached position is visible: causal by construction.
"""

from collections.abc import Callable

from tvm import tirx
from tvm.script import tirx as T

from ir.graph import Graph, Node
from ir.ops import EMPTY_MAX, SPLIT_STATS, attention_split
from lowering.kernels.common import DTYPE_BYTES, bytes_expr, shape_key
from lowering.kernels.elementwise import rope_tables
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions

SHARED_BYTES = 16384  # WebGPU's default maxComputeWorkgroupStorageSize: every adapter has it
# (threads, positions per thread) schedules, the default first; runtime.tune picks on the device.
# Split tiles are short (a split is ~64-128 positions): one position per thread; the unsplit walk
# over the whole cache takes long tiles (fewer barriers per position).
SPLIT_VARIANTS: tuple[tuple[int, int], ...] = ((128, 1), (64, 1), (64, 2))
WHOLE_VARIANTS: tuple[tuple[int, int], ...] = ((128, 4), (128, 1), (64, 2))


def _flushed_exp(x):
    """exp(x) for x <= 0, flushed to 0 below exp(-32) ~ 1e-14: such weights cannot change an f32
    result whose largest weight is 1, and their products with V values fall into denormals, which
    are ~100x slower on CPUs (lavapipe took 400 ms per attention call on a tiny model)."""
    # WGSL's select evaluates both sides: clamp so exp itself never produces a denormal
    return T.if_then_else(x < T.float32(-32), T.float32(0), T.exp(T.max(x, T.float32(-32))))


MERGE_UNROLL = 8  # split records whose loads a merge issues together
MERGE_PARTS = 4  # the most threads of a fused merge that share one (head, lane) pair's records


@T.macro
def _merge_splits(P, h, lane, lo, hi, groups, hd4: int, mv, mrg, oacc, nb):
    """Merge head ``h``'s split records ``lo .. hi - 1`` of ``P`` [heads, slots, hd4 + 2] (vec4s),
    vec4 lane ``lane``: ``M = max m_s``, ``w_s = exp(m_s - M)``, leaving ``M`` in ``mrg[0]``,
    ``sum w_s l_s`` in ``mrg[3]`` and ``sum w_s o_s`` in ``oacc[0]`` (the output is their
    quotient). Records go in groups of ``MERGE_UNROLL`` (unrolled: their loads in flight at once; a
    loop of one record at a time waited for each, ~20 us per layer on an H200), with the running
    max and sums rescaled between groups, so only the step's splits are read (3 at context 135
    with the default unit, not every slot). The stats (stored broadcast over a vec4) are kept as
    scalars: the fused form runs inside the attention kernel, whose occupancy follows its register
    peak. ``groups``: the group count, at least ``ceil((hi - lo) / MERGE_UNROLL)``, from a value
    that is no function of the uniforms alone (a loop bound computed from ``total`` alone is the
    lavapipe recompilation trap, DESIGN.md, and TVM's codegen folds away ``opaque_loop_extents``'
    guard on this one), or a constant covering every slot. A group's slots past ``hi`` read slot
    ``hi - 1`` again (cached) and get the empty max through WGSL's ``select`` (weight 0; TVM turns
    its own Select around a load into a branch, here on uniform values alone). An empty range
    leaves the empty max (its sums are not zero, but a merge of parts weights them by
    ``exp(EMPTY_MAX - M) = 0``). Local buffers: ``mv`` float32 [MERGE_UNROLL], ``mrg``
    float32 [4] (running max, new max, scale, sum), ``oacc`` float32x4 [1], ``nb`` int32 [1]
    (``hi``, computed once: a division by the run-time chunk)."""
    nb[0] = hi
    mrg[0] = T.float32(EMPTY_MAX)
    mrg[3] = T.float32(0)
    oacc[0] = T.Broadcast(T.float32(0), 4)
    for c in range(groups):
        for u in T.unroll(MERGE_UNROLL):
            mv[u] = T.call_pure_extern("float32", "select", T.float32(EMPTY_MAX), T.Shuffle(
                [P[h, T.min(lo + c * MERGE_UNROLL + u, nb[0] - 1), hd4]], [0]), lo + c * MERGE_UNROLL + u < nb[0])
        mrg[1] = mrg[0]
        for u in T.unroll(MERGE_UNROLL):
            mrg[1] = T.max(mrg[1], mv[u])
        mrg[2] = T.exp(mrg[0] - mrg[1])
        oacc[0] = oacc[0] * T.Broadcast(mrg[2], 4)
        mrg[3] = mrg[3] * mrg[2]
        for u in T.unroll(MERGE_UNROLL):
            mrg[2] = T.exp(mv[u] - mrg[1])
            oacc[0] = oacc[0] + P[h, T.min(lo + c * MERGE_UNROLL + u, nb[0] - 1), lane] * T.Broadcast(mrg[2], 4)
            mrg[3] = mrg[3] + T.Shuffle([P[h, T.min(lo + c * MERGE_UNROLL + u, nb[0] - 1), hd4 + 1]], [0]) * mrg[2]
        mrg[0] = mrg[1]


def supports(head_dim: int, group: int = 1, k_write: bool = False) -> bool:
    """vec4 rows (and vec4 halves for the RoPE prologue), a power-of-two number of vec4 lanes so
    the lanes tile the workgroup, and the GQA group's shared state (with ``k_write``, the new K
    row's too) within the workgroup storage limit for at least one schedule."""
    hd4 = head_dim // 4
    return (head_dim % 8 == 0 and hd4 & (hd4 - 1) == 0 and head_dim <= 512
            and any(_fits(head_dim, group, t, p, k_write) for t, p in SPLIT_VARIANTS))


def _shared_bytes(hd: int, group: int, threads: int, per_thread: int, k_write: bool = False) -> int:
    # q (vec4 per lane per head) + tile weights + two reduction buffers (threads and threads / 2
    # values per head) + output lanes (vec4), 4 bytes a value; the new K row is one more q-like row
    rows = group + k_write
    return 4 * (rows * hd + group * threads * per_thread + rows * threads * 3 // 2 + 4 * threads)


def _fits(hd: int, group: int, threads: int, per_thread: int, k_write: bool = False) -> bool:
    return hd // 4 <= threads and _shared_bytes(hd, group, threads, per_thread, k_write) <= SHARED_BYTES


@T.macro
def _reduce_rows(src, dst, tx, half: int, rows: int, take_max: bool, again):
    """Tree-reduce every row of ``src`` [rows, 2 * half] at once: the sum (or max) of row ``r``
    ends in ``[r, 0]`` of ``_reduced(src, dst, half)``. One halving per barrier for all rows (the
    barrier count does not grow with the GQA group); every thread must call it. The halvings
    ping-pong between two buffers: TVM's sync planner sees a shared buffer as a whole, so rows
    updated in place one after another would need a barrier inside the thread condition.
    ``again`` is this macro itself (a macro does not see its own name when it is expanded)."""
    if tx < half:
        for r in T.unroll(rows):
            if take_max:
                dst[r, tx] = T.max(src[r, tx], src[r, tx + half])
            else:
                dst[r, tx] = src[r, tx] + src[r, tx + half]
    T.tvm_storage_sync("shared")
    if half > 1:
        again(dst, src, tx, half // 2, rows, take_max, again)


def _reduced(src, dst, threads: int):
    """The buffer ``_reduce_rows(src, dst, tx, threads // 2, ...)`` leaves its result in."""
    return dst if (threads.bit_length() - 1) % 2 else src


def _attention_func(nh: int, nkv: int, hd: int, ctx: int, scale: float, kv_dtype: str, threads: int,
                    per_thread: int, q_norm: tuple[float, str] | None, split: tuple[int, int] | None,
                    k_norm: tuple[float, str] | None = None, combine: bool = False):
    """``q_norm=(eps, weight dtype)``: q arrives raw from its projection; the prologue applies
    Qwen3's per-head q RMSNorm and RoPE at position total - 1 (tables as vec4: rotate-half pairs
    element d with d + hd/2, i.e. vec4 lane i with i + hd/8), and folds in the softmax scale.
    ``split=(unit, max_splits)``: flash-decoding partials into ``O`` [heads, max_splits, hd + 8]
    (``ir.ops.SPLIT_STATS``); None: one split covering the cache (capacity ``ctx``, so the
    chunk formula gives one workgroup per kv head), normalized output ``O`` [1, heads, 1, hd].
    ``k_norm=(eps, weight dtype)`` (with ``q_norm``; ``Q`` is the packed [q | k | v] projection
    row): the new K row is the raw k after q in ``Q``; the prologue gives it K's RMSNorm and RoPE
    beside q's (one more row in the same reductions), the workgroup of the last split stores it
    into the cache at ``total - 1`` (the write the separate ``kv_cache_write`` dispatch did) and
    scores that position with the rounded row it holds in shared memory instead of reading it back
    (no other workgroup covers ``total - 1``).
    ``combine`` (with ``split``): the merge ``attention_combine`` describes is done here, by the
    last workgroup of each kv head to finish (``CNT``: one arrival counter per kv head, zero
    before and after the dispatch), into ``OUT`` [1, heads, 1, hd] (module docstring)."""
    group = nh // nkv
    assert split is not None or not combine, "only split partials have a combine to fuse"
    k_write = k_norm is not None
    assert q_norm is not None or not k_write, "the K write rides on the q prologue"
    rows = group + k_write  # q heads, then the new K row
    hd4 = hd // 4
    h4 = hd4 // 2
    prologue = q_norm is not None
    eps, gdtype = q_norm or (0.0, "float32")
    keps, kgdtype = k_norm or (0.0, "float32")
    tile = threads * per_thread  # cache positions per step of the walk
    groups = threads // hd4  # PV: thread = (position group, vec4 lane of the head dim)
    final = split is None
    unit, smax = split or (ctx, 1)
    kvec = f"{kv_dtype}x4"
    rec = hd4 + SPLIT_STATS // 4  # vec4s of one split's record
    out_shape = (1, nh, 1, hd4) if final else (nh, smax, rec)
    pairs = group * hd4  # fused combine: (head of the group, vec4 lane) pairs, one per thread per step
    # fused combine: threads per pair when the workgroup has several per pair, each merging a share
    # of the records (their states meet in o_sh and two rows of red)
    parts = max(1, min(MERGE_PARTS, threads // pairs)) if rows >= 2 else 1
    neg = EMPTY_MAX  # exp(neg - m) == 0 without the inf - inf NaN of a real -inf

    @T.prim_func(private=True)
    def attention(Q: T.Buffer((1, nh + nkv * k_write, 1, hd4), "float32x4"), K: T.Buffer((nkv, ctx, hd4), kvec),
                  V: T.Buffer((nkv, ctx, hd4), kvec), G: T.Buffer((hd4,), dtype=f"{gdtype}x4"),
                  COS: T.Buffer((ctx, max(h4, 1)), "float32x4"), SIN: T.Buffer((ctx, max(h4, 1)), "float32x4"),
                  KG: T.Buffer((hd4,), dtype=f"{kgdtype}x4"), O: T.Buffer(out_shape, "float32x4"),
                  CNT: T.Buffer((nkv,), "int32"), OUT: T.Buffer((1, nh, 1, hd4), "float32x4"), total: T.int32):
        # splits of `chunk` positions (a multiple of `unit`), at most `smax` of them (the same formula
        # on TIR expressions)
        chunk, nsplit = T.meta_var(attention_split(total, unit, smax))
        for s in T.thread_binding(nsplit, thread="blockIdx.x"):
            for kh in T.thread_binding(nkv, thread="blockIdx.y"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    q_sh = T.alloc_buffer((rows, hd4), "float32x4", scope="shared")  # q heads [, new K row]
                    p_sh = T.alloc_buffer((group, tile), "float32", scope="shared")
                    red = T.alloc_buffer((rows, threads), "float32", scope="shared")
                    red2 = T.alloc_buffer((rows, threads // 2), "float32", scope="shared")
                    reduced = T.meta_var(_reduced(red, red2, threads))  # where _reduce_rows leaves row results
                    qreduced = T.meta_var(red if hd4 == 1 else _reduced(red, red2, hd4))  # the q norm's sums
                    o_sh = T.alloc_buffer((threads,), "float32x4", scope="shared")
                    m = T.alloc_buffer((group,), "float32", scope="local")  # running max per head
                    lsum = T.alloc_buffer((group,), "float32", scope="local")  # running sum per head
                    mnew = T.alloc_buffer((group,), "float32", scope="local")
                    tmp = T.alloc_buffer((1,), "float32", scope="local")
                    sc = T.alloc_buffer((group, per_thread), "float32", scope="local")  # this thread's scores
                    acc = T.alloc_buffer((rows,), "float32x4", scope="local")
                    kv4 = T.alloc_buffer((1,), "float32x4", scope="local")
                    gq = T.alloc_buffer((2,), "float32x4", scope="local")  # q [, k] norm weight lane
                    rope = T.alloc_buffer((2,), "float32x4", scope="local")  # cos, sin lane at total - 1
                    ticket_sh = T.alloc_buffer((1,), "int32", scope="shared")  # fused combine: arrival order
                    ticket = T.alloc_buffer((1,), "int32", scope="local")
                    mv = T.alloc_buffer((MERGE_UNROLL,), "float32", scope="local")  # fused combine
                    mrg = T.alloc_buffer((4,), "float32", scope="local")
                    oacc = T.alloc_buffer((1,), "float32x4", scope="local")
                    nb = T.alloc_buffer((1,), "int32", scope="local")
                    start = T.meta_var(s * chunk)
                    end = T.meta_var(T.min(start + chunk, total))
                    # q of every head of the group -> shared (normalized, rotated, scaled); the norm
                    # weight and the RoPE row are loaded with q, not one memory round trip after it
                    if tx < hd4:
                        for g in T.unroll(group):
                            acc[g] = Q[0, kh * group + g, 0, tx]
                        if prologue:
                            gq[0] = T.Cast("float32x4", G[tx])
                            rope[0] = COS[total - 1, tx % h4]
                            rope[1] = SIN[total - 1, tx % h4]
                        if k_write:
                            acc[group] = Q[0, nh + kh, 0, tx]
                            gq[1] = T.Cast("float32x4", KG[tx])
                    if prologue:
                        if tx < hd4:
                            for g in T.unroll(rows):
                                red[g, tx] = T.call_pure_extern("float32", "dot", acc[g], acc[g])
                        T.tvm_storage_sync("shared")
                        if hd4 > 1:  # only the hd4 lanes hold squares: halve from hd4 / 2
                            _reduce_rows(red, red2, tx, hd4 // 2, rows, False, _reduce_rows)
                        if tx < hd4:
                            for g in T.unroll(group):
                                q_sh[g, tx] = acc[g] * gq[0] * T.Broadcast(
                                    T.rsqrt(qreduced[g, 0] / T.float32(hd) + T.float32(eps)), 4)
                            if k_write:
                                q_sh[group, tx] = acc[group] * gq[1] * T.Broadcast(
                                    T.rsqrt(qreduced[group, 0] / T.float32(hd) + T.float32(keps)), 4)
                        T.tvm_storage_sync("shared")
                        if tx < hd4:
                            for g in T.unroll(rows):
                                acc[g] = q_sh[g, tx] * rope[0] + T.if_then_else(
                                    tx < h4, -q_sh[g, T.min(tx + h4, hd4 - 1)], q_sh[g, T.max(tx - h4, 0)]
                                ) * rope[1]
                        T.tvm_storage_sync("shared")
                        if k_write and tx < hd4:  # the new K row, rounded to the cache's dtype
                            kv4[0] = T.Cast("float32x4", T.Cast(kvec, acc[group]))
                            q_sh[group, tx] = kv4[0]
                            if start + chunk >= total:  # the last split's workgroup stores it
                                K[kh, total - 1, tx] = T.Cast(kvec, kv4[0])
                    if tx < hd4:
                        for g in T.unroll(group):
                            q_sh[g, tx] = acc[g] * T.Broadcast(T.float32(scale), 4)
                    for g in T.unroll(group):
                        m[g] = T.float32(neg)
                        lsum[g] = T.float32(0)
                        acc[g] = T.Broadcast(T.float32(0), 4)
                    T.tvm_storage_sync("shared")
                    for c in range((end - start + tile - 1) // tile):
                        # scores: thread tx <- positions start + c * tile + p * threads + tx
                        for p in T.unroll(per_thread):
                            for g in T.unroll(group):
                                sc[g, p] = T.float32(neg)
                            if start + c * tile + p * threads + tx < end:
                                for g in T.unroll(group):
                                    sc[g, p] = T.float32(0)
                                pos = T.meta_var(start + c * tile + p * threads + tx)
                                for i in T.unroll(hd4):
                                    kv4[0] = T.Cast("float32x4", K[kh, pos, i])
                                    if k_write:  # position total - 1: the row in shared, not its cache write
                                        kv4[0] = T.if_then_else(pos == total - 1, q_sh[group, i], kv4[0])
                                    for g in T.unroll(group):
                                        sc[g, p] = sc[g, p] + T.call_pure_extern("float32", "dot", q_sh[g, i], kv4[0])
                        for g in T.unroll(group):
                            tmp[0] = T.float32(neg)
                            for p in T.unroll(per_thread):
                                tmp[0] = T.max(tmp[0], sc[g, p])
                            red[g, tx] = tmp[0]
                        T.tvm_storage_sync("shared")
                        _reduce_rows(red, red2, tx, threads // 2, group, True, _reduce_rows)
                        for g in T.unroll(group):
                            mnew[g] = T.max(m[g], reduced[g, 0])
                        T.tvm_storage_sync("shared")
                        for g in T.unroll(group):
                            tmp[0] = T.float32(0)
                            for p in T.unroll(per_thread):
                                p_sh[g, p * threads + tx] = _flushed_exp(sc[g, p] - mnew[g])
                                tmp[0] = tmp[0] + p_sh[g, p * threads + tx]
                            red[g, tx] = tmp[0]
                        T.tvm_storage_sync("shared")
                        _reduce_rows(red, red2, tx, threads // 2, group, False, _reduce_rows)
                        for g in T.unroll(group):
                            tmp[0] = _flushed_exp(m[g] - mnew[g])
                            lsum[g] = lsum[g] * tmp[0] + reduced[g, 0]
                            m[g] = mnew[g]
                            acc[g] = acc[g] * T.Broadcast(tmp[0], 4)
                        # PV: lane tx % hd4 of positions tx // hd4, + groups, ... of this tile
                        for jo in range((T.min(tile, end - start - c * tile) + groups * 4 - 1) // (groups * 4)):
                            for ji in T.unroll(4):
                                if start + c * tile + (jo * 4 + ji) * groups + tx // hd4 < end:
                                    kv4[0] = T.Cast("float32x4", V[kh, start + c * tile + (jo * 4 + ji) * groups
                                                                   + tx // hd4, tx % hd4])
                                    for g in T.unroll(group):
                                        acc[g] = acc[g] + T.Broadcast(p_sh[g, (jo * 4 + ji) * groups + tx // hd4],
                                                                      4) * kv4[0]
                        T.tvm_storage_sync("shared")
                    # per head: sum the position groups' lanes, then the output (or the split's partial)
                    for g in T.unroll(group):
                        o_sh[tx] = acc[g]
                        T.tvm_storage_sync("shared")
                        if tx < hd4:
                            kv4[0] = o_sh[tx]
                            for g2 in range(1, groups):
                                kv4[0] = kv4[0] + o_sh[g2 * hd4 + tx]
                            if final:
                                O[0, kh * group + g, 0, tx] = kv4[0] / T.Broadcast(lsum[g], 4)
                            else:
                                O[kh * group + g, s, tx] = kv4[0]
                                if tx == 0:
                                    O[kh * group + g, s, hd4] = T.Broadcast(m[g], 4)
                                    O[kh * group + g, s, hd4 + 1] = T.Broadcast(lsum[g], 4)
                        T.tvm_storage_sync("shared")
                    if combine:
                        # the records above, then this kv head's arrival: storageBarrier() is a
                        # device-scope acquire-release barrier on storage memory (naga), so the last to
                        # arrive (its ticket read uniformly: the second barrier stays in uniform
                        # control flow) sees every record; it merges them and resets the counter
                        T.evaluate(T.call_extern("int32", "storageBarrier"))
                        if tx == 0:
                            ticket_sh[0] = T.call_extern("int32", "atomicAdd", T.address_of(CNT[kh]), 1)
                        ticket[0] = T.call_extern("int32", "workgroupUniformLoad", T.address_of(ticket_sh[0]))
                        if ticket[0] == nsplit - 1:
                            T.evaluate(T.call_extern("int32", "storageBarrier"))
                            if tx == 0:
                                T.evaluate(T.call_extern("int32", "atomicStore", T.address_of(CNT[kh]), 0))
                            if parts == 1:
                                for pj in T.unroll((pairs + threads - 1) // threads):  # (head, lane) pairs
                                    if pairs % threads == 0 or pj * threads + tx < pairs:
                                        # groups from the last ticket (= the split count - 1): no
                                        # function of the uniforms alone
                                        _merge_splits(O, kh * group + (pj * threads + tx) // hd4,
                                                      (pj * threads + tx) % hd4, 0, nsplit,
                                                      (ticket[0] + MERGE_UNROLL) // MERGE_UNROLL, hd4, mv, mrg, oacc,
                                                      nb)
                                        OUT[0, kh * group + (pj * threads + tx) // hd4, 0,
                                            (pj * threads + tx) % hd4] = oacc[0] / T.Broadcast(mrg[3], 4)
                            else:
                                # `parts` threads per (head, lane) pair, each merging a consecutive
                                # share of the records; part 0 merges the parts' states
                                if tx < parts * pairs:
                                    _merge_splits(O, kh * group + tx % pairs // hd4, tx % hd4,
                                                  tx // pairs * ((ticket[0] + parts) // parts),
                                                  T.min(nsplit, (tx // pairs + 1) * ((ticket[0] + parts) // parts)),
                                                  ((ticket[0] + parts) // parts + MERGE_UNROLL - 1) // MERGE_UNROLL,
                                                  hd4, mv, mrg, oacc, nb)
                                    o_sh[tx] = oacc[0]
                                    red[0, tx] = mrg[0]
                                    red[1, tx] = mrg[3]
                                T.tvm_storage_sync("shared")
                                if tx < pairs:
                                    for p2 in T.unroll(parts - 1):  # part p2 + 1's state
                                        mrg[1] = T.max(mrg[0], red[0, (p2 + 1) * pairs + tx])
                                        mrg[2] = T.exp(mrg[0] - mrg[1])
                                        tmp[0] = T.exp(red[0, (p2 + 1) * pairs + tx] - mrg[1])
                                        oacc[0] = (oacc[0] * T.Broadcast(mrg[2], 4)
                                                   + o_sh[(p2 + 1) * pairs + tx] * T.Broadcast(tmp[0], 4))
                                        mrg[3] = mrg[3] * mrg[2] + red[1, (p2 + 1) * pairs + tx] * tmp[0]
                                        mrg[0] = mrg[1]
                                    OUT[0, kh * group + tx // hd4, 0, tx % hd4] = oacc[0] / T.Broadcast(mrg[3], 4)

    # params a form never reads are dropped (each param is a binding): the q prologue's, the K write's,
    # the fused combine's
    unused = (({"KG"} if not k_write else set()) | ({"G", "COS", "SIN"} if not prologue else set())
              | ({"CNT", "OUT"} if not combine else set()))
    return tirx.PrimFunc([p for p in attention.params if p.name not in unused], attention.body,
                         attention.ret_type, attention.attrs)


def _combine_func(nh: int, hd: int, unit: int, smax: int):
    """Merge the splits' partials of each head (``_merge_splits``): one workgroup per query head,
    one thread per vec4 lane of the output."""
    hd4 = hd // 4

    @T.prim_func(private=True)
    def combine(P: T.Buffer((nh, smax, hd4 + SPLIT_STATS // 4), "float32x4"),
                O: T.Buffer((1, nh, 1, hd4), "float32x4"), total: T.int32):
        for h in T.thread_binding(nh, thread="blockIdx.x"):
            for tx in T.thread_binding(hd4, thread="threadIdx.x"):
                mv = T.alloc_buffer((MERGE_UNROLL,), "float32", scope="local")
                mrg = T.alloc_buffer((4,), "float32", scope="local")
                oacc = T.alloc_buffer((1,), "float32x4", scope="local")
                nb = T.alloc_buffer((1,), "int32", scope="local")
                # every slot's group (a constant count: no loop bound from the uniforms alone),
                # the ones past the step's splits re-reading its last record, weighted 0
                _merge_splits(P, h, tx, 0, attention_split(total, unit, smax)[1],
                              (smax + MERGE_UNROLL - 1) // MERGE_UNROLL, hd4, mv, mrg, oacc, nb)
                O[0, h, 0, tx] = oacc[0] / T.Broadcast(mrg[3], 4)

    return combine


def _schedules(variants: tuple[tuple[int, int], ...], hd: int, group: int,
               build: Callable[[int, int], Callable[[], object]], what: str,
               k_write: bool = False) -> list[tuple[str, Callable[[], object]]]:
    out = [(f"attention-{what}(threads={t},positions/thread={p})", build(t, p))
           for t, p in variants if _fits(hd, group, t, p, k_write)]
    if not out:
        raise KeyError(f"no attention schedule fits head_dim {hd} with GQA group {group}")
    return out


def _attention_spec(node: Node, g: Graph, opts: LowerOptions, split: tuple[int, int] | None) -> KernelSpec:
    q, k_view, v_view = (g[i] for i in node.inputs[:3])
    kc, vc = g[k_view.inputs[0]], g[v_view.inputs[0]]
    nkv, _, hd = kc.shape
    nh = nkv * int(node.attrs.get("gqa_group", 1))
    group = nh // nkv
    if not supports(hd, group):
        raise KeyError("fused attention needs a supported head_dim")
    ctx, scale = opts.max_context, float(node.attrs["scale"])
    eps = node.attrs.get("q_norm_eps")
    q_norm, k_norm, rope, extra, what = None, None, [], [], "split" if split else "whole"
    if eps is not None:
        w = g[node.inputs[3]]
        q_norm = (float(eps), w.dtype)
        rope = rope_tables(node.attrs["rope"], hd, ctx)
        extra = [w.name, *rope]
        what += "+q_norm+rope"
    if node.attrs.get("k_write") is not None:  # the new K row's norm + RoPE + cache store
        kg = g[node.inputs[4]]
        k_norm = (float(node.attrs["k_write"]["norm_eps"]), kg.dtype)
        extra.append(kg.name)
        what += "+k_write"
    combine = node.attrs.get("combine")  # the attention_combine node this kernel writes (fused merge)
    if combine:
        what += "+combine"
    variants = _schedules(SPLIT_VARIANTS if split else WHOLE_VARIANTS, hd, group, lambda t, p: lambda: _attention_func(
        nh, nkv, hd, ctx, scale, kc.dtype, t, p, q_norm, split, k_norm, bool(combine)), what, k_norm is not None)
    kv_bytes = f"2*{DTYPE_BYTES[kc.dtype]}*{nkv}*total*{hd}"
    args = [q.name, kc.name, vc.name, *extra, node.name]
    outputs = [len(args) - 1] + [1] * (k_norm is not None)  # the K cache is updated in place
    if split:  # the step's split records are written (and, merged here, read back and merged)
        out_bytes = f"{1 + bool(combine)}*4*{nh}*{hd + SPLIT_STATS}*{_live_splits(*split)}"
    else:
        out_bytes = bytes_expr([node], ctx)
    if combine:
        args += [split_counters(nkv), combine]
        outputs += [len(args) - 2, len(args) - 1]
        out_bytes += f" + {bytes_expr([g[combine]], ctx)}"
    return KernelSpec(f"{node.op}:{shape_key(q)}x{shape_key(kc)}:s{scale!r}:{q_norm}:{rope}:{split}:{k_norm}:"
                      f"{bool(combine)}", "attention", variants[0][1], args, outputs, flops=f"4*{nh}*total*{hd}",
                      bytes=f"{bytes_expr([q], ctx)} + {kv_bytes} + {out_bytes}", variants=variants)


def _live_splits(unit: int, smax: int) -> str:
    """``ir.ops.attention_split``'s split count as a cost expression of ``total``."""
    chunk = f"((total + {unit * smax - 1}) // {unit * smax} * {unit})"
    return f"((total + {chunk} - 1) // {chunk})"


def split_counters(kv_heads: int) -> str:
    """The runtime constant a fused-combine attention kernel counts its workgroups' arrivals in:
    one int32 per kv head, zero between dispatches (each layer's kernel leaves it as it found it,
    so every layer shares it)."""
    return f"const:counters:{kv_heads}x1"


@generator("attention")
def attention(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    """Unsplit: one workgroup per kv head walks the whole cache (no combine dispatch)."""
    if node.shape[2] != 1:
        raise KeyError("fused attention needs one query row")
    return _attention_spec(node, g, opts, None)


@generator("attention_partial")
def attention_partial(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    return _attention_spec(node, g, opts, (int(node.attrs["split_unit"]), int(node.attrs["max_splits"])))


@generator("attention_combine")
def attention_combine(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    p = g[node.inputs[0]]
    nh, smax, width = p.shape
    unit = int(node.attrs["split_unit"])
    build = lambda: _combine_func(nh, width - SPLIT_STATS, unit, smax)  # noqa: E731
    live = _live_splits(unit, smax)  # what a merge reads: the step's split records, not every slot
    return KernelSpec(f"attention_combine:{shape_key(p)}:{unit}", "attention", build, [p.name, node.name], [1],
                      flops=f"6*{nh}*{width}*{live}", bytes=f"4*{nh}*{width}*{live} + {bytes_expr([node], 0)}",
                      variants=[("attention-combine", build)])
