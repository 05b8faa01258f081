"""Graph -> Graph passes other than classification: weight dtype, large-weight splitting, fusion.

Each pass copies its input graph and rewrites the copy in the torch.fx way: walk the nodes, match
a pattern, insert or ``replace`` with the fused node, and leave the pattern's other nodes to the
``eliminate_dead_code`` at the end (until then they still count as users, so one match does not
change what a later match in the same pass sees). What a fused node covers and why it was formed
go into ``Node.meta`` (``covers``, ``reason``, ``fused_matmuls``, ``split_of``); ``attrs`` carry only
what the shape rule, the reference executor and the kernel generators compute with.
"""

from __future__ import annotations

from typing import Any

from common.weight_format import of_dtype
from ir.graph import Graph, Node
from ir.ops import LEAF_OPS, infer
from lowering.kernels import attention as attention_kernel
from lowering.options import LowerOptions
from lowering.quantize import weight_dtypes


def _only_use(g: Graph, n: Node, user: Node) -> bool:
    """``user`` is the one node that reads ``n``, and reads it once: fusing the two into one
    kernel loses no other reader of ``n``'s output."""
    return [u.name for u in g.users(n)] == [user.name] and user.inputs.count(n.name) == 1


def is_decode(g: Graph) -> bool:
    """The graph of a decode step (one new row); the fusion passes of either phase ask this."""
    return g.meta.get("dims", {}).get("seq") == 1


def set_weight_dtype(g: Graph, opts: LowerOptions) -> Graph:
    """Weights are stored on the GPU in ``opts.weight_dtype`` (converted at upload), or quantized
    (``opts.quantize``; ``lowering.quantize`` says which): the kernels read the node's dtype."""
    g = g.copy()
    dtypes = weight_dtypes(g, opts)
    for n in g.by_op("weight"):
        n.dtype = dtypes[n.name]
    return g


def set_kv_dtype(g: Graph, opts: LowerOptions) -> Graph:
    """The KV caches are stored in ``opts.kv_dtype`` (f16 halves attention's reads and the cache
    memory); every op over a cache re-infers its type from it, so the cache writes, views and
    outputs carry the storage dtype each kernel must read and write."""
    g = g.copy()
    for n in g.nodes():
        if n.op == "input" and n.attrs.get("role") == "kv_cache":
            n.dtype = opts.kv_dtype
        elif n.op not in LEAF_OPS:
            n.dtype = infer(n.op, [(g[i].shape, g[i].dtype) for i in n.inputs], n.attrs)[1]
    return g


