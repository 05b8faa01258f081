"""Prefill weight GEMM ``C[m, n] = sum_k A[m, k] * W[n, k] (+ R[m, n])`` as explicitly scheduled TIR.

dlight's Matmul rule for the webgpu target reaches ~3 TFLOP/s on the H100 (scalar 2-byte weight
loads, see gemv.py for why). This is the classic SIMT tiling with the same vec4 trick: a
workgroup owns a ``64 x 64`` tile of C, 256 threads each own ``4 x 4`` outputs (rows 16 apart,
columns 16 apart: coalesced stores, conflict-free shared reads); per step of
``bk`` along K the workgroup stages a ``64 x bk`` slice of A and of W in shared memory (vec4
loads, W widened to f32 once), and each thread does 16 vec4 dot products per 8 shared loads.
Rows beyond ``seq`` and columns beyond N are clamped on load and skipped on store.
"""

from collections.abc import Callable

from tvm import tirx
from tvm.script import tirx as T

TILE = 64  # rows and columns of C per workgroup
THREADS = 16  # per dimension: 16 x 16 threads, 4 x 4 outputs each


def supports(k: int) -> bool:
    return k % 16 == 0


def gemm_func(n: int, k: int, wdtype: str, residual: bool) -> Callable[[], object]:
    bk = 32 if k % 32 == 0 else 16
    bk4 = bk // 4
    k4 = k // 4
    loads = TILE * bk4 // (THREADS * THREADS)  # vec4 loads per thread per operand and step
    wvec = f"{wdtype}x4"

    def build():
        @T.prim_func(private=True)
        def gemm(var_a: T.handle, W: T.Buffer((n, k4), dtype=wvec), var_r: T.handle, var_c: T.handle):
            seq = T.int32()
            A = T.match_buffer(var_a, (seq, k4), "float32x4")
            R = T.match_buffer(var_r, (seq, n), "float32")
            C = T.match_buffer(var_c, (seq, n), "float32")
            for by in T.thread_binding((n + TILE - 1) // TILE, thread="blockIdx.y"):
                for bx in T.thread_binding((seq + TILE - 1) // TILE, thread="blockIdx.x"):
                    for ty in T.thread_binding(THREADS, thread="threadIdx.y"):
                        for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                            # k-major tiles: thread (ty, tx) reads rows ty + 16 i of A and tx + 16 j of W,
                            # so a warp reads consecutive vec4s (no shared-memory bank conflicts)
                            a_sh = T.alloc_buffer((bk4, TILE), "float32x4", scope="shared")
                            w_sh = T.alloc_buffer((bk4, TILE), "float32x4", scope="shared")
                            acc = T.alloc_buffer((16,), "float32", scope="local")
                            av = T.alloc_buffer((4,), "float32x4", scope="local")
                            wv = T.alloc_buffer((4,), "float32x4", scope="local")
                            for i in T.unroll(16):
                                acc[i] = T.float32(0)
                            for ko in range(k // bk):
                                for l in T.unroll(loads):
                                    a_sh[(l * 256 + ty * 16 + tx) % bk4, (l * 256 + ty * 16 + tx) // bk4] = A[
                                        T.min(bx * TILE + (l * 256 + ty * 16 + tx) // bk4, seq - 1),
                                        ko * bk4 + (l * 256 + ty * 16 + tx) % bk4]
                                    w_sh[(l * 256 + ty * 16 + tx) % bk4, (l * 256 + ty * 16 + tx) // bk4] = T.Cast(
                                        "float32x4", W[T.min(by * TILE + (l * 256 + ty * 16 + tx) // bk4, n - 1),
                                                       ko * bk4 + (l * 256 + ty * 16 + tx) % bk4])
                                T.tvm_storage_sync("shared")
                                for kk in T.unroll(bk4):
                                    for i in T.unroll(4):
                                        av[i] = a_sh[kk, ty + 16 * i]
                                        wv[i] = w_sh[kk, tx + 16 * i]
                                    for i in T.unroll(4):
                                        for j in T.unroll(4):
                                            acc[i * 4 + j] = acc[i * 4 + j] + T.call_pure_extern(
                                                "float32", "dot", av[i], wv[j])
                                T.tvm_storage_sync("shared")
                            for i in T.unroll(4):
                                for j in T.unroll(4):
                                    if bx * TILE + ty + 16 * i < seq and by * TILE + tx + 16 * j < n:
                                        if residual:
                                            C[bx * TILE + ty + 16 * i, by * TILE + tx + 16 * j] = acc[i * 4 + j] + R[
                                                bx * TILE + ty + 16 * i, by * TILE + tx + 16 * j]
                                        else:
                                            C[bx * TILE + ty + 16 * i, by * TILE + tx + 16 * j] = acc[i * 4 + j]

        if residual:
            return gemm
        return tirx.PrimFunc([p for p in gemm.params if p.name != "R"], gemm.body, gemm.ret_type, gemm.attrs)

    return build
