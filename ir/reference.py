"""Numpy reference executor: runs any graph on the CPU in float32.

It is the ground truth the GPU kernels are tested against, and is itself tested against HF
transformers. It favours clarity over speed: every op is the textbook formula, one rule per op in ``RULES``
(as torch.fx's Interpreter dispatches per opcode); fused ops call the rules of what they fuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.weight_format import as_stored
from ir.graph import Graph, Node
from ir.ops import EMPTY_MAX, SPLIT_STATS, attention_split
from ir.rope import Rope
from ir.rope import tables as rope_tables

Attrs = dict[str, Any]
Rule = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Step:
    """The runtime scalars of one step: ``seq`` new tokens, ``total`` = past + new."""

    seq: int
    total: int
    dims: dict[str, int]

    @property
    def past(self) -> int:
        return self.total - self.seq


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps) * w).astype(np.float32)


def _rope(x: np.ndarray, rope: str, past: int) -> np.ndarray:
    """Rotate-half RoPE of ``x`` [seq, heads, hd] at positions past..past+seq."""
    cos, sin = rope_tables(np.arange(past, past + x.shape[0]), x.shape[2], Rope.from_key(rope))
    half = x.shape[2] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, None, :] + rot * sin[:, None, :]).astype(np.float32)


def _softmax(s: np.ndarray, scale: float, causal: bool, past: int) -> np.ndarray:
    s = s * np.float32(scale)
    if causal:
        q = np.arange(s.shape[-2])[:, None] + past
        k = np.arange(s.shape[-1])[None, :]
        s = np.where(k > q, -np.inf, s)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _matmul(at: Attrs, st: Step, a: np.ndarray, b: np.ndarray, *res: np.ndarray) -> np.ndarray:
    if at.get("transpose_b"):
        b = np.swapaxes(b, -1, -2)
    group = at.get("gqa_group", 1)
    if b.ndim == 4 and group > 1:
        b = np.repeat(b, group, axis=1)
    out = np.matmul(a, b).astype(np.float32)
    return out + res[0] if res else out


def _fused_gemv(at: Attrs, st: Step, x: np.ndarray, w: np.ndarray, *rest: np.ndarray) -> np.ndarray:
    """x W^T with the fusions recorded in attrs: a second weight (SwiGLU), an RMSNorm prologue,
    a residual epilogue - in that input order."""
    more = list(rest)
    u = more.pop(0) if at.get("swiglu") else None
    if at.get("norm_eps") is not None:
        x = _rms_norm(x, more.pop(0), at["norm_eps"])
    y = x @ w.T
    if u is not None:
        y = _silu(y) * (x @ u.T)
    return (y + more.pop(0) if more else y).astype(np.float32)


def _fused_gemm(at: Attrs, st: Step, x: np.ndarray, *ws: np.ndarray) -> np.ndarray:
    """SwiGLU: ``_fused_gemv``'s formula over M rows; packed: the weights' outputs side by side."""
    if at.get("packed"):
        return np.concatenate([x @ w.T for w in ws], axis=1).astype(np.float32)
    return _fused_gemv(at, st, x, *ws)


def _qkv_gemv(at: Attrs, st: Step, x, wq, wk, wv, g, _cache_v) -> np.ndarray:
    return (_rms_norm(x, g, at["norm_eps"]) @ np.concatenate([wq, wk, wv]).T).astype(np.float32)


def _attention_operands(at: Attrs, st: Step, q, k, v, norm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q as [1, heads, m, d] (unpacked, the fused q RMSNorm + RoPE applied), k and v with their
    kv heads repeated per GQA group, all float32 (the cache may hold f16). With ``k_write`` a
    second norm weight follows q's: the kernel's, for the K row it stores; here that store is its
    ``kv_cache_write`` node's, which ``k`` already reflects."""
    group = at.get("gqa_group", 1)
    if at.get("q_packed"):
        q = q[:, : k.shape[1] * group * k.shape[3]].reshape(1, -1, k.shape[3])
    if at.get("q_norm_eps") is not None:
        q = _rope(_rms_norm(q, norm[0], at["q_norm_eps"]), at["rope"], st.past).reshape(1, q.shape[1], 1, q.shape[2])
    k, v = (np.repeat(t, group, axis=1).astype(np.float32, copy=False) for t in (k, v))
    return q, k, v


