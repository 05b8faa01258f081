"""The closed set of op kinds, with the shape/dtype rule of each.

One table serves the tracer (which infers output types while recording) and the verifier (which
re-infers them and compares), so the two can never disagree about what an op means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ir.shapes import Shape, fmt, same_numel


class OpError(ValueError):
    """An op applied to operands of the wrong shape or dtype."""


Infer = Callable[[list[tuple[Shape, str]], dict[str, Any]], tuple[Shape, str]]
F32 = "float32"


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise OpError(msg)


def _leaf(ins, attrs):  # input / weight: the node's declared type is the truth
    raise AssertionError("leaf ops carry their own type")


def _embedding(ins, attrs):
    (ids, idt), *tables = ins  # several tables: row chunks of one table, in order
    _need(len(ids) == 1 and idt == "int32", f"embedding ids must be int32 [seq], got {idt}{fmt(ids)}")
    _need(bool(tables) and all(len(t) == 2 and t[1] == tables[0][0][1] for t, _ in tables),
          f"embedding tables must be 2-D with one width, got {[fmt(t) for t, _ in tables]}")
    return (ids[0], tables[0][0][1]), F32


def _rms_norm(ins, attrs):
    (x, xd), (w, _) = ins
    _need(len(w) == 1 and w[0] == x[-1], f"rms_norm weight {fmt(w)} does not match last dim of {fmt(x)}")
    return x, xd


def _matmul(ins, attrs):
    (a, ad), (b, _), *res = ins  # optional third operand: a residual added in the epilogue
    tb = attrs.get("transpose_b", False)
    if len(a) == 2 and len(b) == 2:
        k_b, n = (b[1], b[0]) if tb else (b[0], b[1])
        _need(a[1] == k_b, f"matmul K mismatch: {fmt(a)} x {fmt(b)} (transpose_b={tb})")
        _need(all(r == (a[0], n) for r, _ in res), f"matmul residual shape {[fmt(r) for r, _ in res]} != output")
        return (a[0], n), F32
    _need(len(a) == 4 and len(b) == 4, f"matmul needs 2-D or 4-D operands, got {fmt(a)} x {fmt(b)}")
    group = attrs.get("gqa_group", 1)
    _need(a[0] == b[0] and a[1] == b[1] * group,
          f"batched matmul heads mismatch: {fmt(a)} x {fmt(b)} with gqa_group={group}")
    k_b, n = (b[3], b[2]) if tb else (b[2], b[3])
    _need(a[3] == k_b, f"batched matmul K mismatch: {fmt(a)} x {fmt(b)} (transpose_b={tb})")
    return (a[0], a[1], a[2], n), F32


def _attention(ins, attrs):
    """softmax(q k^T * scale, causal) v over the cache, GQA: q [b, heads, m, d], k/v [b, kv_heads, total, d].
    ``k_write`` (decode, packed q): the kernel also stores the new K row (RMSNorm with the 5th
    operand, RoPE) that the cache's ``kv_cache_write`` node, ``written_by`` this one, describes."""
    (q, qd), (k, _), (v, _), *norm = ins
    if attrs.get("q_packed"):  # q is the first heads * d values of a packed [1, N] projection output
        heads = k[1] * attrs.get("gqa_group", 1)
        _need(len(q) == 2 and q[0] == 1 and q[1] >= heads * k[3], f"attention: packed q {fmt(q)} too short")
        q = (1, heads, k[3])
    if attrs.get("q_norm_eps") is not None:  # raw q [1, heads, d]: q RMSNorm + RoPE in the prologue
        # with k_write, the kernel also stores the new K row (its norm weight: a 5th operand)
        want = 1 + (attrs.get("k_write") is not None)
        _need(len(q) == 3 and q[0] == 1 and len(norm) == want and all(tuple(w) == (q[2],) for w, _ in norm),
              f"attention with q prologue needs q [1, heads, d] and {want} [d] norm weight(s), got {fmt(q)}")
        q = (1, q[1], 1, q[2])
    group = attrs.get("gqa_group", 1)
    _need(len(q) == 4 and len(k) == 4 and k == v, f"attention needs q [b,h,m,d] and equal k/v, got {fmt(q)}, "
          f"{fmt(k)}, {fmt(v)}")
    _need(q[1] == k[1] * group and q[3] == k[3], f"attention heads/head_dim mismatch: {fmt(q)} vs {fmt(k)} "
          f"with gqa_group={group}")
    return q, F32


