"""Graph -> Graph passes other than classification: weight dtype, large-weight splitting, fusion."""

from __future__ import annotations

from common.weight_format import of_dtype
from ir.graph import Graph, Node
from ir.ops import LEAF_OPS, infer
from lowering.kernels import attention as attention_kernel
from lowering.options import LowerOptions
from lowering.quantize import weight_dtypes


def _users(g: Graph) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {n.name: [] for n in g.nodes()}
    for n in g.nodes():
        for i in n.inputs:
            users[i].append(n.name)
    return users


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
    nodes: list[Node] = []
    renamed: dict[str, str] = {}
    existing = {n.name for n in g.nodes()}

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in existing:
            i += 1
            name = f"{base}_{i}"
        existing.add(name)
        return name

    def chunk_nodes(w: Node) -> list[Node]:
        out = []
        for r0, r1 in _chunks(w.shape[0], w.shape[1], w.dtype, opts.max_binding_bytes):
            out.append(Node(fresh(f"{w.name}[{r0}:{r1}]"), "weight", [], (r1 - r0, w.shape[1]), w.dtype,
                            {**w.attrs, "rows": [r0, r1]}))
        return out

    for n in g.nodes():
        n = Node(n.name, n.op, [renamed.get(i, i) for i in n.inputs], n.shape, n.dtype, dict(n.attrs))
        big = [i for i in n.inputs[1:2] if g[i].op == "weight" and len(g[i].shape) == 2
               and of_dtype(g[i].dtype).nbytes(g[i].shape) > opts.max_binding_bytes]
        if not big or n.op not in ("embedding", "matmul"):
            nodes.append(n)
            continue
        parts = chunk_nodes(g[big[0]])
        nodes += parts
        if n.op == "embedding":
            n.inputs = [n.inputs[0], *(p.name for p in parts)]
            nodes.append(n)
            continue
        outs = []
        for p in parts:
            m = Node(fresh(f"{n.name}[{p.attrs['rows'][0]}:{p.attrs['rows'][1]}]"), "matmul", [n.inputs[0], p.name],
                     (n.shape[0], p.shape[0]), n.dtype, {**n.attrs, "split_of": n.name})
            m.attrs["reason"] = n.attrs.get("reason", "") + f"; weight split into {len(parts)} row chunks that " \
                f"each fit one storage binding ({opts.max_binding_bytes >> 20} MiB)"
            nodes.append(m)
            outs.append(m.name)
        nodes.append(Node(n.name, "concat", outs, n.shape, n.dtype, {"axis": -1}))
    return Graph.from_nodes(g.phase, g.meta, nodes)


def fuse_elementwise(g: Graph) -> Graph:
    """``silu(a) * b`` -> ``silu_mul(a, b)``; ``rope(rms_norm(x, w))`` -> ``rms_norm_rope(x, w)``;
    ``x + matmul(..)`` -> matmul with a residual epilogue. Each removes a dispatch and a round trip
    of an activation through memory."""
    users = _users(g)
    nodes: list[Node] = []
    alias: dict[str, str] = {}
    dropped: set[str] = set()
    for n in g.nodes():
        n = Node(n.name, n.op, [alias.get(i, i) for i in n.inputs], n.shape, n.dtype, dict(n.attrs))
        if n.op == "rope" and g[n.inputs[0]].op == "rms_norm" and users[n.inputs[0]] == [n.name]:
            norm = g[n.inputs[0]]
            dropped.add(norm.name)
            n.op, n.inputs = "rms_norm_rope", list(norm.inputs)
            n.attrs.update(eps=norm.attrs["eps"], covers=[norm.name, n.name])
        elif n.op == "mul" and g[n.inputs[0]].op == "silu" and users[n.inputs[0]] == [n.name]:
            silu = g[n.inputs[0]]
            dropped.add(silu.name)
            n.op, n.inputs = "silu_mul", [silu.inputs[0], n.inputs[1]]
            n.attrs["covers"] = [silu.name, n.name]
        elif n.op == "add":
            mm = next((g[i] for i in n.inputs if g[i].op == "matmul" and len(g[i].shape) == 2
                       and users[i] == [n.name] and "split_of" not in g[i].attrs), None)
            if mm is not None:
                other = n.inputs[1] if n.inputs[0] == mm.name else n.inputs[0]
                fused = next(x for x in nodes if x.name == mm.name)
                fused.inputs.append(other)
                fused.attrs["epilogue"] = "add"
                fused.attrs["covers"] = [mm.name, n.name]
                alias[n.name] = mm.name
                continue
        nodes.append(n)
    return Graph.from_nodes(g.phase, g.meta, [n for n in nodes if n.name not in dropped])


