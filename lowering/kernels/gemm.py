"""Prefill weight GEMM ``C[m, n] = sum_k A[m, k] * W[n, k] (+ R[m, n])`` as explicitly scheduled TIR.

dlight's Matmul rule for the webgpu target reaches ~3 TFLOP/s on the H100 (scalar 2-byte weight
loads, see gemv.py for why). These are classic SIMT tilings with vec4 everywhere. A family of
``Tiling`` variants (runtime.tune picks per shape) comes from one builder, ``outer_gemm_func``:

- a workgroup owns a ``bm x bn`` tile of C; each thread ``pm x pn`` outputs as ``pm * pn / 4``
  vec4 accumulators (rows ``4 tm`` apart in quads, columns likewise: coalesced vec4 stores);
- per K slice of ``bk`` both operands are staged in shared memory *k-major with the vec4 along
  M / N*: ``a_sh[k, m / 4]``, ``w_sh[k, n / 4]``. The inner loop is then an outer product: per k
  a thread reads ``pm / 4 + pn / 4`` vec4s (W: 16 consecutive vec4s per half warp, conflict-free;
  A: broadcast) and issues ``pm * pn / 4`` vec4 FMAs, exactly one FMA per multiply-add. (The
  earlier k-along-vec4 tiles needed ``acc + dot(a, w)``: 5 instructions per 4 multiply-adds.)
- global memory is read as vec4s along K (the only contiguous direction of both operands; f16
  weights as ``float16x4``, quantized ones dequantized by ``WeightRead.vec4``): each thread loads
  4x4 blocks (4 rows at one k4) and transposes them in registers while storing to shared memory,
  so shared memory holds f32 whatever the weight format. The block-to-thread mapping puts 8
  consecutive row quads on 8 consecutive lanes (conflict-free 16-byte shared stores) and 4
  consecutive k4 on the next lanes (each row read as 64 contiguous bytes for A, a full 32-byte
  sector for f16 W);
- ``stages=2``: two shared buffers; the next slice's global loads are issued before the current
  slice is multiplied and stored to the other buffer after it, one barrier per slice. The K loop
  is unrolled by two so each half names its buffers statically: TVM's ThreadSync cannot tell two
  halves of one buffer apart and would add a second barrier. ``stages=1``: one buffer, register
  prefetch, two barriers per slice, but twice the ``bk`` in the same shared memory.

``splits`` (split-K): a 512-row chunk against N = 1024 (the 0.6B's o and down) is 32 tiles of
128 x 128, a quarter of an H200's 132 SMs, so such GEMMs ran 64 x 64 tiles at 4 x 4 per thread (21
TFLOP/s where 128 x 128 at 8 x 8 reaches 33 on a full grid), and the 4B's o and down (N = 2560) are
80 tiles. A split-K tiling
runs ``splits`` workgroups per C tile, each over ``K / splits`` (blockIdx.y is (split, column
tile); the slice counts of the splits differ by at most one where ``splits`` does not divide
them), in one dispatch: each stores its accumulators as a record in a scratch buffer, fences it
(``storageBarrier()``) and takes a ticket from the tile's arrival counter; the last to arrive sums
the records in split order (the same float sum whichever workgroup is last: deterministic),
applies the epilogue and resets the counter. This is the fused attention merge's pattern
(``attention.py``: what it rests on, driver behaviour with naga's device-scope barrier). The
records and counters are runtime constants (``schedules``' extra args) that every schedule of the kernel
takes as params and only the split-K ones bind, so the runtime allocates them only when the
tuner picks a split-K schedule, and then as much as the picked schedules declare (the ``P``
param's size: ``Binding.bytes``).

Rows beyond ``seq`` and columns beyond N are clamped on load and skipped on store. Every variant
stays within 32 KiB of shared memory (lavapipe's limit; NVIDIA's Vulkan limit is 48 KiB).

``swiglu``: the prefill MLP's ``silu(A Wg^T) * (A Wu^T)`` as one GEMM over both weights
(``lowering.fuse_prefill_swiglu``). The ``bn`` columns of the workgroup's weight tile are
``bn / 2`` gate rows then the same ``bn / 2`` up rows, so the workgroup owns a ``bm x bn / 2``
tile of C. A thread's column quads are ``tn`` apart, so with an even ``pn / 4`` its first half
are gate columns and its second half the *same* columns of up (``qn / 2 = tn pn / 8`` quads
further): ``silu(g) * u`` is a register-local epilogue. Everything else is the plain schedule:
the same shared tiles, accumulators per thread and FMAs per shared read, each A slice staged
once for both weights, and the grid has as many workgroups as both GEMMs together. Why not a
full ``pm x pn`` accumulator set per weight: twice the accumulators (128 floats a thread in the
8x8 tilings: fewer resident warps) and twice W's shared tile (the 128x128, bk 16 double-buffered
tiling would need 48 KiB, over lavapipe's 32 KiB). The W side of a slice's blocks is gate blocks
then up blocks, split on a warp boundary (``Tiling.fits``), so picking the weight binding is a
warp-uniform branch like A vs W. Tilings with ``pn = 4`` have no such split and are not offered.

``packed``: prefill's q, k and v projections as one GEMM ``[A Wq^T | A Wk^T | A Wv^T]``
(``lowering.fuse_prefill_qkv``), three weight params of their own row counts, each a whole number of
column tiles (``schedules`` offers only the tilings whose ``bn`` divides all three): a workgroup's
column tile lies in one weight, so its W loads pick the weight by a workgroup-uniform branch on the
tile's first column and read rows relative to that weight (its own ``WeightRead``: a quantized
weight's scales sit after its own codes). Everything else is the plain schedule; N = nq + nk + nv
gives the grid the workgroups of all three GEMMs.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

from common.manifest import SCRATCH_PREFIX
from lowering.kernels.quant import WeightRead


def supports(k: int) -> bool:
    return k % 16 == 0


@dataclass(frozen=True)
class Tiling:
    """One prefill GEMM schedule: ``bm x bn`` C tile per workgroup, ``pm x pn`` outputs per thread
    (multiples of 4: vec4 accumulators), ``bk`` values of K per shared slice, ``stages`` shared
    buffers (1: register prefetch, 2: double buffering)."""

    bm: int
    bn: int
    pm: int
    pn: int
    bk: int
    stages: int
    splits: int = 1

    @property
    def threads(self) -> int:
        return (self.bm // self.pm) * (self.bn // self.pn)

    @property
    def shared_bytes(self) -> int:
        return self.stages * (self.bm + self.bn) * self.bk * 4

    @property
    def name(self) -> str:
        return (f"outer-gemm({self.bm}x{self.bn} tile, {self.pm}x{self.pn} per thread, bk {self.bk}, "
                f"{'double-buffered' if self.stages == 2 else 'prefetch'}"
                f"{f', split-K {self.splits}' if self.splits > 1 else ''})")

    def fits(self, k: int, swiglu: bool = False, packed: tuple[int, ...] | None = None) -> bool:
        """Whether this tiling's slices divide K (with split-K, at least two slices per split: a split
        of one slice would spend a whole record and merge on 16 values of K; the splits' slice counts
        differ by at most one, ``first_slice``); with ``swiglu``, whether each thread's column quads split
        into matching gate and up halves (an even ``pn / 4``) and the gate | up boundary of the W
        blocks falls on a warp boundary (``bn`` a multiple of 64; module docstring); with ``packed``,
        whether every segment is a whole number of column tiles."""
        slices = 2 * self.splits if self.splits > 1 else 1
        return k % self.bk == 0 and k // self.bk >= slices and (not swiglu or (
            self.pn % 8 == 0 and self.bn % 64 == 0 and self.bn // 8 * self.bk // 4 % 32 == 0)) and (
            packed is None or all(s % self.bn == 0 for s in packed))

    def tiles(self, n: int, rows: int, swiglu: bool = False) -> int:
        """C tiles (workgroups per split: the split-K arrival counters) for up to ``rows`` rows; with
        ``swiglu`` a tile has ``bn / 2`` columns of C."""
        return -(-rows // self.bm) * -(-n // (self.bn // 2 if swiglu else self.bn))

    def scratch_vec4s(self, n: int, rows: int, swiglu: bool = False) -> int:
        """vec4s of the split-K records for up to ``rows`` rows of C: every workgroup's accumulators
        (``bm * bn`` values), ``splits`` per C tile."""
        return self.splits * self.tiles(n, rows, swiglu) * self.bm * self.bn // 4

    def label(self, swiglu: bool = False) -> str:
        """The variant name: with ``swiglu``, the tile's columns are half gate, half up."""
        return self.name.replace("outer-gemm(", "outer-gemm-swiglu(", 1).replace(
            " tile,", f" tile = {self.bn // 2} gate + {self.bn // 2} up columns,", 1) if swiglu else self.name