def _prefill_attention(ins, attrs):
    """Causal GQA attention of ``seq`` new rows over the cache (``past = total - seq``): q
    [seq, heads, d] (normed, rotated), k/v [1, kv_heads, total, d] -> [seq, heads * d], the layout
    the o-proj reads (the trace's q transpose and output transpose + reshape are absorbed). With
    ``q_norm_eps`` (and ``rope``), q is raw and a 4th operand is the q RMSNorm weight [d]."""
    (q, _), (k, _), (v, _), *norm = ins
    group = attrs.get("gqa_group", 1)
    if attrs.get("q_packed"):  # q is the first heads * d values of each row of a packed [seq, N] output
        heads = k[1] * group if len(k) == 4 else 0
        _need(len(q) == 2 and len(k) == 4 and q[1] >= heads * k[3], f"prefill_attention: packed q {fmt(q)} too short")
        q = (q[0], heads, k[3])
    _need(len(norm) == (attrs.get("q_norm_eps") is not None) and all(tuple(w) == (q[-1],) for w, _ in norm),
          f"prefill_attention: q norm weight {[fmt(w) for w, _ in norm]} vs q {fmt(q)}, q_norm_eps "
          f"{attrs.get('q_norm_eps')}")
    _need(len(q) == 3 and len(k) == 4 and k == v and k[0] == 1,
          f"prefill_attention needs q [seq,h,d] and equal k/v [1,kv,total,d], got {fmt(q)}, {fmt(k)}, {fmt(v)}")
    _need(q[1] == k[1] * group and q[2] == k[3] and isinstance(q[1], int) and isinstance(q[2], int),
          f"prefill_attention heads/head_dim mismatch: {fmt(q)} vs {fmt(k)} with gqa_group={group}")
    return (q[0], q[1] * q[2]), F32


# attention_partial's per-split record: the unnormalized output [hd], then the split's score max
# and exp-sum, each repeated over 4 values (so the kernels read and write them as vec4s). Slots
# past the step's split count are neither written nor read (the reference fills them with the
# empty state: output 0, max EMPTY_MAX, sum 0); EMPTY_MAX is also a merge's starting max (unlike
# -inf, EMPTY_MAX - EMPTY_MAX is no NaN).
SPLIT_STATS = 8
EMPTY_MAX = -3.0e38


def attention_split(total: int, unit: int, max_splits: int) -> tuple[int, int]:
    """Flash-decoding's cut of cache positions ``0..total``: ``(chunk, splits)``, split ``s``
    covering ``[s * chunk, min((s + 1) * chunk, total))``. ``chunk`` is the smallest multiple of
    ``unit`` that needs at most ``max_splits`` splits, so the split count (workgroups) grows with
    the context until ``max_splits``, and then the chunks grow. The kernels compute the same
    formula in TIR."""
    chunk = (total + unit * max_splits - 1) // (unit * max_splits) * unit
    return chunk, (total + chunk - 1) // chunk


def _attention_partial(ins, attrs):
    """attention's operands; per query head and split slot the partial softmax state
    [heads, max_splits, hd + SPLIT_STATS] (slots past the step's splits: not part of the result)."""
    (_, heads, m, d), _ = _attention(ins, attrs)
    _need(m == 1, f"attention_partial takes one query row, got {m}")
    _need(attrs["split_unit"] > 0 and attrs["max_splits"] > 0, "attention_partial: split_unit and max_splits > 0")
    return (heads, attrs["max_splits"], d + SPLIT_STATS), F32


def _attention_combine(ins, attrs):
    """attention_partial's states [heads, splits, hd + SPLIT_STATS] merged: [1, heads, 1, hd]
    (attrs ``split_unit``, ``max_splits``: the partial's, which say how many slots the step fills)."""
    (p, _), = ins
    _need(attrs.get("split_unit", 0) > 0 and attrs.get("max_splits", 0) > 0,
          "attention_combine: split_unit and max_splits > 0")
    _need(len(p) == 3 and all(isinstance(d, int) for d in p) and p[2] > SPLIT_STATS,
          f"attention_combine needs partial states [heads, splits, hd + {SPLIT_STATS}], got {fmt(p)}")
    return (1, p[0], 1, p[2] - SPLIT_STATS), F32