def elide_layout_transposes(g: Graph, opts: LowerOptions) -> Graph:
    """A transpose that only moves size-1 axes keeps every element where it was (decode's
    ``[1, heads, hd] -> [heads, 1, hd]``): it becomes a reshape, a view that costs no dispatch."""
    nodes = []
    for n in g.nodes():
        if n.op == "transpose":
            src = g[n.inputs[0]].shape
            moved = [p for p in n.attrs["perm"] if src[p] != 1]  # a symbolic dim may be > 1: it counts as moved
            if moved == sorted(moved):
                n = Node(n.name, "reshape", n.inputs, n.shape, n.dtype,
                         {"shape": tuple(n.shape), "was": f"transpose{list(n.attrs['perm'])}"})
        nodes.append(n)
    return Graph.from_nodes(g.phase, g.meta, nodes)


def fuse_decode_attention(g: Graph, opts: LowerOptions) -> Graph:
    """Decode (one query row): ``matmul(q, k_all) -> softmax -> matmul(., v_all)`` becomes one
    ``attention`` op over the KV cache (one kernel instead of three, the scores never leave the
    workgroup). The two matmuls keep their classification on the fused node."""
    if g.meta.get("dims", {}).get("seq") != 1:
        return g
    users = _users(g)
    fused: dict[str, Node] = {}
    dropped: set[str] = set()
    for pv in g.by_op("matmul"):
        sm = g[pv.inputs[0]]
        if len(pv.shape) != 4 or sm.op != "softmax" or users[sm.name] != [pv.name]:
            continue
        qk = g[sm.inputs[0]]
        if qk.op != "matmul" or len(qk.shape) != 4 or users[qk.name] != [sm.name] or qk.shape[2] != 1:
            continue
        if qk.shape[-1] != "total" or g[qk.inputs[1]].op != "kv_cache_read" or g[pv.inputs[1]].op != "kv_cache_read":
            continue
        if not attention_kernel.supports(g[qk.inputs[0]].shape[-1], int(pv.attrs.get("gqa_group", 1))):
            continue
        matmuls = [_matmul_info(m) for m in (qk, pv)]
        fused[pv.name] = Node(pv.name, "attention", [qk.inputs[0], qk.inputs[1], pv.inputs[1]], pv.shape, pv.dtype,
                              {"scale": sm.attrs["scale"], "causal": sm.attrs.get("causal", False),
                               "gqa_group": pv.attrs.get("gqa_group", 1), "fused_matmuls": matmuls,
                               "covers": [qk.name, sm.name, pv.name],
                               "reason": "decode attention: QK^T, softmax and PV fused over the KV cache (one "
                                         "workgroup per GQA group, online softmax over cache tiles)"})
        dropped |= {qk.name, sm.name}
        # q's RMSNorm + RoPE (one query row) become the attention kernel's prologue
        chain, src = [], g[qk.inputs[0]]
        while src.op == "reshape" and users[src.name] == [chain[-1].name if chain else qk.name]:
            chain.append(src)
            src = g[src.inputs[0]]
        if src.op == "rms_norm_rope" and chain and users[src.name] == [chain[-1].name]:
            att = fused[pv.name]
            att.inputs = [src.inputs[0], att.inputs[1], att.inputs[2], src.inputs[1]]
            att.attrs.update(q_norm_eps=src.attrs["eps"], rope=src.attrs["rope"],
                             covers=[*src.attrs.get("covers", [src.name]), *att.attrs["covers"]])
            dropped |= {src.name, *(c.name for c in chain)}
    nodes = [fused.get(n.name, n) for n in g.nodes() if n.name not in dropped]
    return Graph.from_nodes(g.phase, g.meta, nodes)


