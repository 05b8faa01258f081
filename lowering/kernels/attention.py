"""Fused decode attention over the KV cache: ``softmax(q k^T * scale) v`` for one query row.

Explicitly scheduled TIR (no dlight rule covers a reduction, a softmax and a second reduction in
one kernel). One workgroup per query head; its kv head is ``h // group`` (GQA without copies).
The cache is walked in chunks of ``threads * per_thread`` positions with an online softmax (fewer
chunks: fewer barriers): each thread scores ``per_thread`` positions (a vec4 dot product over the
head dim, q kept in shared memory), the workgroup
reduces the chunk's max and sum, then each thread accumulates one vec4 lane of the output over a
strided subset of the chunk's positions (consecutive threads read consecutive vec4s of a V row:
coalesced; unrolled, so the loads overlap), and the position groups are summed at the end. The
running max/sum rescale the accumulator, so any cache length works with fixed shared memory.
With one query at position ``total - 1`` every cached position is visible: causal by construction.
"""

from tvm import tirx
from tvm.script import tirx as T

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, shape_key
from lowering.kernels.elementwise import rope_tables
from lowering.kernels.spec import KernelSpec, LowerOptions, generator
from lowering.kernels.tir_reduce import tree_reduce


def _flushed_exp(x):
    """exp(x) for x <= 0, flushed to 0 below exp(-32) ~ 1e-14: such weights cannot change an f32
    result whose largest weight is 1, and their products with V values fall into denormals, which
    are ~100x slower on CPUs (lavapipe took 400 ms per attention call on a tiny model)."""
    # WGSL's select evaluates both sides: clamp so exp itself never produces a denormal
    return T.if_then_else(x < T.float32(-32), T.float32(0), T.exp(T.max(x, T.float32(-32))))


def supports(head_dim: int) -> bool:
    """vec4 rows (and vec4 halves for the RoPE prologue), and a power-of-two number of vec4 lanes
    so the lanes tile the workgroup."""
    hd4 = head_dim // 4
    return head_dim % 8 == 0 and hd4 & (hd4 - 1) == 0 and head_dim <= 512