def _attention(at: Attrs, st: Step, q, k, v, *norm) -> np.ndarray:
    q, k, v = _attention_operands(at, st, q, k, v, norm)
    return (_softmax(q @ np.swapaxes(k, -1, -2), at["scale"], at["causal"], st.past) @ v).astype(np.float32)


def _attention_partial(at: Attrs, st: Step, q, k, v, *norm) -> np.ndarray:
    """Per head and split (``ir.ops.attention_split``): ``o = sum_t exp(s_t - m) v_t`` over the
    split's positions, then ``m = max_t s_t`` and ``l = sum_t exp(s_t - m)`` (``SPLIT_STATS``
    layout); the slots past this step's splits (no kernel writes them) hold the empty state (0,
    ``EMPTY_MAX``, 0)."""
    q, k, v = _attention_operands(at, st, q, k, v, norm)
    s = (q @ np.swapaxes(k, -1, -2))[0, :, 0, :] * np.float32(at["scale"])  # [heads, total]
    chunk, splits = attention_split(st.total, at["split_unit"], at["max_splits"])
    hd = v.shape[-1]
    out = np.zeros((s.shape[0], at["max_splits"], hd + SPLIT_STATS), np.float32)
    out[:, :, hd: hd + 4] = EMPTY_MAX
    for j in range(splits):
        part = s[:, j * chunk: (j + 1) * chunk]
        m = part.max(axis=-1, keepdims=True)
        e = np.exp(part - m)
        out[:, j, :hd] = np.einsum("ht,htd->hd", e, v[0, :, j * chunk: (j + 1) * chunk])
        out[:, j, hd: hd + 4] = m
        out[:, j, hd + 4:] = e.sum(axis=-1, keepdims=True)
    return out


def _attention_combine(at: Attrs, st: Step, p) -> np.ndarray:
    """The step's split states merged: ``sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s``,
    ``M = max_s m_s`` over the splits ``ir.ops.attention_split`` gives ``total`` (the slots past
    them are not read)."""
    hd = p.shape[-1] - SPLIT_STATS
    p = p[:, : attention_split(st.total, at["split_unit"], at["max_splits"])[1]]
    m, l = p[..., hd: hd + 1], p[..., hd + 4: hd + 5]
    w = np.exp(m - m.max(axis=1, keepdims=True))
    out = (p[..., :hd] * w).sum(axis=1) / (l * w).sum(axis=1)
    return out.reshape(1, p.shape[0], 1, hd).astype(np.float32)


def _prefill_attention(at: Attrs, st: Step, q, k, v, *norm) -> np.ndarray:
    """q [seq, heads, d] (q RMSNorm + RoPE first when fused) -> [1, heads, seq, d]; causal
    attention over the cache; back to [seq, heads * d] (what the unfused trace computes with its
    transposes and reshapes)."""
    group = at.get("gqa_group", 1)
    if at.get("q_packed"):  # the first heads * d values of each packed row
        q = q[:, : k.shape[1] * group * k.shape[3]].reshape(q.shape[0], -1, k.shape[3])
    if at.get("q_norm_eps") is not None:
        q = _rope(_rms_norm(q, norm[0], at["q_norm_eps"]), at["rope"], st.past)
    q4 = np.transpose(q, (1, 0, 2))[None]
    k, v = (np.repeat(t, group, axis=1).astype(np.float32, copy=False) for t in (k, v))
    o = _softmax(q4 @ np.swapaxes(k, -1, -2), at["scale"], True, st.past) @ v
    return np.transpose(o[0], (1, 0, 2)).reshape(q.shape[0], -1).astype(np.float32)