def _matmul_info(m: Node) -> dict:
    return {"name": m.name, "kernel_class": m.attrs.get("kernel_class"), "reason": m.attrs.get("reason")}


def _plain_gemv(g: Graph, m: Node) -> bool:
    """A decode weight GEMV with nothing fused yet and vec4-friendly K."""
    return (m.op == "matmul" and m.attrs.get("kernel_class") == "gemv" and len(m.inputs) == 2
            and g[m.inputs[0]].shape[0] == 1 and g[m.inputs[0]].shape[1] % 4 == 0)


def _fuse_swiglu(g: Graph) -> Graph:
    users = _users(g)
    new: dict[str, Node] = {}
    dropped: set[str] = set()
    for n in g.by_op("silu_mul"):
        gate, up = (g[i] for i in n.inputs)
        if (_plain_gemv(g, gate) and _plain_gemv(g, up) and users[gate.name] == users[up.name] == [n.name]
                and gate.inputs[0] == up.inputs[0] and "split_of" not in gate.attrs and "split_of" not in up.attrs):
            new[n.name] = Node(n.name, "fused_gemv", [gate.inputs[0], gate.inputs[1], up.inputs[1]], n.shape, n.dtype,
                               {"swiglu": True, "kernel_class": "gemv",
                                "fused_matmuls": [_matmul_info(gate), _matmul_info(up)],
                                "covers": [gate.name, up.name, *n.attrs.get("covers", [n.name])],
                                "reason": "SwiGLU: gate and up GEMVs read the same activation: one GEMV over both "
                                          "weights, silu(g) * u in its epilogue"})
            dropped |= {gate.name, up.name}
    return Graph.from_nodes(g.phase, g.meta, [new.get(n.name, n) for n in g.nodes() if n.name not in dropped])


def _fuse_norm_prologue(g: Graph) -> Graph:
    users = _users(g)
    new: dict[str, Node] = {}
    dropped: set[str] = set()
    for norm in g.by_op("rms_norm"):
        x = g[norm.inputs[0]]
        consumers = [g[u] for u in users[norm.name]]
        if len(x.shape) != 2 or x.shape[0] != 1 or x.shape[1] % 4 or not consumers:
            continue
        if not all(c.inputs[0] == norm.name and (_plain_gemv(g, c) or (
                c.op == "fused_gemv" and "norm_eps" not in c.attrs and "epilogue" not in c.attrs)) for c in consumers):
            continue
        for c in consumers:
            attrs = dict(c.attrs)
            if c.op == "matmul":
                attrs = {"kernel_class": "gemv", "fused_matmuls": [_matmul_info(c)], "covers": [c.name],
                         "reason": c.attrs.get("reason", "")}
                if "split_of" in c.attrs:
                    attrs["split_of"] = c.attrs["split_of"]
            attrs["norm_eps"] = norm.attrs["eps"]
            attrs["covers"] = [norm.name, *attrs["covers"]]
            attrs["reason"] += f"; RMSNorm {norm.name} fused as the GEMV prologue"
            new[c.name] = Node(c.name, "fused_gemv", [x.name, *c.inputs[1:], norm.inputs[1]], c.shape, c.dtype, attrs)
        dropped.add(norm.name)
    return Graph.from_nodes(g.phase, g.meta, [new.get(n.name, n) for n in g.nodes() if n.name not in dropped])


def fuse_decode_gemv(g: Graph, opts: LowerOptions) -> Graph:
    """Decode: fold work into the weight GEMVs that read the same activation, so it costs no
    dispatch of its own. ``silu(x Wg^T) * (x Wu^T)`` becomes one GEMV over both weights (SwiGLU),
    and an RMSNorm whose every consumer is such a GEMV becomes their prologue (each workgroup
    recomputes the tiny sum of squares from the activation loads it makes anyway)."""
    if g.meta.get("dims", {}).get("seq") != 1:
        return g
    return _fuse_norm_prologue(_fuse_swiglu(g))