def _attention_func(nh: int, nkv: int, hd: int, ctx: int, scale: float, threads: int, per_thread: int,
                    q_norm: tuple[float, str] | None = None):
    """``q_norm=(eps, weight dtype)``: q arrives raw from its projection; the prologue applies
    Qwen3's per-head q RMSNorm and RoPE at position total - 1 (tables as vec4: rotate-half pairs
    element d with d + hd/2, i.e. vec4 lane i with i + hd/8)."""
    group = nh // nkv
    hd4 = hd // 4
    h4 = hd4 // 2
    prologue = q_norm is not None
    eps, gdtype = q_norm or (0.0, "float32")
    chunk = threads * per_thread  # cache positions per step of the walk
    groups = threads // hd4  # PV: thread = (position group, vec4 lane of the head dim)
    neg = -3.0e38  # exp(neg - m) == 0 without the inf - inf NaN of a real -inf

    @T.prim_func(private=True)
    def attention(Q: T.Buffer((1, nh, 1, hd4), "float32x4"), K: T.Buffer((nkv, ctx, hd4), "float32x4"),
                  V: T.Buffer((nkv, ctx, hd4), "float32x4"), G: T.Buffer((hd4,), dtype=f"{gdtype}x4"),
                  COS: T.Buffer((ctx, max(h4, 1)), "float32x4"), SIN: T.Buffer((ctx, max(h4, 1)), "float32x4"),
                  O: T.Buffer((1, nh, 1, hd4), "float32x4"), total: T.int32):
        for h in T.thread_binding(nh, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                q_sh = T.alloc_buffer((hd4,), "float32x4", scope="shared")
                p_sh = T.alloc_buffer((chunk,), "float32", scope="shared")
                red = T.alloc_buffer((threads,), "float32", scope="shared")
                o_sh = T.alloc_buffer((threads,), "float32x4", scope="shared")
                st = T.alloc_buffer((5,), "float32", scope="local")  # m, l, local max/sum, m_new, alpha
                sc = T.alloc_buffer((per_thread,), "float32", scope="local")  # this thread's scores
                acc = T.alloc_buffer((1,), "float32x4", scope="local")
                if prologue:
                    red[tx] = T.float32(0)
                    if tx < hd4:
                        acc[0] = Q[0, h, 0, tx]
                        red[tx] = T.call_pure_extern("float32", "dot", acc[0], acc[0])
                    T.tvm_storage_sync("shared")
                    tree_reduce(red, tx, threads, False)
                    if tx < hd4:
                        q_sh[tx] = acc[0] * T.Broadcast(T.rsqrt(red[0] / T.float32(hd) + T.float32(eps)), 4) * T.Cast(
                            "float32x4", G[tx])
                    T.tvm_storage_sync("shared")
                    if tx < hd4:
                        acc[0] = q_sh[tx] * COS[total - 1, tx % h4] + T.if_then_else(
                            tx < h4, -q_sh[T.min(tx + h4, hd4 - 1)], q_sh[T.max(tx - h4, 0)]) * SIN[total - 1, tx % h4]
                    T.tvm_storage_sync("shared")
                    if tx < hd4:
                        q_sh[tx] = acc[0]
                else:
                    if tx < hd4:
                        q_sh[tx] = Q[0, h, 0, tx]
                st[0] = T.float32(neg)
                st[1] = T.float32(0)
                acc[0] = T.Broadcast(T.float32(0), 4)
                T.tvm_storage_sync("shared")
                for c in range((total + chunk - 1) // chunk):
                    # scores: thread tx <- positions c * chunk + p * threads + tx
                    st[2] = T.float32(neg)
                    for p in T.unroll(per_thread):
                        sc[p] = T.float32(neg)
                        if c * chunk + p * threads + tx < total:
                            sc[p] = T.float32(0)
                            for i in T.unroll(hd4):
                                sc[p] = sc[p] + T.call_pure_extern("float32", "dot", q_sh[i],
                                                                   K[h // group, c * chunk + p * threads + tx, i])
                            sc[p] = sc[p] * T.float32(scale)
                        st[2] = T.max(st[2], sc[p])
                    red[tx] = st[2]
                    T.tvm_storage_sync("shared")
                    tree_reduce(red, tx, threads, True)
                    st[3] = T.max(st[0], red[0])
                    T.tvm_storage_sync("shared")
                    st[2] = T.float32(0)
                    for p in T.unroll(per_thread):
                        p_sh[p * threads + tx] = _flushed_exp(sc[p] - st[3])
                        st[2] = st[2] + p_sh[p * threads + tx]
                    red[tx] = st[2]
                    T.tvm_storage_sync("shared")
                    tree_reduce(red, tx, threads, False)
                    st[4] = _flushed_exp(st[0] - st[3])
                    st[1] = st[1] * st[4] + red[0]
                    st[0] = st[3]
                    # PV: lane tx % hd4 of positions tx // hd4, + groups, ... of this chunk
                    acc[0] = acc[0] * T.Broadcast(st[4], 4)
                    for jo in range(T.min(chunk, total - c * chunk + groups * 4 - 1) // (groups * 4)):
                        for ji in T.unroll(4):
                            if c * chunk + (jo * 4 + ji) * groups + tx // hd4 < total:
                                acc[0] = acc[0] + T.Broadcast(p_sh[(jo * 4 + ji) * groups + tx // hd4], 4) * V[
                                    h // group, c * chunk + (jo * 4 + ji) * groups + tx // hd4, tx % hd4]
                    T.tvm_storage_sync("shared")
                o_sh[tx] = acc[0]
                T.tvm_storage_sync("shared")
                if tx < hd4:
                    for g2 in range(1, groups):
                        acc[0] = acc[0] + o_sh[g2 * hd4 + tx]
                    O[0, h, 0, tx] = acc[0] / T.Broadcast(st[1], 4)

    if prologue:
        return attention
    # without the q prologue its params are never read; drop them (each param is a binding)
    return tirx.PrimFunc([p for p in attention.params if p.name not in ("G", "COS", "SIN")], attention.body,
                         attention.ret_type, attention.attrs)


@generator("attention")
def attention(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    q, k_view, v_view = (g[i] for i in node.inputs[:3])
    kc, vc = g[k_view.inputs[0]], g[v_view.inputs[0]]
    _, nh, m, hd = node.shape
    nkv = kc.shape[0]
    if m != 1 or not supports(hd):
        raise KeyError("fused attention needs one query row and a supported head_dim")
    threads, per_thread = 128, 4
    ctx, scale = opts.max_context, float(node.attrs["scale"])
    name = f"attention-decode(threads={threads},positions/thread={per_thread})"

    eps = node.attrs.get("q_norm_eps")
    q_norm, extra = None, []
    if eps is not None:
        w = g[node.inputs[3]]
        q_norm = (float(eps), w.dtype)
        extra = [w.name, *rope_tables(node.attrs["rope"], hd, ctx)]
        name += "+q_norm+rope"

    def build():
        return _attention_func(nh, nkv, hd, ctx, scale, threads, per_thread, q_norm)

    kv_bytes = f"2*4*{nkv}*total*{hd}"
    args = [q.name, kc.name, vc.name, *extra, node.name]
    return KernelSpec(f"attention:{shape_key(q)}x{shape_key(kc)}:s{scale!r}:{q_norm}:{extra[1:]}", "attention",
                      build, args, [len(args) - 1],
                      flops=f"4*{nh}*total*{hd}", bytes=f"{bytes_expr([q, node], ctx)} + {kv_bytes}",
                      variants=[(name, build)])
