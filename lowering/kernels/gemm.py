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
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

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

    @property
    def threads(self) -> int:
        return (self.bm // self.pm) * (self.bn // self.pn)

    @property
    def shared_bytes(self) -> int:
        return self.stages * (self.bm + self.bn) * self.bk * 4

    @property
    def name(self) -> str:
        return (f"outer-gemm({self.bm}x{self.bn} tile, {self.pm}x{self.pn} per thread, bk {self.bk}, "
                f"{'double-buffered' if self.stages == 2 else 'prefetch'})")

    def fits(self, k: int, swiglu: bool = False) -> bool:
        """Whether this tiling divides K; with ``swiglu``, whether each thread's column quads split
        into matching gate and up halves (an even ``pn / 4``) and the gate | up boundary of the W
        blocks falls on a warp boundary (``bn`` a multiple of 64; module docstring)."""
        return k % self.bk == 0 and (not swiglu or (self.pn % 8 == 0 and self.bn % 64 == 0
                                                     and self.bn // 8 * self.bk // 4 % 32 == 0))

    def label(self, swiglu: bool = False) -> str:
        """The variant name: with ``swiglu``, the tile's columns are half gate, half up."""
        return self.name.replace("outer-gemm(", "outer-gemm-swiglu(", 1).replace(
            " tile,", f" tile = {self.bn // 2} gate + {self.bn // 2} up columns,", 1) if swiglu else self.name


def outer_gemm_func(n: int, k: int, wdtype: str, residual: bool, t: Tiling,
                    swiglu: bool = False) -> Callable[[], object]:
    """The builder of one ``Tiling`` (module docstring: layout, loads, pipelining); ``swiglu``:
    ``C = silu(A W^T) * (A U^T)``, the tile's columns half W rows, half the same U rows."""
    bm, bn, pm, pn, bk, stages = t.bm, t.bn, t.pm, t.pn, t.bk, t.stages
    assert pm % 4 == 0 and pn % 4 == 0 and bk % 4 == 0 and k % bk == 0 and stages in (1, 2), t
    assert not (swiglu and residual) and t.fits(k, swiglu), t
    tm, tn = bm // pm, bn // pn  # threads along M and N
    nt = tm * tn
    bk4, k4, steps = bk // 4, k // 4, k // bk
    qm, qn, pqm, pqn = bm // 4, bn // 4, pm // 4, pn // 4  # quads per tile / per thread
    na, nw = qm * bk4, qn * bk4  # 4x4 blocks per K slice, A then W: block ids [0, na + nw)
    assert qm % 8 == 0 and qn % 8 == 0 and na % 32 == 0, t  # whole warps on either side
    loads = (na + nw + nt - 1) // nt  # blocks per thread per slice
    rw = WeightRead(wdtype, n, k)
    vec_out = n % 4 == 0  # C and R as vec4 rows (else per-value stores)
    cdt, cols = ("float32x4", n // 4) if vec_out else ("float32", n)
    # swiglu: W blocks [0, nw / 2) are gate rows, [nw / 2, nw) the same rows of up; C columns per
    # workgroup (ob, in quads oq) and per thread (pqo quads) are half the tile's
    nwg, oq, pqo = (nw // 2, qn // 2, pqn // 2) if swiglu else (nw, qn, pqn)
    ob = oq * 4

    def quad(b):  # row quad of block b: lanes 8 apart in b are 8 quads apart...
        return b // (8 * bk4) * 8 + b % 8

    def kq(b):  # ...and the lanes between them take the slice's k4s
        return b // 8 % bk4

    def a_vec(A, seq, bx, b, r, ks):
        return A[T.min(bx * bm + quad(b) * 4 + r, seq - 1), ks * bk4 + kq(b)]

    def w_vec(W, WS, by, b, r, ks):
        """Row ``r`` of W block ``b`` of slice ``ks``: 4 values along K as f32 (any weight format)."""
        return rw.vec4(W, WS, T.min(by * ob + quad(b) * 4 + r, n - 1), ks * bk4 + kq(b))

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
    def fetch(A, W, WS, U, US, pv, seq, bx, by, tid, ks):
        """Global -> registers: this thread's blocks of slice ``ks`` (A blocks first, then W, then
        with ``swiglu`` U; the splits fall on warp boundaries, so the branches are uniform per warp)."""
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

    @functools.cache  # parsing the script is most of the build time; a PrimFunc is immutable
    def build():
        @T.prim_func(private=True)
        def gemm(var_a: T.handle, W: T.Buffer((n, rw.units), dtype=rw.unit),
                 WS: T.Buffer((rw.scale_len,), "float16"), U: T.Buffer((n, rw.units), dtype=rw.unit),
                 US: T.Buffer((rw.scale_len,), "float16"), var_r: T.handle, var_c: T.handle):
            seq = T.int32()
            A = T.match_buffer(var_a, (seq, k4), "float32x4")
            R = T.match_buffer(var_r, (seq, cols), cdt)
            C = T.match_buffer(var_c, (seq, cols), cdt)
            for by in T.thread_binding((n + ob - 1) // ob, thread="blockIdx.y"):
                for bx in T.thread_binding((seq + bm - 1) // bm, thread="blockIdx.x"):
                    for ty in T.thread_binding(tm, thread="threadIdx.y"):
                        for tx in T.thread_binding(tn, thread="threadIdx.x"):
                            a0 = T.alloc_buffer((bk, qm), "float32x4", scope="shared")
                            w0 = T.alloc_buffer((bk, qn), "float32x4", scope="shared")
                            a1 = T.alloc_buffer((bk, qm), "float32x4", scope="shared")  # stages == 2 only
                            w1 = T.alloc_buffer((bk, qn), "float32x4", scope="shared")
                            acc = T.alloc_buffer((pm * pqn,), "float32x4", scope="local")
                            av = T.alloc_buffer((pqm,), "float32x4", scope="local")
                            wv = T.alloc_buffer((pqn,), "float32x4", scope="local")
                            pv = T.alloc_buffer((loads * 4,), "float32x4", scope="local")
                            for i in T.unroll(pm * pqn):
                                acc[i] = T.Broadcast(T.float32(0), 4)
                            fetch(A, W, WS, U, US, pv, seq, bx, by, ty * tn + tx, 0)
                            if stages == 1:
                                for ko in range(steps):
                                    stash(a0, w0, pv, ty * tn + tx)
                                    T.tvm_storage_sync("shared")
                                    fetch(A, W, WS, U, US, pv, seq, bx, by, ty * tn + tx, T.min(ko + 1, steps - 1))
                                    multiply(a0, w0, av, wv, acc, ty, tx)
                                    T.tvm_storage_sync("shared")
                            else:
                                # slice s lives in buffer s % 2; its loads are in flight during slice s - 1
                                stash(a0, w0, pv, ty * tn + tx)
                                T.tvm_storage_sync("shared")
                                for kp in range(steps // 2):
                                    fetch(A, W, WS, U, US, pv, seq, bx, by, ty * tn + tx, kp * 2 + 1)
                                    multiply(a0, w0, av, wv, acc, ty, tx)
                                    stash(a1, w1, pv, ty * tn + tx)
                                    T.tvm_storage_sync("shared")
                                    fetch(A, W, WS, U, US, pv, seq, bx, by, ty * tn + tx, T.min(kp * 2 + 2, steps - 1))
                                    multiply(a1, w1, av, wv, acc, ty, tx)
                                    stash(a0, w0, pv, ty * tn + tx)
                                    T.tvm_storage_sync("shared")
                                if steps % 2 == 1:
                                    multiply(a0, w0, av, wv, acc, ty, tx)
                            for i in T.unroll(pm):
                                for j in T.unroll(pqo):
                                    if vec_out:
                                        if row(bx, ty, i) < seq and col(by, tx, j) * 4 < n:
                                            if residual:
                                                C[row(bx, ty, i), col(by, tx, j)] = result(acc, i, j) + R[
                                                    row(bx, ty, i), col(by, tx, j)]
                                            else:
                                                C[row(bx, ty, i), col(by, tx, j)] = result(acc, i, j)
                                    else:
                                        for c in T.unroll(4):
                                            if row(bx, ty, i) < seq and col(by, tx, j) * 4 + c < n:
                                                if residual:
                                                    C[row(bx, ty, i), col(by, tx, j) * 4 + c] = T.Shuffle(
                                                        [result(acc, i, j)], [c]) + R[
                                                        row(bx, ty, i), col(by, tx, j) * 4 + c]
                                                else:
                                                    C[row(bx, ty, i), col(by, tx, j) * 4 + c] = T.Shuffle(
                                                        [result(acc, i, j)], [c])

        unused = {name for name, used in (("R", residual), ("WS", rw.quantized), ("U", swiglu),
                                          ("US", swiglu and rw.quantized)) if not used}
        return tirx.PrimFunc([p for p in gemm.params if p.name not in unused], gemm.body, gemm.ret_type, gemm.attrs)

    return build


def gemm_func(n: int, k: int, wdtype: str, residual: bool, tile: int = 64, per: int = 4,
              prefetch: bool = False) -> Callable[[], object]:
    """The earlier dot-product tiling (vec4 along K in shared memory, ``acc += dot(a, w)``), kept
    only as ``BASELINE``, the variant measured fastest before the outer family (4.4 / 8.7 TFLOP/s
    on the H200): delete it once runtime.tune has shown the outer family beats it on every shape.
    A ``tile x tile`` block of C per workgroup, ``per x per`` outputs per thread, ``prefetch``:
    register double buffering of the next K slice."""
    td = tile // per  # threads per dimension
    nt = td * td  # threads per workgroup
    bk = 32 if k % 32 == 0 and tile * per <= 256 else 16
    bk4 = bk // 4
    k4 = k // 4
    steps = k // bk
    loads = tile * bk4 // nt  # vec4 loads per thread per operand and step
    rw = WeightRead(wdtype, n, k)

    def build():
        @T.prim_func(private=True)
        def gemm(var_a: T.handle, W: T.Buffer((n, rw.units), dtype=rw.unit),
                 WS: T.Buffer((rw.scale_len,), "float16"), var_r: T.handle, var_c: T.handle):
            seq = T.int32()
            A = T.match_buffer(var_a, (seq, k4), "float32x4")
            R = T.match_buffer(var_r, (seq, n), "float32")
            C = T.match_buffer(var_c, (seq, n), "float32")
            for by in T.thread_binding((n + tile - 1) // tile, thread="blockIdx.y"):
                for bx in T.thread_binding((seq + tile - 1) // tile, thread="blockIdx.x"):
                    for ty in T.thread_binding(td, thread="threadIdx.y"):
                        for tx in T.thread_binding(td, thread="threadIdx.x"):
                            # k-major tiles: thread (ty, tx) reads rows ty + td i of A and tx + td j of W,
                            # so a warp reads consecutive vec4s (no shared-memory bank conflicts)
                            a_sh = T.alloc_buffer((bk4, tile), "float32x4", scope="shared")
                            w_sh = T.alloc_buffer((bk4, tile), "float32x4", scope="shared")
                            acc = T.alloc_buffer((per * per,), "float32", scope="local")
                            av = T.alloc_buffer((per,), "float32x4", scope="local")
                            wv = T.alloc_buffer((per,), "float32x4", scope="local")
                            pa = T.alloc_buffer((loads,), "float32x4", scope="local")  # the next K slice
                            pw = T.alloc_buffer((loads,), "float32x4", scope="local")
                            for i in T.unroll(per * per):
                                acc[i] = T.float32(0)
                            if prefetch:
                                for l in T.unroll(loads):
                                    pa[l] = A[T.min(bx * tile + (l * nt + ty * td + tx) // bk4, seq - 1),
                                              (l * nt + ty * td + tx) % bk4]
                                    pw[l] = rw.vec4(W, WS, T.min(by * tile + (l * nt + ty * td + tx) // bk4, n - 1),
                                                    (l * nt + ty * td + tx) % bk4)
                            for ko in range(steps):
                                for l in T.unroll(loads):
                                    if prefetch:
                                        a_sh[(l * nt + ty * td + tx) % bk4, (l * nt + ty * td + tx) // bk4] = pa[l]
                                        w_sh[(l * nt + ty * td + tx) % bk4, (l * nt + ty * td + tx) // bk4] = pw[l]
                                    else:
                                        a_sh[(l * nt + ty * td + tx) % bk4, (l * nt + ty * td + tx) // bk4] = A[
                                            T.min(bx * tile + (l * nt + ty * td + tx) // bk4, seq - 1),
                                            ko * bk4 + (l * nt + ty * td + tx) % bk4]
                                        w_sh[(l * nt + ty * td + tx) % bk4, (l * nt + ty * td + tx) // bk4] = rw.vec4(
                                            W, WS, T.min(by * tile + (l * nt + ty * td + tx) // bk4, n - 1),
                                            ko * bk4 + (l * nt + ty * td + tx) % bk4)
                                T.tvm_storage_sync("shared")
                                if prefetch:
                                    # the next slice's loads are in flight while this one is multiplied
                                    for l in T.unroll(loads):
                                        pa[l] = A[T.min(bx * tile + (l * nt + ty * td + tx) // bk4, seq - 1),
                                                  T.min(ko + 1, steps - 1) * bk4 + (l * nt + ty * td + tx) % bk4]
                                        pw[l] = rw.vec4(W, WS, T.min(by * tile + (l * nt + ty * td + tx) // bk4, n - 1),
                                                        T.min(ko + 1, steps - 1) * bk4 + (l * nt + ty * td + tx) % bk4)
                                for kk in T.unroll(bk4):
                                    for i in T.unroll(per):
                                        av[i] = a_sh[kk, ty + td * i]
                                        wv[i] = w_sh[kk, tx + td * i]
                                    for i in T.unroll(per):
                                        for j in T.unroll(per):
                                            acc[i * per + j] = acc[i * per + j] + T.call_pure_extern(
                                                "float32", "dot", av[i], wv[j])
                                T.tvm_storage_sync("shared")
                            for i in T.unroll(per):
                                for j in T.unroll(per):
                                    if bx * tile + ty + td * i < seq and by * tile + tx + td * j < n:
                                        if residual:
                                            C[bx * tile + ty + td * i, by * tile + tx + td * j] = acc[i * per + j] + R[
                                                bx * tile + ty + td * i, by * tile + tx + td * j]
                                        else:
                                            C[bx * tile + ty + td * i, by * tile + tx + td * j] = acc[i * per + j]

        unused = {name for name, used in (("R", residual), ("WS", rw.quantized)) if not used}
        return tirx.PrimFunc([p for p in gemm.params if p.name not in unused], gemm.body, gemm.ret_type, gemm.attrs)

    return build


# (tile, outputs per thread, prefetch) of the dot-product baseline (see gemm_func)
BASELINE = (64, 4, True)

# The outer family runtime.tune chooses from. At a 512-row prefill chunk the grid is
# 512 / bm x N / bn workgroups on the card's ~132 SMs, so smaller tiles win at small N (the 0.6B
# shapes) and 128 x 128 at large N; per thread 8 x 8 halves the shared reads per FMA of 4 x 4.
TILINGS = (
    Tiling(128, 128, 8, 8, 16, 2),  # 256 threads, 32 KiB: the hand-written probe's shape, double-buffered
    Tiling(128, 128, 8, 8, 8, 2),  # 16 KiB; the unrolled pair of slices is half the code (instruction cache)
    Tiling(128, 128, 8, 8, 16, 1),  # the probe's own schedule plus register prefetch: two barriers per slice
    Tiling(128, 64, 8, 8, 16, 2),  # 128 threads, 24 KiB: twice the workgroups of 128 x 128
    Tiling(64, 128, 8, 8, 16, 2),
    Tiling(64, 64, 8, 8, 16, 2),  # 64 threads, 16 KiB: 4x the workgroups of 128 x 128 at the same work per FMA
    Tiling(64, 64, 4, 4, 32, 2),  # 256 threads, 32 KiB: the same grid with more threads (more latency hidden)
)


def schedules(n: int, k: int, wdtype: str, residual: bool,
              swiglu: bool = False) -> list[tuple[str, Callable[[], object]]]:
    """Every tiling as a named variant: the first (the baseline, so an untuned module runs what it
    ran before) is built by default, the tuner picks among all. ``swiglu`` (``C = silu(A W^T) *
    (A U^T)``): the outer tilings that fit it (``Tiling.fits``), the first (128 x 128, 8 x 8 per
    thread, double-buffered) by default; the baseline has no such mode."""
    if swiglu:
        return [(t.label(True), outer_gemm_func(n, k, wdtype, residual, t, True)) for t in TILINGS if t.fits(k, True)]
    tile, per, pf = BASELINE
    out = [(f"tiled-gemm({tile}x{tile} tile, {per}x{per} per thread{', prefetch' if pf else ''})",
            gemm_func(n, k, wdtype, residual, tile, per, pf))]
    return out + [(t.label(), outer_gemm_func(n, k, wdtype, residual, t)) for t in TILINGS if t.fits(k)]
