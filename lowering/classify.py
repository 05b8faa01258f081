"""Matmul classification: the heart of the project.

Every matmul gets a kernel class and a human-readable reason. The seed engine's GPU path only
knew ``[K]x[K,N]``, so ``[1,K]x[K,N]`` decode projections and 4-D attention silently fell back to
the CPU. Here each shape is classified explicitly, and an unknown one is a compile error.
"""

from __future__ import annotations

from ir.graph import Graph, Node
from ir.shapes import fmt
from lowering.errors import LoweringError

KERNEL_CLASSES = ("gemv", "gemm", "batched_gemv", "batched_gemm")


def classify(n: Node, g: Graph) -> tuple[str, str]:
    a, b = g[n.inputs[0]], g[n.inputs[1]]
    shapes = f"{fmt(a.shape)}x{fmt(b.shape)}{'ᵀ' if n.attrs.get('transpose_b') else ''}"
    if len(a.shape) == 2 and len(b.shape) == 2 and b.op == "weight":
        M, K = a.shape
        N = n.shape[1]
        if M == 1:
            why = ("the prompt is reduced to its last position (take_last), since generation only needs "
                   "the next-token logits; " if a.op == "take_last" else "")
            return "gemv", (f"{shapes}: [1,{K}]x[{K},{N}], M=1 ({why}one activation row against the weight) "
                            f"-> GEMV, memory-bound: every weight byte is read once")
        return "gemm", (f"{shapes}: [{M},{K}]x[{K},{N}] with M={M}"
                        f"{' symbolic (one row per prompt token)' if isinstance(M, str) else ''} -> GEMM")
    if len(a.shape) == 4 and len(b.shape) == 4 and b.op == "kv_cache_read":
        _, H, M, _ = a.shape
        grp = n.attrs.get("gqa_group", 1)
        what = "QKᵀ (scores)" if n.attrs.get("transpose_b") else "PV (weighted values)"
        gqa = f"GQA group {grp}: query head h reads kv head h//{grp} in place (no repeat_kv copy)" if grp > 1 \
            else "one kv head per query head"
        if M == 1:
            return "batched_gemv", (f"{shapes}: 4-D attention {what}, M=1 per head (decode) -> batched GEMV "
                                    f"over {H} heads; {gqa}; reads the first 'total' KV-cache rows")
        return "batched_gemm", (f"{shapes}: 4-D attention {what}, M={M} per head -> batched GEMM over {H} heads; "
                                f"{gqa}; reads the first 'total' KV-cache rows")
    raise LoweringError(f"node {n.name}: matmul {shapes} ({a.op} x {b.op}) matches no GPU kernel class "
                        f"(supported: [M,K]x[N,K]ᵀ against a weight, 4-D attention against the KV cache)")


def classify_matmuls(g: Graph) -> Graph:
    """Every matmul gets its ``kernel_class`` (an attr: the kernel generators pick by it) and the
    ``reason`` for it (``Node.meta``: for people reading ``lowering.dump``)."""
    g = g.copy()
    for n in g.by_op("matmul"):
        n.attrs["kernel_class"], n.meta["reason"] = classify(n, g)
    return g
