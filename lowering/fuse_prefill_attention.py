"""The ``fuse_prefill_attention`` pass: prefill's attention chain becomes one flash-attention op.

Traced, prefill attention of a layer is

    q [seq, heads, hd] -> transpose(1, 0, 2) -> reshape [1, heads, seq, hd]
    qk = matmul(q4, kv_cache_read(k), transpose_b)      [1, heads, seq, total]  f32 scores
    p  = softmax(qk, scale, causal)                     [1, heads, seq, total]
    pv = matmul(p, kv_cache_read(v))                    [1, heads, seq, hd]
    -> reshape [heads, seq, hd] -> transpose(1, 0, 2) -> reshape [seq, heads * hd]   (o-proj input)

with q itself ``rms_norm_rope(q_proj)`` (Qwen3's per-head q norm + RoPE): six dispatches (q norm,
q transpose copy, two batched GEMMs, softmax, output transpose copy) and two
``[heads, seq, total]`` f32 slots (886 MiB at the 4B shape, 512-token chunk, 4608 context).
The whole chain becomes one ``prefill_attention(q, k_all, v_all)`` whose kernel
(``lowering.kernels.prefill_attention``) reads q in its traced ``[seq, heads, hd]`` layout and
writes the o-proj's ``[seq, heads * hd]`` directly: no score tensor, no transposes; when q comes
from ``rms_norm_rope`` the kernel applies it too (to the q row each thread holds in registers), so
the fused op reads the raw q projection.

Lives in its own module (not ``lowering.passes``) so it can change without touching the shared
pass file; ``lowering.pipeline.PASSES`` runs it after ``fuse_decode_attention``.
"""

from __future__ import annotations

from typing import Any

from ir.graph import Graph, Node
from lowering.kernels import prefill_attention as kernel
from lowering.options import LowerOptions
from lowering.passes import is_decode


def _only_user(g: Graph, n: Node, op: str) -> Node | None:
    """The single consumer of ``n`` if it has exactly one, reading it once, and it is an ``op``."""
    u = g.users(n)
    return u[0] if len(u) == 1 and u[0].op == op and u[0].inputs.count(n.name) == 1 else None


def _is_head_swap(n: Node | None) -> bool:
    return n is not None and n.op == "transpose" and list(n.attrs["perm"]) == [1, 0, 2]


def _match(g: Graph, pv: Node) -> tuple[list[Node], str, Node] | None:
    """``(nodes the fusion replaces, q source name, the o-proj input node)`` of the chain ending in
    ``pv``, or None when any link differs from the traced pattern (then the unfused path stays)."""
    sm = g[pv.inputs[0]]
    if len(pv.shape) != 4 or sm.op != "softmax" or not sm.attrs.get("causal") or _only_user(g, sm, "matmul") is not pv:
        return None
    qk = g[sm.inputs[0]]
    if qk.op != "matmul" or len(qk.shape) != 4 or _only_user(g, qk, "softmax") is not sm \
            or not qk.attrs.get("transpose_b") or len(qk.inputs) != 2 or len(pv.inputs) != 2:
        return None
    k_all, v_all = g[qk.inputs[1]], g[pv.inputs[1]]
    if k_all.op != "kv_cache_read" or v_all.op != "kv_cache_read" or qk.shape[-1] != "total":
        return None
    if qk.attrs.get("gqa_group", 1) != pv.attrs.get("gqa_group", 1) or pv.attrs.get("transpose_b"):
        return None
    q4 = g[qk.inputs[0]]
    tq = g[q4.inputs[0]] if q4.op == "reshape" and _only_user(g, q4, "matmul") is qk else None
    if not _is_head_swap(tq) or _only_user(g, tq, "reshape") is not q4:
        return None
    r1 = _only_user(g, pv, "reshape")
    t2 = r1 and _only_user(g, r1, "transpose")
    r2 = t2 and _only_user(g, t2, "reshape") if _is_head_swap(t2) else None
    if r2 is None or len(r2.shape) != 2:
        return None
    return [tq, q4, qk, sm, pv, r1, t2], tq.inputs[0], r2


def _matmul_info(m: Node) -> dict[str, Any]:
    """How a matmul the fused kernel now performs was classified (``lowering.dump`` counts these)."""
    return {"name": m.name, "kernel_class": m.attrs.get("kernel_class"), "reason": m.meta.get("reason")}


def fuse_prefill_attention(g: Graph, opts: LowerOptions) -> Graph:
    """Prefill (``seq`` symbolic, ``past = total - seq``): ``matmul(q, k_all) -> softmax(causal)
    -> matmul(., v_all)`` with the q and output transposes around it becomes one
    ``prefill_attention`` op, ``layers.N.attention``, in the o-proj input's place. Kept unfused:
    the decode graph (its own fusion), a chain that differs from the traced pattern, a head_dim or
    GQA group no schedule of the kernel supports (``kernel.supports``: e.g. head_dim not a multiple
    of 4, or > 128), and ``opts.fuse_prefill_attention=False`` (the baseline to time against)."""
    if is_decode(g) or not opts.fuse_prefill_attention:
        return g
    g = g.copy()
    for pv in g.by_op("matmul"):
        m = _match(g, pv)
        if m is None:
            continue
        chain, q, out = m
        qk, sm = chain[2], chain[3]
        group = int(pv.attrs.get("gqa_group", 1))
        hd = g[q].shape[-1]
        if not isinstance(hd, int) or not kernel.supports(hd, group):
            continue
        t = kernel.tilings(hd, group)[0]
        inputs = [q, qk.inputs[1], pv.inputs[1]]
        attrs = {"scale": sm.attrs["scale"], "causal": True, "gqa_group": group}
        covers = [n.name for n in chain] + [out.name]
        reason = (f"prefill attention: QK^T, causal softmax and PV fused (flash attention: online softmax over "
                  f"K/V tiles staged in shared memory, the [heads, seq, total] scores never written, tiles above "
                  f"the causal diagonal skipped); q read as [seq, heads, hd], the o-proj's [seq, heads*hd] "
                  f"written directly (the q and output transposes absorbed); default schedule {t.rows} rows "
                  f"({t.heads} heads x {t.queries} queries) per workgroup")
        src = g[q]
        if src.op == "rms_norm_rope" and _only_user(g, src, "transpose") is chain[0] and hd % 8 == 0:
            # each thread holds a whole q row in registers: the norm and the rotation are thread-local
            inputs = [src.inputs[0], *inputs[1:], src.inputs[1]]
            attrs.update(q_norm_eps=src.attrs["eps"], rope=src.attrs["rope"])
            covers = [*src.meta.get("covers", [src.name]), *covers]
            reason += "; q's RMSNorm + RoPE applied by each thread to the q row it loads (no dispatch, no q tensor)"
        scope = pv.name.rsplit(".", 1)[0] + "." if "." in pv.name else ""
        g.replace(out, Node(g.fresh_name(f"{scope}attention"), "prefill_attention", inputs, out.shape, "float32",
                            attrs, {"fused_matmuls": [_matmul_info(qk), _matmul_info(pv)], "covers": covers,
                                    "reason": reason}))
    g.eliminate_dead_code()  # the chain the fused node replaced
    return g
