"""The ``fuse_prefill_swiglu`` pass: prefill's gate and up GEMMs and their ``silu_mul`` become one GEMM.

Traced and after ``fuse_elementwise``, a prefill MLP is

    g = matmul(x, Wg)  [seq, ffn]   (gate_proj, GEMM)
    u = matmul(x, Wu)  [seq, ffn]   (up_proj, GEMM)
    h = silu_mul(g, u) [seq, ffn]   -> down_proj

three dispatches and two [seq, ffn] f32 tensors written and read again. At the 0.6B shape
(hidden 1024, ffn 3072, a 512-token chunk) each GEMM is 4 x 24 = 96 workgroups of 128 x 128 on a
132-SM GPU: neither fills it. ``fused_gemm(x, Wg, Wu)`` with ``swiglu`` is one GEMM over both
weights (``lowering.kernels.gemm``: each workgroup's weight tile is half gate rows, half the same
up rows, so each A tile staged in shared memory serves both weights, the grid has the
workgroups of both GEMMs, and ``silu(g) * u`` is computed from registers before the only store).
The decode counterpart is ``lowering.passes.fuse_decode_gemv``'s SwiGLU GEMV.

Fused only when the two matmuls are plain weight GEMMs (classified ``gemm``, no residual, not
row chunks of a split weight: ``split_of``), read the same activation, have weights of one shape
and storage format, are read by the ``silu_mul`` alone, and K is one ``gemm.supports``; anything
else keeps the three kernels, as does ``opts.fuse_prefill_swiglu=False`` (the baseline to time
against). Both matmuls keep their classification in ``fused_matmuls``.
Lives in its own module; ``lowering.pipeline.PASSES`` runs it after ``fuse_prefill_attention``.
"""

from __future__ import annotations

from ir.graph import Graph, Node
from lowering.kernels import gemm
from lowering.options import LowerOptions
from lowering.passes import _matmul_info, _only_use, _plain_gemm, is_decode


def fuse_prefill_swiglu(g: Graph, opts: LowerOptions) -> Graph:
    """Prefill: ``silu_mul(matmul(x, Wg), matmul(x, Wu))`` -> ``fused_gemm(x, Wg, Wu)`` (swiglu)."""
    if is_decode(g) or not opts.fuse_prefill_swiglu:
        return g
    g = g.copy()
    for n in g.by_op("silu_mul"):
        gate, up = (g[i] for i in n.inputs)
        if not (_plain_gemm(g, gate) and _plain_gemm(g, up) and gate.name != up.name
                and _only_use(g, gate, n) and _only_use(g, up, n) and gate.inputs[0] == up.inputs[0]):
            continue
        wg, wu = g[gate.inputs[1]], g[up.inputs[1]]
        if wg.shape != wu.shape or wg.dtype != wu.dtype or not gemm.supports(wg.shape[1]):
            continue
        g.replace(n, Node(n.name, "fused_gemm", [gate.inputs[0], wg.name, wu.name], n.shape, n.dtype,
                          {"swiglu": True, "kernel_class": "gemm"},
                          {"fused_matmuls": [_matmul_info(gate), _matmul_info(up)],
                           "covers": [gate.name, up.name, *n.meta.get("covers", [n.name])],
                           "reason": "SwiGLU: gate and up GEMMs read the same activation: one GEMM over both "
                                     "weights (each workgroup's weight tile half gate rows, half the same up "
                                     "rows; every A tile staged once for both), silu(g) * u in its epilogue"}))
    g.eliminate_dead_code()  # the two GEMMs nothing reads any more
    return g