def _kv_cache_write(at: Attrs, st: Step, cache, new, *extra) -> np.ndarray:
    """Rows past..total of the cache get ``new``, or what the fused producer makes of it, stored
    in the cache's dtype (an f16 cache rounds the rows as the GPU does)."""
    kv, hd = cache.shape[0], cache.shape[2]
    if at.get("packed_offset") is not None:
        off = at["packed_offset"]
        new = new[:, off: off + kv * hd].reshape(-1, kv, hd)
    if at.get("gemv") is not None:
        new = _fused_gemv(at["gemv"], st, new, *extra).reshape(1, kv, hd)
    elif at.get("norm_eps") is not None:
        new = _rope(_rms_norm(new, extra[0], at["norm_eps"]), at["rope"], st.past)
    cache = cache.copy()
    cache[:, st.past:st.total, :] = np.transpose(new, (1, 0, 2))
    return cache

# op -> rule(attrs, step, *input arrays); one entry per op of ir.ops (a test checks it is total)
RULES: dict[str, Rule] = {
    "embedding": lambda at, st, ids, *chunks: np.concatenate(chunks, axis=0)[ids].astype(np.float32),
    "rms_norm": lambda at, st, x, w: _rms_norm(x, w, at["eps"]),
    "rope": lambda at, st, x: _rope(x, at["rope"], st.past),
    "rms_norm_rope": lambda at, st, x, w: _rope(_rms_norm(x, w, at["eps"]), at["rope"], st.past),
    "matmul": _matmul,
    "fused_gemv": _fused_gemv,
    "fused_gemm": _fused_gemm,
    "qkv_gemv": _qkv_gemv,
    "attention": _attention,
    "attention_partial": _attention_partial,
    "attention_combine": _attention_combine,
    "prefill_attention": _prefill_attention,
    "softmax": lambda at, st, s: _softmax(s, at["scale"], at.get("causal", False), st.past),
    "add": lambda at, st, a, b: a + b,
    "mul": lambda at, st, a, b: a * b,
    "silu": lambda at, st, x: _silu(x),
    "silu_mul": lambda at, st, a, b: _silu(a) * b,
    "reshape": lambda at, st, x: x.reshape([d if isinstance(d, int) else st.dims[d] for d in at["shape"]]),
    "transpose": lambda at, st, x: np.ascontiguousarray(np.transpose(x, at["perm"])),
    "kv_cache_write": _kv_cache_write,
    "kv_cache_read": lambda at, st, cache: cache[None, :, :st.total, :],
    "concat": lambda at, st, *xs: np.concatenate(xs, axis=-1),
    "take_last": lambda at, st, x: x[-1:],
    "output": lambda at, st, x: x,
}


def evaluate(n: Node, args: list[np.ndarray], dims: dict[str, int]) -> np.ndarray:
    """One node on given input arrays (the kernel tests' expected value)."""
    rule = RULES.get(n.op)
    if rule is None:
        raise NotImplementedError(f"reference executor has no rule for op {n.op!r} (node {n.name})")
    return rule(n.attrs, Step(dims["seq"], dims["total"], dims), *args)


def run(g: Graph, inputs: dict[str, np.ndarray], weights: Callable[[str], np.ndarray],
        dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Execute ``g``. ``inputs`` maps input node names to arrays, ``weights`` loads a param as
    float32, ``dims`` gives ``seq`` and ``total``. Returns output name -> array."""
    env: dict[str, np.ndarray] = {}
    outs: dict[str, np.ndarray] = {}
    for n in g.nodes():
        if n.op == "input":
            env[n.name] = inputs[n.name]
        elif n.op == "weight":  # a quantized weight: the values its codes stand for (what the GPU computes with)
            w = weights(n.attrs["param"])
            env[n.name] = as_stored(w[slice(*n.attrs["rows"])] if "rows" in n.attrs else w, n.dtype)
        else:
            env[n.name] = evaluate(n, [env[i] for i in n.inputs], dims)
            if n.op == "output":
                outs[n.attrs["name"]] = env[n.name]
    return outs