def _fused_gemv(ins, attrs):
    """[1, K] x [N, K]^T with optional RMSNorm prologue, SwiGLU pair of weights, residual epilogue.
    Operands: x, W, [U if swiglu], [norm weight if norm_eps], [residual if epilogue]."""
    (x, _), (w, _), *rest = ins
    _need(len(x) == 2 and x[0] == 1 and len(w) == 2 and w[1] == x[1], f"fused_gemv needs [1,K] x [N,K], got "
          f"{fmt(x)} x {fmt(w)}")
    want = [(w, "U")] * bool(attrs.get("swiglu")) + [((x[1],), "norm weight")] * (attrs.get("norm_eps") is not None) \
        + [((1, w[0]), "residual")] * (attrs.get("epilogue") == "add")
    _need(len(rest) == len(want), f"fused_gemv expects operands {[n for _, n in want]} after x, W")
    for (s, _), (shape, name) in zip(rest, want, strict=True):
        _need(tuple(s) == tuple(shape), f"fused_gemv {name} is {fmt(s)}, expected {fmt(shape)}")
    return (1, w[0]), F32


def _fused_gemm(ins, attrs):
    """One prefill GEMM over several weights that read the same x [M, K]. ``swiglu``:
    ``silu(x W^T) * (x U^T)``, W and U [N, K] -> [M, N]. ``packed``: ``[x W1^T | x W2^T | ..]``,
    W_i [N_i, K] -> [M, sum N_i] (q, k and v projections: one output row per token)."""
    (x, _), *ws = ins
    _need(bool(attrs.get("swiglu")) != bool(attrs.get("packed")), "fused_gemm: exactly one of swiglu / packed")
    _need(len(x) == 2 and all(len(w) == 2 and w[1] == x[1] for w, _ in ws),
          f"fused_gemm needs x [M,K] and weights [N,K], got {fmt(x)}, {[fmt(w) for w, _ in ws]}")
    # the kernel reads every weight in one storage format (lowering.kernels.gemm)
    _need(len({d for _, d in ws}) == 1, f"fused_gemm: weights of one dtype, got {[d for _, d in ws]}")
    if attrs.get("swiglu"):
        _need(len(ws) == 2 and tuple(ws[0][0]) == tuple(ws[1][0]),
              f"fused_gemm(swiglu) needs two weights of one shape, got {[fmt(w) for w, _ in ws]}")
        return (x[0], ws[0][0][0]), F32
    _need(len(ws) == 3, f"fused_gemm(packed) takes three weights (q, k, v), got {len(ws)}")
    return (x[0], sum(w[0] for w, _ in ws)), F32


def _qkv_gemv(ins, attrs):
    """Decode q, k, v projections as one GEMV: x [1, K] (RMSNorm prologue with the norm weight),
    Wq/Wk/Wv [n_i, K] -> packed [1, nq + nk + nv]; the v rows are also stored into cache_v (last
    operand, updated in place; the ``kv_cache_write`` with ``written_by`` marks it in the graph)."""
    (x, _), (wq, _), (wk, _), (wv, _), (g, _), (cache, _) = ins
    _need(len(x) == 2 and x[0] == 1 and all(len(w) == 2 and w[1] == x[1] for w in (wq, wk, wv)),
          f"qkv_gemv needs x [1,K] and weights [n,K], got {fmt(x)}, {fmt(wq)}, {fmt(wk)}, {fmt(wv)}")
    _need(tuple(g) == (x[1],) and len(cache) == 3 and cache[0] * cache[2] == wv[0],
          f"qkv_gemv: norm weight {fmt(g)} / cache {fmt(cache)} do not match")
    return (1, wq[0] + wk[0] + wv[0]), F32


def _same(ins, attrs):
    (a, ad), *rest = ins
    for s, _ in rest:
        _need(s == a, f"elementwise shapes differ: {fmt(a)} vs {fmt(s)}")
    return a, ad


def _rope(ins, attrs):
    (x, xd), = ins
    _need(len(x) == 3 and isinstance(x[2], int) and x[2] % 2 == 0,
          f"rope input must be [seq, heads, even head_dim], got {fmt(x)}")
    return x, xd


