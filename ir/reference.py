"""Numpy reference executor: runs any graph on the CPU in float32.

It is the ground truth the GPU kernels are tested against, and is itself tested against HF
transformers. It favours clarity over speed: every op is the textbook formula.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ir.graph import Graph, Node
from ir.rope import Rope
from ir.rope import tables as rope_tables


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _matmul(n: Node, a: np.ndarray, b: np.ndarray, *res: np.ndarray) -> np.ndarray:
    if n.attrs.get("transpose_b"):
        b = np.swapaxes(b, -1, -2)
    group = n.attrs.get("gqa_group", 1)
    if b.ndim == 4 and group > 1:
        b = np.repeat(b, group, axis=1)
    out = np.matmul(a, b).astype(np.float32)
    return out + res[0] if res else out


def _eval(n: Node, args: list[np.ndarray], dims: dict[str, int]) -> np.ndarray:
    op, at = n.op, n.attrs
    seq, total = dims["seq"], dims["total"]
    past = total - seq
    if op == "embedding":
        return np.concatenate(args[1:], axis=0)[args[0]].astype(np.float32)
    if op == "rms_norm":
        x = args[0]
        var = np.mean(x * x, axis=-1, keepdims=True)
        return (x / np.sqrt(var + at["eps"]) * args[1]).astype(np.float32)
    if op == "matmul":
        return _matmul(n, *args)
    if op == "rms_norm_rope":
        normed = _eval(Node(n.name, "rms_norm", [], (), "float32", at), args, dims)
        return _eval(Node(n.name, "rope", [], (), "float32", at), [normed], dims)
    if op == "rope":
        x = args[0]
        cos, sin = rope_tables(np.arange(past, past + x.shape[0]), x.shape[2], Rope.from_key(at["rope"]))
        half = x.shape[2] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return (x * cos[:, None, :] + rot * sin[:, None, :]).astype(np.float32)
    if op == "add":
        return args[0] + args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "silu":
        return _silu(args[0])
    if op == "silu_mul":
        return _silu(args[0]) * args[1]
    if op == "fused_gemv":
        x, w, *rest = args
        u = rest.pop(0) if at.get("swiglu") else None
        if at.get("norm_eps") is not None:
            x = _eval(Node(n.name, "rms_norm", [], (), "float32", {"eps": at["norm_eps"]}), [x, rest.pop(0)], dims)
        y = x @ w.T
        if u is not None:
            y = _silu(y) * (x @ u.T)
        return (y + rest.pop(0) if rest else y).astype(np.float32)
    if op == "qkv_gemv":
        x, wq, wk, wv, g, _ = args
        x = _eval(Node(n.name, "rms_norm", [], (), "float32", {"eps": at["norm_eps"]}), [x, g], dims)
        return (x @ np.concatenate([wq, wk, wv]).T).astype(np.float32)
    if op == "attention":
        q, k, v, *norm = args
        if at.get("q_packed"):
            q = q[:, : k.shape[1] * at.get("gqa_group", 1) * k.shape[3]].reshape(1, -1, k.shape[3])
        if at.get("q_norm_eps") is not None:
            rope = Node(n.name, "rms_norm_rope", [], (), "float32", {"eps": at["q_norm_eps"], "rope": at["rope"]})
            q = _eval(rope, [q, *norm], dims).reshape(1, q.shape[1], 1, q.shape[2])
        group = at.get("gqa_group", 1)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = Node(n.name, "softmax", [], (), "float32", {"scale": at["scale"], "causal": at["causal"]})
        return (_eval(scores, [q @ np.swapaxes(k, -1, -2)], dims) @ v).astype(np.float32)
    if op == "softmax":
        s = args[0] * np.float32(at["scale"])
        if at.get("causal"):
            q = np.arange(s.shape[-2])[:, None] + past
            k = np.arange(s.shape[-1])[None, :]
            s = np.where(k > q, -np.inf, s)
        s = s - s.max(axis=-1, keepdims=True)
        e = np.exp(s)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    if op == "reshape":
        return args[0].reshape([d if isinstance(d, int) else dims[d] for d in at["shape"]])
    if op == "transpose":
        return np.ascontiguousarray(np.transpose(args[0], at["perm"]))
    if op == "kv_cache_write":
        cache, new, *extra = args
        if at.get("packed_offset") is not None:
            off = at["packed_offset"]
            new = new[:, off: off + cache.shape[0] * cache.shape[2]].reshape(1, cache.shape[0], cache.shape[2])
        if at.get("gemv") is not None:
            gemv = Node(n.name, "fused_gemv", [], (), "float32", dict(at["gemv"]))
            new = _eval(gemv, [new, *extra], dims).reshape(1, cache.shape[0], cache.shape[2])
        elif at.get("norm_eps") is not None:
            new = _eval(Node(n.name, "rms_norm_rope", [], (), "float32", {"eps": at["norm_eps"], "rope": at["rope"]}),
                        [new, *extra], dims)
        cache = cache.copy()
        cache[:, past:total, :] = np.transpose(new, (1, 0, 2))
        return cache
    if op == "kv_cache_read":
        return args[0][None, :, :total, :]
    if op == "concat":
        return np.concatenate(args, axis=-1)
    if op == "take_last":
        return args[0][-1:]
    if op == "output":
        return args[0]
    raise NotImplementedError(f"reference executor has no rule for op {op!r} (node {n.name})")


def run(g: Graph, inputs: dict[str, np.ndarray], weights: Callable[[str], np.ndarray],
        dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Execute ``g``. ``inputs`` maps input node names to arrays, ``weights`` loads a param as
    float32, ``dims`` gives ``seq`` and ``total``. Returns output name -> array."""
    env: dict[str, np.ndarray] = {}
    outs: dict[str, np.ndarray] = {}
    for n in g.nodes():
        if n.op == "input":
            env[n.name] = inputs[n.name]
        elif n.op == "weight":
            w = weights(n.attrs["param"])
            env[n.name] = w[slice(*n.attrs["rows"])] if "rows" in n.attrs else w
        else:
            env[n.name] = _eval(n, [env[i] for i in n.inputs], dims)
            if n.op == "output":
                outs[n.attrs["name"]] = env[n.name]
    return outs