def fuse_kv_writes(g: Graph, opts: LowerOptions) -> Graph:
    """Fold the producer of each KV-cache write into the write, so the new K/V rows go straight
    into the cache: ``rms_norm_rope`` (K: q/k-norm + RoPE + write in one kernel) and, in decode,
    the V projection GEMV (the GEMV's epilogue stores into the cache row)."""
    users = _users(g)
    new: dict[str, Node] = {}
    dropped: set[str] = set()
    for w in g.by_op("kv_cache_write"):
        if len(w.inputs) != 2:
            continue
        src = g[w.inputs[1]]
        if src.op == "rms_norm_rope" and users[src.name] == [w.name]:
            new[w.name] = Node(w.name, w.op, [w.inputs[0], *src.inputs], w.shape, w.dtype,
                               {**w.attrs, "norm_eps": src.attrs["eps"], "rope": src.attrs["rope"],
                                "covers": [*src.attrs.get("covers", [src.name]), w.name]})
            dropped.add(src.name)
            continue
        if src.op != "reshape" or users[src.name] != [w.name]:
            continue
        mm = g[src.inputs[0]]
        plain = _plain_gemv(g, mm) or (mm.op == "fused_gemv" and not mm.attrs.get("swiglu")
                                       and "epilogue" not in mm.attrs)
        if not plain or users[mm.name] != [src.name] or "split_of" in mm.attrs:
            continue
        gemv = {"norm_eps": mm.attrs.get("norm_eps")}
        fused = mm.attrs.get("fused_matmuls", [_matmul_info(mm)])
        new[w.name] = Node(w.name, w.op, [w.inputs[0], *mm.inputs], w.shape, w.dtype,
                           {**w.attrs, "gemv": gemv, "kernel_class": "gemv", "fused_matmuls": fused,
                            "covers": [*mm.attrs.get("covers", [mm.name]), w.name],
                            "reason": mm.attrs.get("reason", "") + "; the GEMV stores its row into the KV cache"})
        dropped |= {src.name, mm.name}
    return Graph.from_nodes(g.phase, g.meta, [new.get(n.name, n) for n in g.nodes() if n.name not in dropped])


