"""Prefill weight GEMM ``C[m, n] = sum_k A[m, k] * W[n, k] (+ R[m, n])`` as explicitly scheduled TIR.

dlight's Matmul rule for the webgpu target reaches ~3 TFLOP/s on the H100 (scalar 2-byte weight
loads, see gemv.py for why). This is the classic SIMT tiling with the same vec4 trick: a
workgroup owns a ``64 x 64`` tile of C, 256 threads each own ``4 x 4`` outputs (rows 16 apart,
columns 16 apart: coalesced stores, conflict-free shared reads); per step of
``bk`` along K the workgroup stages a ``64 x bk`` slice of A and of W in shared memory (vec4
loads, W widened to f32 once), and each thread does 16 vec4 dot products per 8 shared loads.
Rows beyond ``seq`` and columns beyond N are clamped on load and skipped on store. A quantized
weight (``lowering.kernels.quant``) is dequantized while its slice is staged: the shared tile holds
f32 values whatever the format, so the inner loop is the same for all.
"""

from collections.abc import Callable

from tvm import tirx
from tvm.script import tirx as T

from lowering.kernels.quant import WeightRead


def supports(k: int) -> bool:
    return k % 16 == 0


def gemm_func(n: int, k: int, wdtype: str, residual: bool, tile: int = 64, per: int = 4,
              prefetch: bool = False) -> Callable[[], object]:
    """A ``tile x tile`` block of C per workgroup, ``per x per`` outputs per thread (rows and
    columns ``tile / per`` apart). Bigger blocks re-use each staged value more (per thread:
    ``2 * per`` shared loads feed ``per * per`` vec4 FMAs) at the cost of registers and fewer
    workgroups. ``prefetch`` loads the next K slice from memory into registers while the current
    one is multiplied (register double buffering), hiding global-load latency behind the math."""
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


# (tile, outputs per thread, prefetch): the candidates runtime.tune times per GEMM shape
SCHEDULES = ((64, 4, False), (64, 4, True), (128, 8, False), (128, 8, True), (64, 8, True))


def schedules(n: int, k: int, wdtype: str, residual: bool) -> list[tuple[str, Callable[[], object]]]:
    """Every tiling as a named variant: the first is built by default, the tuner picks among all."""
    return [(f"tiled-gemm({tile}x{tile} tile, {per}x{per} per thread{', prefetch' if pf else ''})",
             gemm_func(n, k, wdtype, residual, tile, per, pf)) for tile, per, pf in SCHEDULES]