def outer_gemm_func(n: int, k: int, wdtype: str, residual: bool, t: Tiling,
                    swiglu: bool = False, rows: int = 0, packed: tuple[int, int, int] | None = None
                    ) -> Callable[[], object]:
    """The builder of one ``Tiling`` (module docstring: layout, loads, pipelining); ``swiglu``:
    ``C = silu(A W^T) * (A U^T)``, the tile's columns half W rows, half the same U rows. ``rows``
    (the prefill chunk: the most rows of C), when > 0: the kernel takes the split-K scratch and
    counters (``P``, ``CNT``) as params, used by split-K tilings (module docstring) and left
    unbound by the others (TVM drops unused buffer params), so every variant of a kernel takes the
    same args. ``packed=(n_w, n_u, n_x)``: ``C = [A W^T | A U^T | A X^T]`` (N = their sum), each
    segment a multiple of ``bn``: a column tile lies in one weight, picked by a workgroup-uniform
    branch (prefill q | k | v, ``lowering.fuse_prefill_qkv``)."""
    bm, bn, pm, pn, bk, stages, splits = t.bm, t.bn, t.pm, t.pn, t.bk, t.stages, t.splits
    assert pm % 4 == 0 and pn % 4 == 0 and bk % 4 == 0 and stages in (1, 2), t
    assert not (swiglu and residual) and t.fits(k, swiglu, packed) and (splits == 1 or rows > 0), t
    assert packed is None or (len(packed) == 3 and sum(packed) == n and not swiglu), (t, packed)
    tm, tn = bm // pm, bn // pn  # threads along M and N
    nt = tm * tn
    bk4, k4, slices = bk // 4, k // 4, k // bk  # K slices in all
    qm, qn, pqm, pqn = bm // 4, bn // 4, pm // 4, pn // 4  # quads per tile / per thread
    nacc = pm * pqn  # vec4 accumulators per thread
    na, nw = qm * bk4, qn * bk4  # 4x4 blocks per K slice, A then W: block ids [0, na + nw)
    assert qm % 8 == 0 and qn % 8 == 0 and na % 32 == 0, t  # whole warps on either side
    loads = (na + nw + nt - 1) // nt  # blocks per thread per slice
    rw = WeightRead(wdtype, n, k)
    # the weight params' reads: W (and swiglu's U) of n rows, or the packed segments
    rws = [WeightRead(wdtype, s, k) for s in packed] if packed else [rw, rw, rw]
    three = packed is not None  # (TVMScript's `if` takes a bool, not a tuple)
    vec_out = n % 4 == 0  # C and R as vec4 rows (else per-value stores)
    cdt, cols = ("float32x4", n // 4) if vec_out else ("float32", n)
    # swiglu: W blocks [0, nw / 2) are gate rows, [nw / 2, nw) the same rows of up; C columns per
    # workgroup (ob, in quads oq) and per thread (pqo quads) are half the tile's
    nwg, oq, pqo = (nw // 2, qn // 2, pqn // 2) if swiglu else (nw, qn, pqn)
    ob = oq * 4
    nby = (n + ob - 1) // ob  # column tiles; blockIdx.y is (split, column tile)
    p_len, cnt_len = (t.scratch_vec4s(n, rows, swiglu), t.tiles(n, rows, swiglu)) if splits > 1 else (1, 1)

    def col_tile(y):
        return y % nby if splits > 1 else y

    def split_of(y):  # the workgroup's split of K
        return y // nby if splits > 1 else 0

    def first_slice(sk):
        """Split ``sk``'s K slices are [first_slice(sk), first_slice(sk + 1)): as even as the slice
        count allows (a Python int without splits; with splits whose count divides the slices the
        simplifier folds the difference to a constant, else the trip count is a run-time value)."""
        return sk * slices // splits

    def record(sk, tile, i, tid):
        """Accumulator i of thread tid in split sk's record of C tile ``tile``: tile-major, so the
        code does not depend on ``rows`` (only the buffer's size does; the kernel cache keys on
        the code)."""
        return ((tile * splits + sk) * nacc + i) * nt + tid

    def quad(b):  # row quad of block b: lanes 8 apart in b are 8 quads apart...
        return b // (8 * bk4) * 8 + b % 8

    def kq(b):  # ...and the lanes between them take the slice's k4s
        return b // 8 % bk4

    def a_vec(A, seq, bx, b, r, ks):
        return A[T.min(bx * bm + quad(b) * 4 + r, seq - 1), ks * bk4 + kq(b)]

    def w_vec(W, WS, by, b, r, ks, seg: int = 0):
        """Row ``r`` of W block ``b`` of slice ``ks``: 4 values along K as f32 (any weight format);
        ``seg``: the packed segment W is (its rows start ``sum(packed[:seg])`` columns into C)."""
        off, rows_w = (sum(packed[:seg]), packed[seg]) if packed else (0, n)
        return rws[seg].vec4(W, WS, T.min(by * ob + quad(b) * 4 + r - off, rows_w - 1), ks * bk4 + kq(b))

    def column(pv, l, c):  # value c of the block's 4 row vectors: its 4 rows at one k, as a vec4
        return T.Shuffle([pv[l * 4], pv[l * 4 + 1], pv[l * 4 + 2], pv[l * 4 + 3]], [c, 4 + c, 8 + c, 12 + c])

    def row(bx, ty, i):
        return bx * bm + (ty + tm * (i // 4)) * 4 + i % 4

    def col(by, tx, j):  # C column quad of the thread's output quad j
        return by * oq + tx + tn * j

    def result(acc, i, j):
        """The thread's output vec4 ``(i, j)``: the accumulator, or with ``swiglu`` silu(gate) * up,
        up's accumulator ``pqo`` quads further (the same C columns)."""
        if not swiglu:
            return acc[i * pqn + j]
        g = acc[i * pqn + j]
        return g / (T.Broadcast(T.float32(1), 4) + T.exp(-g)) * acc[i * pqn + j + pqo]

    @T.macro
    def fetch(A, W, WS, U, US, X, XS, pv, seq, bx, by, tid, ks):
        """Global -> registers: this thread's blocks of slice ``ks`` (A blocks first, then W, then
        with ``swiglu`` U; the splits fall on warp boundaries, so the branches are uniform per warp;
        ``packed``: the column tile's weight, uniform per workgroup)."""
        for l in T.unroll(loads):
            if tid + l * nt < na:
                for r in T.unroll(4):
                    pv[l * 4 + r] = a_vec(A, seq, bx, tid + l * nt, r, ks)
            elif tid + l * nt < na + nw:
                if swiglu:
                    if tid + l * nt < na + nwg:
                        for r in T.unroll(4):
                            pv[l * 4 + r] = w_vec(W, WS, by, tid + l * nt - na, r, ks)
                    else:  # up's rows: the tile's second half
                        for r in T.unroll(4):
                            pv[l * 4 + r] = w_vec(U, US, by, tid + l * nt - na - nwg, r, ks)
                elif three:
                    if by * ob < packed[0]:
                        for r in T.unroll(4):
                            pv[l * 4 + r] = w_vec(W, WS, by, tid + l * nt - na, r, ks, 0)
                    elif by * ob < packed[0] + packed[1]:
                        for r in T.unroll(4):
                            pv[l * 4 + r] = w_vec(U, US, by, tid + l * nt - na, r, ks, 1)
                    else:
                        for r in T.unroll(4):
                            pv[l * 4 + r] = w_vec(X, XS, by, tid + l * nt - na, r, ks, 2)
                else:
                    for r in T.unroll(4):
                        pv[l * 4 + r] = w_vec(W, WS, by, tid + l * nt - na, r, ks)

    @T.macro
    def stash(a_sh, w_sh, pv, tid):
        """Registers -> shared, each 4x4 block transposed (k-major, vec4 along M / N)."""
        for l in T.unroll(loads):
            if tid + l * nt < na:
                for c in T.unroll(4):
                    a_sh[kq(tid + l * nt) * 4 + c, quad(tid + l * nt)] = column(pv, l, c)
            elif tid + l * nt < na + nw:
                for c in T.unroll(4):
                    w_sh[kq(tid + l * nt - na) * 4 + c, quad(tid + l * nt - na)] = column(pv, l, c)

    @T.macro
    def multiply(a_sh, w_sh, av, wv, acc, ty, tx):
        for kk in T.unroll(bk):
            for i in T.unroll(pqm):
                av[i] = a_sh[kk, ty + tm * i]
            for j in T.unroll(pqn):
                wv[j] = w_sh[kk, tx + tn * j]
            for i in T.unroll(pm):
                for j in T.unroll(pqn):
                    acc[i * pqn + j] = acc[i * pqn + j] + T.Broadcast(T.Shuffle([av[i // 4]], [i % 4]), 4) * wv[j]

    @T.macro
    def store(C, R, acc, seq, bx, cy, ty, tx):
        """The thread's outputs (with the residual added) into C, rows past ``seq`` and columns past
        N skipped."""
        for i in T.unroll(pm):
            for j in T.unroll(pqo):
                if vec_out:
                    if row(bx, ty, i) < seq and col(cy, tx, j) * 4 < n:
                        if residual:
                            C[row(bx, ty, i), col(cy, tx, j)] = result(acc, i, j) + R[row(bx, ty, i), col(cy, tx, j)]
                        else:
                            C[row(bx, ty, i), col(cy, tx, j)] = result(acc, i, j)
                else:
                    for c in T.unroll(4):
                        if row(bx, ty, i) < seq and col(cy, tx, j) * 4 + c < n:
                            if residual:
                                C[row(bx, ty, i), col(cy, tx, j) * 4 + c] = T.Shuffle([result(acc, i, j)], [c]) + R[
                                    row(bx, ty, i), col(cy, tx, j) * 4 + c]
                            else:
                                C[row(bx, ty, i), col(cy, tx, j) * 4 + c] = T.Shuffle([result(acc, i, j)], [c])

    @functools.cache  # parsing the script is most of the build time; a PrimFunc is immutable
    def build():
        @T.prim_func(private=True)
        def gemm(var_a: T.handle, W: T.Buffer((rws[0].rows, rw.units), dtype=rw.unit),
                 WS: T.Buffer((rws[0].scale_len,), "float16"), U: T.Buffer((rws[1].rows, rw.units), dtype=rw.unit),
                 US: T.Buffer((rws[1].scale_len,), "float16"), X: T.Buffer((rws[2].rows, rw.units), dtype=rw.unit),
                 XS: T.Buffer((rws[2].scale_len,), "float16"), var_r: T.handle, P: T.Buffer((p_len,), "float32x4"),
                 CNT: T.Buffer((cnt_len,), "int32"), var_c: T.handle):
            seq = T.int32()
            A = T.match_buffer(var_a, (seq, k4), "float32x4")
            R = T.match_buffer(var_r, (seq, cols), cdt)
            C = T.match_buffer(var_c, (seq, cols), cdt)
            for by in T.thread_binding(nby * splits, thread="blockIdx.y"):
                for bx in T.thread_binding((seq + bm - 1) // bm, thread="blockIdx.x"):
                    for ty in T.thread_binding(tm, thread="threadIdx.y"):
                        for tx in T.thread_binding(tn, thread="threadIdx.x"):
                            a0 = T.alloc_buffer((bk, qm), "float32x4", scope="shared")
                            w0 = T.alloc_buffer((bk, qn), "float32x4", scope="shared")
                            a1 = T.alloc_buffer((bk, qm), "float32x4", scope="shared")  # stages == 2 only
                            w1 = T.alloc_buffer((bk, qn), "float32x4", scope="shared")
                            acc = T.alloc_buffer((nacc,), "float32x4", scope="local")
                            av = T.alloc_buffer((pqm,), "float32x4", scope="local")
                            wv = T.alloc_buffer((pqn,), "float32x4", scope="local")
                            pv = T.alloc_buffer((loads * 4,), "float32x4", scope="local")
                            ticket = T.alloc_buffer((1,), "float32", scope="local")  # split-K only
                            cy = T.meta_var(col_tile(by))
                            k0 = T.meta_var(first_slice(split_of(by)))
                            steps = T.meta_var(first_slice(split_of(by) + 1) - first_slice(split_of(by)))
                            tid = T.meta_var(ty * tn + tx)
                            for i in T.unroll(nacc):
                                acc[i] = T.Broadcast(T.float32(0), 4)
                            fetch(A, W, WS, U, US, X, XS, pv, seq, bx, cy, tid, k0)
                            if stages == 1:
                                for ko in range(steps):
                                    stash(a0, w0, pv, tid)
                                    T.tvm_storage_sync("shared")
                                    fetch(A, W, WS, U, US, X, XS, pv, seq, bx, cy, tid, k0 + T.min(ko + 1, steps - 1))
                                    multiply(a0, w0, av, wv, acc, ty, tx)
                                    T.tvm_storage_sync("shared")
                            else:
                                # slice s lives in buffer s % 2; its loads are in flight during slice s - 1
                                stash(a0, w0, pv, tid)
                                T.tvm_storage_sync("shared")
                                for kp in range(steps // 2):
                                    fetch(A, W, WS, U, US, X, XS, pv, seq, bx, cy, tid, k0 + kp * 2 + 1)
                                    multiply(a0, w0, av, wv, acc, ty, tx)
                                    stash(a1, w1, pv, tid)
                                    T.tvm_storage_sync("shared")
                                    fetch(A, W, WS, U, US, X, XS, pv, seq, bx, cy, tid,
                                          k0 + T.min(kp * 2 + 2, steps - 1))
                                    multiply(a1, w1, av, wv, acc, ty, tx)
                                    stash(a0, w0, pv, tid)
                                    T.tvm_storage_sync("shared")
                                if steps % 2 == 1:
                                    multiply(a0, w0, av, wv, acc, ty, tx)
                            if splits == 1:
                                store(C, R, acc, seq, bx, cy, ty, tx)
                            else:
                                # the split's record, then the C tile's arrival (the fused attention
                                # merge's pattern, module docstring): the last of its splits to arrive
                                # sums the records in split order (the same sum whichever is last),
                                # stores C and resets the counter. The ticket goes through a0 (free
                                # now; a shared int would pass 32 KiB in the 128 x 128 bk 16 tiling)
                                # as a float, and the branch on it holds no barrier
                                for i in T.unroll(nacc):
                                    P[record(split_of(by), bx * nby + cy, i, tid)] = acc[i]
                                T.evaluate(T.call_extern("int32", "storageBarrier"))
                                T.tvm_storage_sync("shared")
                                if tid == 0:  # (a Broadcast of the call would repeat it per lane)
                                    ticket[0] = T.Cast("float32", T.call_extern(
                                        "int32", "atomicAdd", T.address_of(CNT[bx * nby + cy]), 1))
                                    a0[0, 0] = T.Broadcast(ticket[0], 4)
                                T.tvm_storage_sync("shared")
                                T.evaluate(T.call_extern("int32", "storageBarrier"))
                                ticket[0] = T.Shuffle([a0[0, 0]], [0])
                                if ticket[0] == T.float32(splits - 1):
                                    if tid == 0:
                                        T.evaluate(T.call_extern("int32", "atomicStore",
                                                                 T.address_of(CNT[bx * nby + cy]), 0))
                                    for i in T.unroll(nacc):
                                        acc[i] = P[record(0, bx * nby + cy, i, tid)]
                                        for s2 in T.unroll(splits - 1):
                                            acc[i] = acc[i] + P[record(s2 + 1, bx * nby + cy, i, tid)]
                                    store(C, R, acc, seq, bx, cy, ty, tx)

        two = swiglu or three  # weight params in use: W, U, X
        unused = {name for name, used in (("R", residual), ("WS", rw.quantized), ("U", two),
                                          ("US", two and rw.quantized), ("X", three), ("XS", three and rw.quantized),
                                          ("P", rows > 0), ("CNT", rows > 0))
                  if not used}
        return tirx.PrimFunc([p for p in gemm.params if p.name not in unused], gemm.body, gemm.ret_type, gemm.attrs)

    return build


# The outer family runtime.tune chooses from, the default (what an untuned module runs) first: at a
# 512-row prefill chunk the grid is 512 / bm x N / bn workgroups on the card's ~132 SMs, so smaller
# tiles win at small N (every 0.6B shape: 64 x 64, 4 x 4 per thread) and 128 x 128 at large N; per
# thread 8 x 8 halves the shared reads per FMA of 4 x 4. The split-K tilings give the large tiles
# the workgroups small N denies them (module docstring).
TILINGS = (
    Tiling(64, 64, 4, 4, 32, 2),  # 256 threads, 32 KiB: 4x the workgroups of 128 x 128
    Tiling(128, 128, 8, 8, 16, 2),  # 256 threads, 32 KiB: the hand-written probe's shape, double-buffered
    Tiling(128, 128, 8, 8, 8, 2),  # 16 KiB; the unrolled pair of slices is half the code (instruction cache)
    Tiling(128, 128, 8, 8, 16, 1),  # the probe's own schedule plus register prefetch: two barriers per slice
    Tiling(128, 64, 8, 8, 16, 2),  # 128 threads, 24 KiB: twice the workgroups of 128 x 128
    Tiling(64, 128, 8, 8, 16, 2),
    Tiling(64, 64, 8, 8, 16, 2),  # 64 threads, 16 KiB: the 64 x 64 grid with 8 x 8 per thread
    Tiling(128, 128, 8, 8, 16, 2, 2),
    Tiling(128, 128, 8, 8, 16, 2, 4),
    Tiling(128, 64, 8, 8, 16, 2, 2),
    # 3 and 8 (slice counts need not divide: ``first_slice``), for the 4B's o and down (80 tiles at a
    # 512-row chunk): 240 workgroups, one wave at two per SM where split-K 4's 320 leave a second wave
    # a fifth full, or 640. On the H200 split-K 8 won for both (31.4 / 34.0 TFLOP/s), on the H100
    # split-K 3 for o (with q4 weights)
    Tiling(128, 128, 8, 8, 16, 2, 3),
    Tiling(128, 128, 8, 8, 16, 2, 8),
)


def packs(k: int, packed: tuple[int, ...]) -> bool:
    """Whether some tiling computes the packed GEMM of weights with these row counts (each a whole
    number of its column tiles)."""
    return any(t.fits(k, packed=packed) for t in TILINGS if t.splits == 1)


def split_tilings(n: int, k: int, rows: int, swiglu: bool, max_bytes: int,
                  packed: tuple[int, ...] | None = None) -> list[Tiling]:
    """The split-K tilings that fit a GEMM of N=``n``, K=``k`` (``swiglu``: the SwiGLU GEMM of two
    such weights; ``packed``: of weights with these row counts side by side) over up to ``rows``
    rows, their records within one binding of ``max_bytes``."""
    return [t for t in TILINGS
            if t.splits > 1 and t.fits(k, swiglu, packed) and 16 * t.scratch_vec4s(n, rows, swiglu) <= max_bytes]


def schedules(n: int, k: int, wdtype: str, residual: bool, swiglu: bool = False, rows: int = 0,
              max_bytes: int = 0, packed: tuple[int, int, int] | None = None
              ) -> tuple[list[str], list[tuple[str, Callable[[], object]]]]:
    """The extra args the GEMM takes and every tiling that fits as a named variant (the first built
    by default, the tuner picks among all). ``swiglu`` (``C = silu(A W^T) * (A U^T)``): the tilings
    that fit it (``Tiling.fits``). ``rows`` > 0 (the prefill chunk): the ``split_tilings`` too, and
    then the runtime constants they bind, which every variant takes as args: the partial records
    (float32, named for the largest) and the arrival counters (int32 zeros, one per C tile; every
    kernel leaves them at zero, so GEMMs of one size share them). The runtime allocates them only
    if the tuner's choice binds them, and the records as one buffer per step, as large as the
    chosen schedules declare (one dispatch runs at a time). ``packed``: ``C = [A W^T | A U^T | A X^T]``
    over weights of these row counts (N their sum), by the tilings whose column tiles divide each."""
    split = split_tilings(n, k, rows, swiglu, max_bytes, packed) if rows > 0 else []
    args = [f"{SCRATCH_PREFIX}{max(t.scratch_vec4s(n, rows, swiglu) for t in split)}x4",
            f"const:counters:{max(t.tiles(n, rows, swiglu) for t in split)}x1"] if split else []
    return args, [(t.label(swiglu), outer_gemm_func(n, k, wdtype, residual, t, swiglu, rows if split else 0, packed))
                  for t in TILINGS if t.fits(k, swiglu, packed) and (t.splits == 1 or t in split)]