def pack_qkv(g: Graph, opts: LowerOptions) -> Graph:
    """Decode: q, k and v projections read the same normalized activation: one GEMV over the three
    weights (no weight copy: three bindings, rows picked by segment) writes a packed [q | k | v]
    row and stores v into its cache; K's norm+RoPE+write and the attention prologue read their
    slice of the packed row. Three dispatches become one."""
    if g.meta.get("dims", {}).get("seq") != 1:
        return g
    users = _users(g)
    new: dict[str, Node] = {}
    dropped: set[str] = set()

    def gemv_with_norm(name: str) -> Node | None:
        m = g[name]
        ok = m.op == "fused_gemv" and m.attrs.get("norm_eps") is not None and not m.attrs.get("swiglu") \
            and "epilogue" not in m.attrs and "split_of" not in m.attrs
        return m if ok else None

    for att in g.by_op("attention"):
        if att.attrs.get("q_norm_eps") is None or att.attrs.get("q_packed"):
            continue
        q_view, kw, vw = g[att.inputs[0]], g[g[att.inputs[1]].inputs[0]], g[g[att.inputs[2]].inputs[0]]
        if q_view.op != "reshape" or kw.op != "kv_cache_write" or vw.op != "kv_cache_write":
            continue
        if kw.attrs.get("norm_eps") is None or kw.attrs.get("packed_offset") is not None \
                or vw.attrs.get("gemv") is None or g[kw.inputs[1]].op != "reshape":
            continue
        q_mm, k_mm = gemv_with_norm(q_view.inputs[0]), gemv_with_norm(g[kw.inputs[1]].inputs[0])
        if q_mm is None or k_mm is None or users[q_mm.name] != [q_view.name] or users[q_view.name] != [att.name]:
            continue
        k_view = g[kw.inputs[1]]
        if users[k_mm.name] != [k_view.name] or users[k_view.name] != [kw.name]:
            continue
        x, norm_w = q_mm.inputs[0], q_mm.inputs[-1]
        if not (k_mm.inputs[0] == vw.inputs[1] == x and k_mm.inputs[-1] == vw.inputs[3] == norm_w
                and q_mm.attrs["norm_eps"] == k_mm.attrs["norm_eps"] == vw.attrs["gemv"].get("norm_eps")):
            continue
        wq, wk, wv = q_mm.inputs[1], k_mm.inputs[1], vw.inputs[2]
        nq, nk, nv = (g[w].shape[0] for w in (wq, wk, wv))
        name = q_mm.name.rsplit(".", 1)[0] + ".qkv_proj"
        fused = [*q_mm.attrs.get("fused_matmuls", []), *k_mm.attrs.get("fused_matmuls", []),
                 *vw.attrs.get("fused_matmuls", [])]
        new[q_mm.name] = Node(name, "qkv_gemv", [x, wq, wk, wv, norm_w, vw.inputs[0]], (1, nq + nk + nv), "float32",
                              {"norm_eps": q_mm.attrs["norm_eps"], "kernel_class": "gemv", "fused_matmuls": fused,
                               "covers": list(dict.fromkeys([*q_mm.attrs["covers"], *k_mm.attrs["covers"],
                                                             *vw.attrs["covers"]])),
                               "reason": "q, k, v GEMVs share the normalized activation: one GEMV over the three "
                                         "weights, packed [q | k | v] output, v also stored into the KV cache"})
        new[kw.name] = Node(kw.name, kw.op, [kw.inputs[0], name, kw.inputs[2]], kw.shape, kw.dtype,
                            {**kw.attrs, "packed_offset": nq})
        new[vw.name] = Node(vw.name, vw.op, [vw.inputs[0], name], vw.shape, vw.dtype,
                            {"packed_offset": nq + nk, "written_by": name, "covers": [vw.name]})
        new[att.name] = Node(att.name, att.op, [name, *att.inputs[1:]], att.shape, att.dtype,
                             {**att.attrs, "q_packed": True})
        dropped |= {q_view.name, k_mm.name, k_view.name}
    # leaves first: the packed GEMV (at q's place) reads weights traced after q
    nodes = [new.get(n.name, n) for n in g.nodes() if n.name not in dropped]
    return Graph.from_nodes(g.phase, g.meta, [n for n in nodes if n.op in LEAF_OPS] +
                            [n for n in nodes if n.op not in LEAF_OPS])


def split_decode_attention(g: Graph, opts: LowerOptions) -> Graph:
    """Decode attention as flash-decoding: ``attention`` becomes ``attention_partial`` (same
    name, operands and fusions; one workgroup per kv head and split of the cache, writing each
    split's softmax state to a small scratch tensor the memory plan gives a slot) and
    ``attention_combine`` (merges the splits). One workgroup per kv head cannot fill a GPU at
    long context (16 on a 132-SM H100 for Qwen3-0.6B); the split count grows with the context.
    ``opts.attention_splits <= 1`` keeps the unsplit kernel (one dispatch fewer per layer)."""
    if opts.attention_splits <= 1:
        return g
    nodes: list[Node] = []
    alias: dict[str, str] = {}
    for n in g.nodes():
        n = Node(n.name, n.op, [alias.get(i, i) for i in n.inputs], n.shape, n.dtype, dict(n.attrs))
        if n.op != "attention":
            nodes.append(n)
            continue
        split = {"max_splits": opts.attention_splits, "split_unit": opts.attention_split_unit}
        part = Node(n.name, "attention_partial", n.inputs, n.shape, n.dtype, {**n.attrs, **split})
        part.shape, part.dtype = infer(part.op, [(g[i].shape, g[i].dtype) for i in part.inputs], part.attrs)
        part.attrs["reason"] = n.attrs.get("reason", "") + (
            f"; flash-decoding: the cache is cut into up to {opts.attention_splits} splits of >= "
            f"{opts.attention_split_unit} positions per kv head, one workgroup each, merged by {n.name}.combine")
        comb = Node(f"{n.name}.combine", "attention_combine", [n.name], n.shape, n.dtype,
                    {"reason": f"flash-decoding: merges the {opts.attention_splits} split states of {n.name}"})
        alias[n.name] = comb.name
        nodes += [part, comb]
    return Graph.from_nodes(g.phase, g.meta, nodes)
