"""Weight GEMV ``C[0, n] = sum_k A[0, k] * W[n, k] (+ R[0, n])`` as explicitly scheduled TIR.

Why not dlight: TVM's WebGPU codegen types every storage buffer by its element, so dlight's
"vectorized" loads come out as one 2-byte load per f16 weight. Declaring the weight and the
activation as ``float16x4`` / ``float32x4`` buffers makes every load a 8/16-byte vector load, and
WGSL's ``dot`` does the 4-wide multiply-add. The schedule is a family, swept by measurement
(``benchmarks/tune_gemv.py``): ``ts`` rows per workgroup (threadIdx.y), ``tr`` threads splitting
each row's K (threadIdx.x, consecutive threads read consecutive 8/16-byte vectors: coalesced),
a shared-memory tree reduction across ``tr``. Row and K tails are guarded, so any N and any K
divisible by 4 work.
"""


from collections.abc import Callable

from tvm import tirx
from tvm.script import tirx as T

# (ts, tr): tried by the tuner; the first is the default where no tuning result exists.
VARIANTS: tuple[tuple[int, int], ...] = ((2, 64), (4, 32), (1, 128), (4, 64), (8, 32), (1, 256), (2, 128))


def variant_name(ts: int, tr: int) -> str:
    return f"vec4-gemv(ts={ts},tr={tr})"


def parse_variant(name: str) -> tuple[int, int] | None:
    for ts, tr in VARIANTS:
        if variant_name(ts, tr) == name:
            return ts, tr
    return None


def gemv_func(n: int, k: int, wdtype: str, residual: bool, ts: int, tr: int) -> Callable[[], object]:
    """A builder of the scheduled PrimFunc (built lazily: TVMScript parsing costs ~20 ms)."""
    if k % 4:
        raise ValueError("vec4 GEMV needs K divisible by 4")
    k4 = k // 4
    steps = (k4 + tr - 1) // tr
    levels = tr.bit_length() - 1
    if 1 << levels != tr:
        raise ValueError("tr must be a power of two")
    wvec = f"{wdtype}x4"

    def build():
        @T.prim_func(private=True)
        def gemv(A: T.Buffer((1, k4), "float32x4"), W: T.Buffer((n, k4), dtype=wvec), R: T.Buffer((1, n), "float32"),
                 C: T.Buffer((1, n), "float32")):
            for bx in T.thread_binding((n + ts - 1) // ts, thread="blockIdx.x"):
                for ty in T.thread_binding(ts, thread="threadIdx.y"):
                    for tx in T.thread_binding(tr, thread="threadIdx.x"):
                        red = T.alloc_buffer((ts, tr), "float32", scope="shared")
                        acc = T.alloc_buffer((1,), "float32", scope="local")
                        row = T.min(bx * ts + ty, n - 1)
                        acc[0] = T.float32(0)
                        for i in T.unroll(steps):
                            if k4 % tr == 0 or i * tr + tx < k4:
                                acc[0] = acc[0] + T.call_pure_extern(
                                    "float32", "dot", A[0, i * tr + tx], T.Cast("float32x4", W[row, i * tr + tx]))
                        red[ty, tx] = acc[0]
                        T.tvm_storage_sync("shared")
                        for s in T.unroll(levels):
                            if tx < (tr >> (s + 1)):
                                red[ty, tx] = red[ty, tx] + red[ty, tx + (tr >> (s + 1))]
                            T.tvm_storage_sync("shared")
                        if tx == 0 and bx * ts + ty < n:
                            if residual:
                                C[0, bx * ts + ty] = red[ty, 0] + R[0, bx * ts + ty]
                            else:
                                C[0, bx * ts + ty] = red[ty, 0]

        if residual:
            return gemv
        # without the epilogue the body never reads R; drop the param so it is not a binding
        return tirx.PrimFunc([p for p in gemv.params if p.name != "R"], gemv.body, gemv.ret_type, gemv.attrs)

    return build