def _reshape(ins, attrs):
    (x, xd), = ins
    shape = tuple(attrs["shape"])
    _need(same_numel(x, shape), f"reshape {fmt(x)} -> {fmt(shape)} changes the element count")
    return shape, xd


def _transpose(ins, attrs):
    (x, xd), = ins
    perm = attrs["perm"]
    _need(sorted(perm) == list(range(len(x))), f"transpose perm {perm} invalid for {fmt(x)}")
    return tuple(x[p] for p in perm), xd


def _concat(ins, attrs):
    (first, fd), *rest = ins
    width = first[-1]
    for s, _ in rest:
        _need(s[:-1] == first[:-1], f"concat leading dims differ: {fmt(first)} vs {fmt(s)}")
        width += s[-1]
    return (*first[:-1], width), fd


def _kv_cache_write(ins, attrs):
    """Writes rows past..total of the cache in place. What is written: ``new`` [seq, kv, d] (with
    ``packed_offset``, the ``kv * d`` values at that offset of each row of a packed [seq, N] q | k | v
    output); with ``norm_eps``/``rope``, rope(rms_norm(new, w)); with ``gemv``, the GEMV x [1, K] x
    W [kv*d, K]^T (RMSNorm prologue when gemv.norm_eps) - the producer fused into the write."""
    (cache, cd), (new, _), *extra = ins
    _need(len(cache) == 3, f"kv_cache_write: cache {fmt(cache)} is not [kv, ctx, d]")
    if attrs.get("packed_offset") is not None:  # rows read from a packed [seq, N] projection output
        _need(len(new) == 2 and new[1] >= attrs["packed_offset"] + cache[0] * cache[2],
              f"kv_cache_write: packed source {fmt(new)} too short for offset {attrs['packed_offset']}")
        return cache, cd
    if attrs.get("gemv") is not None:
        (w, _), *_ = extra
        _need(len(new) == 2 and new[0] == 1 and tuple(w) == (cache[0] * cache[2], new[1]),
              f"kv_cache_write(gemv): x {fmt(new)}, W {fmt(w)} do not produce one row of {fmt(cache)}")
        return cache, cd
    _need(len(new) == 3 and cache[0] == new[1] and cache[2] == new[2],
          f"kv_cache_write: cache {fmt(cache)} vs new {fmt(new)} (expected [kv,ctx,d] and [seq,kv,d])")
    return cache, cd


def _kv_cache_read(ins, attrs):
    (cache, cd), = ins
    return (1, cache[0], "total", cache[2]), cd


def _take_last(ins, attrs):
    (x, xd), = ins
    _need(len(x) == 2, f"take_last needs [seq, d], got {fmt(x)}")
    return (1, x[1]), xd


def _output(ins, attrs):
    (x, xd), = ins
    return x, xd


OPS: dict[str, Infer] = {
    "input": _leaf,
    "weight": _leaf,
    "embedding": _embedding,
    "rms_norm": _rms_norm,
    "matmul": _matmul,
    "attention": _attention,
    "attention_partial": _attention_partial,
    "attention_combine": _attention_combine,
    "prefill_attention": _prefill_attention,
    "fused_gemv": _fused_gemv,
    "fused_gemm": _fused_gemm,
    "qkv_gemv": _qkv_gemv,
    "rope": _rope,
    "rms_norm_rope": lambda ins, attrs: _rope([_rms_norm(ins, attrs)], attrs),
    "add": _same,
    "mul": _same,
    "silu": _same,
    "silu_mul": _same,
    "softmax": _same,
    "reshape": _reshape,
    "transpose": _transpose,
    "concat": _concat,
    "kv_cache_write": _kv_cache_write,
    "kv_cache_read": _kv_cache_read,
    "take_last": _take_last,
    "output": _output,
}

LEAF_OPS = frozenset({"input", "weight"})
# Ops that reinterpret or alias their operand's buffer instead of computing a new one.
VIEW_OPS = frozenset({"reshape", "kv_cache_read", "output"})


def infer(op: str, ins: list[tuple[Shape, str]], attrs: dict[str, Any]) -> tuple[Shape, str]:
    if op not in OPS:
        raise OpError(f"unknown op kind {op!r} (known: {', '.join(sorted(OPS))})")
    return OPS[op](ins, attrs)
