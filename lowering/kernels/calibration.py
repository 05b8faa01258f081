"""Calibration kernels shipped in every compiled module: the benchmark's memory ceiling.

A device copy is the bandwidth any kernel can hope for; it is a WGSL kernel like the others (not
``copy_buffer_to_buffer``) so it runs, and is timed, exactly as they are: vec4 loads and stores,
``total`` vec4 elements, four per thread (more bytes in flight per thread).
"""

from tvm.script import tirx as T

from lowering.kernels.spec import KernelSpec

COPY_KERNEL = "calibration_copy"


def _copy():
    @T.prim_func(private=True)
    def copy(var_a: T.handle, var_b: T.handle):
        total = T.int32()
        A = T.match_buffer(var_a, (total,), "float32x4")
        B = T.match_buffer(var_b, (total,), "float32x4")
        for bx in T.thread_binding((total + 1023) // 1024, thread="blockIdx.x"):
            for tx in T.thread_binding(256, thread="threadIdx.x"):
                for u in T.unroll(4):
                    if bx * 1024 + u * 256 + tx < total:
                        B[bx * 1024 + u * 256 + tx] = A[bx * 1024 + u * 256 + tx]

    return copy


def copy_spec() -> KernelSpec:
    return KernelSpec("calibration:copy_vec4", "copy", _copy, ["src", "dst"], [1], bytes="32*total",
                      variants=[("vec4-copy", _copy)])
