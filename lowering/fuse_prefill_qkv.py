"""The ``fuse_prefill_qkv`` pass: prefill's q, k and v projections become one GEMM.

After the prefill fusions a layer's attention input is

    q = matmul(x, Wq) -> reshape -> prefill_attention (q RMSNorm + RoPE in its prologue)
    k = matmul(x, Wk) -> reshape -> kv_cache_write    (k RMSNorm + RoPE, cache_k)
    v = matmul(x, Wv) -> reshape -> kv_cache_write    (cache_v)

three GEMMs over one activation. At the 0.6B shape with a 512-token chunk, k and v are each
4 x 8 workgroups of 128 x 128 on a 132-SM GPU, and the three ran at 18-24 TFLOP/s inside the
step where the 6144-column SwiGLU GEMM ran at 29. ``fused_gemm(x, Wq, Wk, Wv)`` with ``packed``
is one GEMM of N = nq + nk + nv whose output row is ``[q | k | v]``
(``lowering.kernels.gemm``: a column tile lies in one weight, picked per workgroup); the
attention reads q from the packed rows (``q_packed``) and the two cache writes their slices
(``packed_offset``), as decode's ``pack_qkv`` does for its packed GEMV.

Fused only when the three are plain weight GEMMs (``_plain_gemm``) of one activation, one K and
one storage format, each read only through its reshape by the attention or its cache write, and
some GEMM tiling's column tile divides every segment; anything else keeps the three kernels, as
does ``opts.fuse_prefill_qkv=False`` (the baseline to time against). The matmuls keep their
classification in ``fused_matmuls``. ``lowering.pipeline.PASSES`` runs it after ``pack_qkv``.
"""

from __future__ import annotations

from ir.graph import Graph, Node
from lowering.kernels import gemm
from lowering.options import LowerOptions
from lowering.passes import _hoist_leaves, _matmul_info, _only_use, _plain_gemm, is_decode


def _projection(g: Graph, view: Node, user: Node) -> Node | None:
    """The plain GEMM behind ``view`` (a reshape read by ``user`` alone), if that is what it is."""
    if view.op != "reshape" or not _only_use(g, view, user):
        return None
    mm = g[view.inputs[0]]
    return mm if _plain_gemm(g, mm) and _only_use(g, mm, view) else None


def fuse_prefill_qkv(g: Graph, opts: LowerOptions) -> Graph:
    """Prefill: the q, k, v GEMMs of each ``prefill_attention`` -> one ``fused_gemm`` (packed)."""
    if is_decode(g) or not opts.fuse_prefill_qkv:
        return g
    g = g.copy()
    _hoist_leaves(g)  # the packed GEMM, at the first projection's place, reads weights traced after it
    for att in g.by_op("prefill_attention"):
        k_read, v_read = g[att.inputs[1]], g[att.inputs[2]]
        kw, vw = g[k_read.inputs[0]], g[v_read.inputs[0]]
        if att.attrs.get("q_packed") or kw.op != "kv_cache_write" or vw.op != "kv_cache_write":
            continue
        if kw.attrs.get("norm_eps") is None or any(
                w.attrs.get(a) is not None for w in (kw, vw) for a in ("packed_offset", "gemv", "written_by")) \
                or vw.attrs.get("norm_eps") is not None:
            continue
        mms = [_projection(g, g[att.inputs[0]], att), _projection(g, g[kw.inputs[1]], kw),
               _projection(g, g[vw.inputs[1]], vw)]
        if None in mms or len({m.inputs[0] for m in mms}) != 1 or len({m.name for m in mms}) != 3:
            continue
        ws = [g[m.inputs[1]] for m in mms]
        k = ws[0].shape[1]
        packed = tuple(int(w.shape[0]) for w in ws)
        if len({(w.shape[1], w.dtype) for w in ws}) != 1 or not gemm.supports(k) or not gemm.packs(k, packed):
            continue
        q_mm = mms[0]
        names = {m.name for m in mms}
        first = next(n for n in g.nodes() if n.name in names)  # every reader of the packed rows comes after it
        name = g.fresh_name(q_mm.name.rsplit(".", 1)[0] + ".qkv_proj")
        qkv = g.insert_before(first, Node(
            name, "fused_gemm", [q_mm.inputs[0], *(w.name for w in ws)],
            (q_mm.shape[0], sum(packed)), "float32", {"packed": True, "kernel_class": "gemm"},
            {"fused_matmuls": [_matmul_info(m) for m in mms],
             "covers": [m.name for m in mms],
             "reason": "q, k, v GEMMs read the same activation: one GEMM over the three weights, packed "
                       "[q | k | v] output rows (a column tile lies in one weight)"}))
        g.replace(att, Node(att.name, att.op, [qkv.name, *att.inputs[1:]], att.shape, att.dtype,
                            {**att.attrs, "q_packed": True}, dict(att.meta)))
        g.replace(kw, Node(kw.name, kw.op, [kw.inputs[0], qkv.name, *kw.inputs[2:]], kw.shape, kw.dtype,
                           {**kw.attrs, "packed_offset": packed[0]}, dict(kw.meta)))
        g.replace(vw, Node(vw.name, vw.op, [vw.inputs[0], qkv.name], vw.shape, vw.dtype,
                           {**vw.attrs, "packed_offset": packed[0] + packed[1]}, dict(vw.meta)))
    g.eliminate_dead_code()  # the three GEMMs and their reshapes
    return g