def _chunks(rows: int, cols: int, dtype: str, limit: int) -> list[tuple[int, int]]:
    per = max(64, int(limit // of_dtype(dtype).row_bytes(cols)) // 64 * 64)
    return [(r, min(r + per, rows)) for r in range(0, rows, per)]


def split_large_weights(g: Graph, opts: LowerOptions) -> Graph:
    """A weight larger than one storage binding (lavapipe: 128 MiB; the 0.6B embedding is 311 MB
    in f16) is split into row chunks: the embedding gathers from all chunks in one kernel, a
    matmul becomes one matmul per chunk plus a concat of their outputs."""
    g = g.copy()
    for n in g.nodes():
        if n.op not in ("embedding", "matmul") or len(n.inputs) < 2:
            continue
        w = g[n.inputs[1]]
        if w.op != "weight" or len(w.shape) != 2 or of_dtype(w.dtype).nbytes(w.shape) <= opts.max_binding_bytes:
            continue
        parts = [g.insert_before(n, Node(g.fresh_name(f"{w.name}[{r0}:{r1}]"), "weight", [], (r1 - r0, w.shape[1]),
                                         w.dtype, {**w.attrs, "rows": [r0, r1]}, dict(w.meta)))
                 for r0, r1 in _chunks(w.shape[0], w.shape[1], w.dtype, opts.max_binding_bytes)]
        if n.op == "embedding":
            g.set_inputs(n, [n.inputs[0], *(p.name for p in parts)])
            continue
        reason = n.meta.get("reason", "") + f"; weight split into {len(parts)} row chunks that each fit one " \
            f"storage binding ({opts.max_binding_bytes >> 20} MiB)"
        outs = [g.insert_before(n, Node(g.fresh_name(f"{n.name}[{p.attrs['rows'][0]}:{p.attrs['rows'][1]}]"),
                                        "matmul", [n.inputs[0], p.name], (n.shape[0], p.shape[0]), n.dtype,
                                        dict(n.attrs), {**n.meta, "split_of": n.name, "reason": reason}))
                for p in parts]
        g.replace(n, Node(n.name, "concat", [m.name for m in outs], n.shape, n.dtype, {"axis": -1}))
    g.eliminate_dead_code()  # the whole weight, when no other node reads it
    return g


def fuse_elementwise(g: Graph) -> Graph:
    """``silu(a) * b`` -> ``silu_mul(a, b)``; ``rope(rms_norm(x, w))`` -> ``rms_norm_rope(x, w)``;
    ``x + matmul(..)`` -> matmul with a residual epilogue. Each removes a dispatch and a round trip
    of an activation through memory."""
    g = g.copy()
    for n in g.nodes():
        src = g[n.inputs[0]] if n.inputs else None
        if n.op == "rope" and src.op == "rms_norm" and _only_use(g, src, n):
            g.replace(n, Node(n.name, "rms_norm_rope", list(src.inputs), n.shape, n.dtype,
                              {**n.attrs, "eps": src.attrs["eps"]}, {**n.meta, "covers": [src.name, n.name]}))
        elif n.op == "mul" and src.op == "silu" and _only_use(g, src, n):
            g.replace(n, Node(n.name, "silu_mul", [src.inputs[0], n.inputs[1]], n.shape, n.dtype, dict(n.attrs),
                              {**n.meta, "covers": [src.name, n.name]}))
        elif n.op == "add":
            mm = next((g[i] for i in n.inputs if g[i].op == "matmul" and len(g[i].shape) == 2
                       and len(g[i].inputs) == 2 and _only_use(g, g[i], n) and "split_of" not in g[i].meta), None)
            if mm is not None:  # the matmul takes the residual as a third operand and the add's users
                g.set_inputs(mm, [*mm.inputs, n.inputs[1] if n.inputs[0] == mm.name else n.inputs[0]])
                mm.attrs["epilogue"] = "add"
                mm.meta["covers"] = [mm.name, n.name]
                g.replace_all_uses_with(n, mm)
    g.eliminate_dead_code()
    return g


def elide_layout_transposes(g: Graph, opts: LowerOptions) -> Graph:
    """A transpose that only moves size-1 axes keeps every element where it was (decode's
    ``[1, heads, hd] -> [heads, 1, hd]``): it becomes a reshape, a view that costs no dispatch."""
    g = g.copy()
    for n in g.by_op("transpose"):
        src = g[n.inputs[0]].shape
        moved = [p for p in n.attrs["perm"] if src[p] != 1]  # a symbolic dim may be > 1: it counts as moved
        if moved == sorted(moved):
            g.replace(n, Node(n.name, "reshape", n.inputs, n.shape, n.dtype, {"shape": tuple(n.shape)},
                              {**n.meta, "was": f"transpose{list(n.attrs['perm'])}"}))
    return g


def _plain_gemm(g: Graph, m: Node) -> bool:
    """A weight GEMM with nothing fused into it (no residual operand) and not a split chunk: what
    the prefill fusions of several GEMMs into one (SwiGLU, q | k | v) take."""
    return (m.op == "matmul" and m.attrs.get("kernel_class") == "gemm" and len(m.inputs) == 2
            and g[m.inputs[1]].op == "weight" and "split_of" not in m.meta)


def _matmul_info(m: Node) -> dict[str, Any]:
    """How a matmul a fused kernel now performs was classified (``lowering.dump`` counts these)."""
    return {"name": m.name, "kernel_class": m.attrs.get("kernel_class"), "reason": m.meta.get("reason")}


def _decode_attention(g: Graph, pv: Node) -> Node | None:
    """The fused ``attention`` node for ``pv = matmul(softmax(matmul(q, k_all)), v_all)`` over the
    KV cache with one query row, or None if ``pv`` heads no such pattern."""
    sm = g[pv.inputs[0]]
    if len(pv.shape) != 4 or sm.op != "softmax" or not _only_use(g, sm, pv):
        return None
    qk = g[sm.inputs[0]]
    if qk.op != "matmul" or len(qk.shape) != 4 or not _only_use(g, qk, sm) or qk.shape[2] != 1:
        return None
    if qk.shape[-1] != "total" or g[qk.inputs[1]].op != "kv_cache_read" or g[pv.inputs[1]].op != "kv_cache_read":
        return None
    if not attention_kernel.supports(g[qk.inputs[0]].shape[-1], int(pv.attrs.get("gqa_group", 1))):
        return None
    att = Node(pv.name, "attention", [qk.inputs[0], qk.inputs[1], pv.inputs[1]], pv.shape, pv.dtype,
               {"scale": sm.attrs["scale"], "causal": sm.attrs.get("causal", False),
                "gqa_group": pv.attrs.get("gqa_group", 1)},
               {"fused_matmuls": [_matmul_info(qk), _matmul_info(pv)], "covers": [qk.name, sm.name, pv.name],
                "reason": "decode attention: QK^T, softmax and PV fused over the KV cache (one workgroup per GQA "
                          "group, online softmax over cache tiles)"})
    # q's RMSNorm + RoPE (one query row), reached through views only q reads, become the prologue
    chain, src = [], g[qk.inputs[0]]
    while src.op == "reshape" and _only_use(g, src, chain[-1] if chain else qk):
        chain.append(src)
        src = g[src.inputs[0]]
    if src.op == "rms_norm_rope" and chain and _only_use(g, src, chain[-1]):
        att.inputs = [src.inputs[0], att.inputs[1], att.inputs[2], src.inputs[1]]
        att.attrs.update(q_norm_eps=src.attrs["eps"], rope=src.attrs["rope"])
        att.meta["covers"] = [*src.meta.get("covers", [src.name]), *att.meta["covers"]]
    return att


def fuse_decode_attention(g: Graph, opts: LowerOptions) -> Graph:
    """Decode (one query row): ``matmul(q, k_all) -> softmax -> matmul(., v_all)`` becomes one
    ``attention`` op over the KV cache (one kernel instead of three, the scores never leave the
    workgroup). The two matmuls keep their classification on the fused node."""
    if not is_decode(g):
        return g
    g = g.copy()
    for pv in g.by_op("matmul"):
        att = _decode_attention(g, pv)
        if att is not None:
            g.replace(pv, att)
    g.eliminate_dead_code()
    return g


def _plain_gemv(g: Graph, m: Node) -> bool:
    """A decode weight GEMV with nothing fused yet and vec4-friendly K."""
    return (m.op == "matmul" and m.attrs.get("kernel_class") == "gemv" and len(m.inputs) == 2
            and g[m.inputs[0]].shape[0] == 1 and g[m.inputs[0]].shape[1] % 4 == 0)


def _fuse_swiglu(g: Graph) -> None:
    for n in g.by_op("silu_mul"):
        gate, up = (g[i] for i in n.inputs)
        if (_plain_gemv(g, gate) and _plain_gemv(g, up) and _only_use(g, gate, n) and _only_use(g, up, n)
                and gate.inputs[0] == up.inputs[0] and "split_of" not in gate.meta and "split_of" not in up.meta):
            g.replace(n, Node(n.name, "fused_gemv", [gate.inputs[0], gate.inputs[1], up.inputs[1]], n.shape, n.dtype,
                              {"swiglu": True, "kernel_class": "gemv"},
                              {"fused_matmuls": [_matmul_info(gate), _matmul_info(up)],
                               "covers": [gate.name, up.name, *n.meta.get("covers", [n.name])],
                               "reason": "SwiGLU: gate and up GEMVs read the same activation: one GEMV over both "
                                         "weights, silu(g) * u in its epilogue"}))
    g.eliminate_dead_code()


def _fuse_norm_prologue(g: Graph) -> None:
    for norm in g.by_op("rms_norm"):
        x = g[norm.inputs[0]]
        consumers = g.users(norm)
        if len(x.shape) != 2 or x.shape[0] != 1 or x.shape[1] % 4 or not consumers:
            continue
        if not all(c.inputs[0] == norm.name and (_plain_gemv(g, c) or (
                c.op == "fused_gemv" and "norm_eps" not in c.attrs and "epilogue" not in c.attrs)) for c in consumers):
            continue
        for c in consumers:
            if c.op == "matmul":  # becomes a fused_gemv: only the kernel class carries over
                attrs = {"kernel_class": "gemv"}
                meta = {**c.meta, "fused_matmuls": [_matmul_info(c)], "covers": [c.name]}
            else:
                attrs, meta = dict(c.attrs), dict(c.meta)
            meta["covers"] = [norm.name, *meta["covers"]]
            meta["reason"] = meta.get("reason", "") + f"; RMSNorm {norm.name} fused as the GEMV prologue"
            g.replace(c, Node(c.name, "fused_gemv", [x.name, *c.inputs[1:], norm.inputs[1]], c.shape, c.dtype,
                              {**attrs, "norm_eps": norm.attrs["eps"]}, meta))
    g.eliminate_dead_code()


def fuse_decode_gemv(g: Graph, opts: LowerOptions) -> Graph:
    """Decode: fold work into the weight GEMVs that read the same activation, so it costs no
    dispatch of its own. ``silu(x Wg^T) * (x Wu^T)`` becomes one GEMV over both weights (SwiGLU),
    and an RMSNorm whose every consumer is such a GEMV becomes their prologue (each workgroup
    recomputes the tiny sum of squares from the activation loads it makes anyway)."""
    if not is_decode(g):
        return g
    g = g.copy()
    _fuse_swiglu(g)
    _fuse_norm_prologue(g)
    return g


def fuse_kv_writes(g: Graph, opts: LowerOptions) -> Graph:
    """Fold the producer of each KV-cache write into the write, so the new K/V rows go straight
    into the cache: ``rms_norm_rope`` (K: q/k-norm + RoPE + write in one kernel) and, in decode,
    the V projection GEMV (the GEMV's epilogue stores into the cache row)."""
    g = g.copy()
    for w in g.by_op("kv_cache_write"):
        if len(w.inputs) != 2:
            continue
        src = g[w.inputs[1]]
        if src.op == "rms_norm_rope" and _only_use(g, src, w):
            g.replace(w, Node(w.name, w.op, [w.inputs[0], *src.inputs], w.shape, w.dtype,
                              {**w.attrs, "norm_eps": src.attrs["eps"], "rope": src.attrs["rope"]},
                              {**w.meta, "covers": [*src.meta.get("covers", [src.name]), w.name]}))
            continue
        if src.op != "reshape" or not _only_use(g, src, w):
            continue
        mm = g[src.inputs[0]]
        plain = _plain_gemv(g, mm) or (mm.op == "fused_gemv" and not mm.attrs.get("swiglu")
                                       and "epilogue" not in mm.attrs)
        if not plain or not _only_use(g, mm, src) or "split_of" in mm.meta:
            continue
        g.replace(w, Node(w.name, w.op, [w.inputs[0], *mm.inputs], w.shape, w.dtype,
                          {**w.attrs, "gemv": {"norm_eps": mm.attrs.get("norm_eps")}, "kernel_class": "gemv"},
                          {**w.meta, "fused_matmuls": mm.meta.get("fused_matmuls", [_matmul_info(mm)]),
                           "covers": [*mm.meta.get("covers", [mm.name]), w.name],
                           "reason": mm.meta.get("reason", "") + "; the GEMV stores its row into the KV cache"}))
    g.eliminate_dead_code()
    return g


def _gemv_with_norm(m: Node) -> bool:
    return (m.op == "fused_gemv" and m.attrs.get("norm_eps") is not None and not m.attrs.get("swiglu")
            and "epilogue" not in m.attrs and "split_of" not in m.meta)


def _hoist_leaves(g: Graph) -> None:
    """Inputs and weights first, in their order: a packed GEMV or GEMM, at q's place, reads weights
    traced after q."""
    first: Node | None = None  # the first op node: every leaf after it moves to just before it
    for n in g.nodes():
        if n.op not in LEAF_OPS:
            first = first or n
        elif first is not None:
            g.move_before(first, n)


def pack_qkv(g: Graph, opts: LowerOptions) -> Graph:
    """Decode: q, k and v projections read the same normalized activation: one GEMV over the three
    weights (no weight copy: three bindings, rows picked by segment) writes a packed [q | k | v]
    row and stores v into its cache; K's norm+RoPE+write and the attention prologue read their
    slice of the packed row. Three dispatches become one."""
    if not is_decode(g):
        return g
    g = g.copy()
    _hoist_leaves(g)
    for att in g.by_op("attention"):
        if att.attrs.get("q_norm_eps") is None or att.attrs.get("q_packed"):
            continue
        q_view, kw, vw = g[att.inputs[0]], g[g[att.inputs[1]].inputs[0]], g[g[att.inputs[2]].inputs[0]]
        if q_view.op != "reshape" or kw.op != "kv_cache_write" or vw.op != "kv_cache_write":
            continue
        if kw.attrs.get("norm_eps") is None or kw.attrs.get("packed_offset") is not None \
                or vw.attrs.get("gemv") is None or g[kw.inputs[1]].op != "reshape":
            continue
        q_mm, k_view = g[q_view.inputs[0]], g[kw.inputs[1]]
        k_mm = g[k_view.inputs[0]]
        if not (_gemv_with_norm(q_mm) and _gemv_with_norm(k_mm) and _only_use(g, q_mm, q_view)
                and _only_use(g, q_view, att) and _only_use(g, k_mm, k_view) and _only_use(g, k_view, kw)):
            continue
        x, norm_w = q_mm.inputs[0], q_mm.inputs[-1]
        if not (k_mm.inputs[0] == vw.inputs[1] == x and k_mm.inputs[-1] == vw.inputs[3] == norm_w
                and q_mm.attrs["norm_eps"] == k_mm.attrs["norm_eps"] == vw.attrs["gemv"].get("norm_eps")):
            continue
        wq, wk, wv = q_mm.inputs[1], k_mm.inputs[1], vw.inputs[2]
        nq, nk, nv = (g[w].shape[0] for w in (wq, wk, wv))
        qkv = g.insert_before(q_mm, Node(
            g.fresh_name(q_mm.name.rsplit(".", 1)[0] + ".qkv_proj"), "qkv_gemv", [x, wq, wk, wv, norm_w, vw.inputs[0]],
            (1, nq + nk + nv), "float32", {"norm_eps": q_mm.attrs["norm_eps"], "kernel_class": "gemv"},
            {"fused_matmuls": [*q_mm.meta.get("fused_matmuls", []), *k_mm.meta.get("fused_matmuls", []),
                               *vw.meta.get("fused_matmuls", [])],
             "covers": list(dict.fromkeys([*q_mm.meta["covers"], *k_mm.meta["covers"], *vw.meta["covers"]])),
             "reason": "q, k, v GEMVs share the normalized activation: one GEMV over the three weights, packed "
                       "[q | k | v] output, v also stored into the KV cache"}))
        g.replace(kw, Node(kw.name, kw.op, [kw.inputs[0], qkv.name, kw.inputs[2]], kw.shape, kw.dtype,
                           {**kw.attrs, "packed_offset": nq}, dict(kw.meta)))
        g.replace(vw, Node(vw.name, vw.op, [vw.inputs[0], qkv.name], vw.shape, vw.dtype,
                           {"packed_offset": nq + nk, "written_by": qkv.name}, {"covers": [vw.name]}))
        g.replace(att, Node(att.name, att.op, [qkv.name, *att.inputs[1:]], att.shape, att.dtype,
                            {**att.attrs, "q_packed": True}, dict(att.meta)))
    g.eliminate_dead_code()
    return g


def split_decode_attention(g: Graph, opts: LowerOptions) -> Graph:
    """Decode attention as flash-decoding: ``attention`` becomes ``attention_partial`` (same
    name, operands and fusions; one workgroup per kv head and split of the cache, writing each
    split's softmax state to a small scratch tensor the memory plan gives a slot) and
    ``attention_combine`` (merges the splits). One workgroup per kv head cannot fill a GPU at
    long context (16 on a 132-SM H100 for Qwen3-0.6B); the split count grows with the context.
    ``opts.attention_splits == 1`` keeps the unsplit kernel (one dispatch fewer per layer); the
    split sizes: ``LowerOptions.decode_splits``."""
    if opts.attention_splits == 1:
        return g
    g = g.copy()
    for n in g.by_op("attention"):
        unit, smax = opts.decode_splits(n.attrs.get("gqa_group", 1))
        attrs = {**n.attrs, "max_splits": smax, "split_unit": unit}
        shape, dtype = infer("attention_partial", [(g[i].shape, g[i].dtype) for i in n.inputs], attrs)
        comb_name = g.fresh_name(f"{n.name}.combine")
        part = g.replace(n, Node(n.name, "attention_partial", n.inputs, shape, dtype, attrs, {
            **n.meta, "reason": n.meta.get("reason", "") + (
                f"; flash-decoding: the cache is cut into up to {smax} splits of >= {unit} positions per kv "
                f"head, one workgroup each, merged by {comb_name}")}))
        comb = g.insert_after(part, Node(comb_name, "attention_combine", [part.name], n.shape, n.dtype, {
            "split_unit": unit, "max_splits": smax}, {
            "reason": f"flash-decoding: merges the {smax} split states of {part.name}"}))
        g.replace_all_uses_with(part, comb)
    return g
