"""Fused decode attention over the KV cache: ``softmax(q k^T * scale) v`` for one query row.

Explicitly scheduled TIR (no dlight rule covers a reduction, a softmax and a second reduction in
one kernel). One workgroup per query head; its kv head is ``h // group`` (GQA without copies).
The cache is walked in chunks of ``threads`` positions with an online softmax: each thread scores
one position (a vec4 dot product over the head dim, q kept in shared memory), the workgroup
reduces the chunk's max and sum, and thread ``d`` accumulates output element ``d`` over the
chunk's probabilities (consecutive threads read consecutive floats of a V row: coalesced). The
running max/sum rescale the accumulator, so any cache length works with fixed shared memory.
With one query at position ``total - 1`` every cached position is visible: causal by construction.
"""

from tvm.script import tirx as T

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, shape_key
from lowering.kernels.spec import KernelSpec, LowerOptions, generator


def _attention_func(nh: int, nkv: int, hd: int, ctx: int, scale: float, threads: int):
    group = nh // nkv
    hd4 = hd // 4
    levels = threads.bit_length() - 1
    neg = -3.0e38  # exp(neg - m) == 0 without the inf - inf NaN of a real -inf

    @T.prim_func(private=True)
    def attention(q_h: T.handle, K: T.Buffer((nkv, ctx, hd4), "float32x4"), V: T.Buffer((nkv, ctx, hd), "float32"),
                  o_h: T.handle, total: T.int32):
        Q = T.match_buffer(q_h, (1, nh, 1, hd4), "float32x4")
        O = T.match_buffer(o_h, (1, nh, 1, hd), "float32")
        for h in T.thread_binding(nh, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                q_sh = T.alloc_buffer((hd4,), "float32x4", scope="shared")
                p_sh = T.alloc_buffer((threads,), "float32", scope="shared")
                red = T.alloc_buffer((threads,), "float32", scope="shared")
                st = T.alloc_buffer((6,), "float32", scope="local")  # m, l, acc, s, m_new, alpha
                if tx < hd4:
                    q_sh[tx] = Q[0, h, 0, tx]
                st[0] = T.float32(neg)
                st[1] = T.float32(0)
                st[2] = T.float32(0)
                T.tvm_storage_sync("shared")
                for c in range((total + threads - 1) // threads):
                    st[3] = T.float32(neg)
                    if c * threads + tx < total:
                        st[3] = T.float32(0)
                        for i in T.unroll(hd4):
                            st[3] = st[3] + T.call_pure_extern("float32", "dot", q_sh[i],
                                                               K[h // group, c * threads + tx, i])
                        st[3] = st[3] * T.float32(scale)
                    red[tx] = st[3]
                    T.tvm_storage_sync("shared")
                    for s in T.unroll(levels):
                        if tx < (threads >> (s + 1)):
                            red[tx] = T.max(red[tx], red[tx + (threads >> (s + 1))])
                        T.tvm_storage_sync("shared")
                    st[4] = T.max(st[0], red[0])
                    T.tvm_storage_sync("shared")
                    p_sh[tx] = T.exp(st[3] - st[4])
                    red[tx] = p_sh[tx]
                    T.tvm_storage_sync("shared")
                    for s in T.unroll(levels):
                        if tx < (threads >> (s + 1)):
                            red[tx] = red[tx] + red[tx + (threads >> (s + 1))]
                        T.tvm_storage_sync("shared")
                    st[5] = T.exp(st[0] - st[4])
                    st[1] = st[1] * st[5] + red[0]
                    st[0] = st[4]
                    if tx < hd:
                        st[2] = st[2] * st[5]
                        for j in range(T.min(threads, total - c * threads)):
                            st[2] = st[2] + p_sh[j] * V[h // group, c * threads + j, tx]
                    T.tvm_storage_sync("shared")
                if tx < hd:
                    O[0, h, 0, tx] = st[2] / st[1]

    return attention


@generator("attention")
def attention(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    q, k_view, v_view = (g[i] for i in node.inputs)
    kc, vc = g[k_view.inputs[0]], g[v_view.inputs[0]]
    _, nh, m, hd = q.shape
    nkv = kc.shape[0]
    if m != 1 or hd % 4 or hd > 256:
        raise KeyError("fused attention supports one query row and head_dim % 4 == 0, <= 256")
    threads = max(64, 1 << (hd - 1).bit_length())
    ctx, scale = opts.max_context, float(node.attrs["scale"])
    name = f"attention-decode(threads={threads})"

    def build():
        return _attention_func(nh, nkv, hd, ctx, scale, threads)

    kv_bytes = f"2*4*{nkv}*total*{hd}"
    return KernelSpec(f"attention:{shape_key(q)}x{shape_key(kc)}:s{scale!r}", "attention", build,
                      [q.name, kc.name, vc.name, node.name], [3],
                      flops=f"4*{nh}*total*{hd}", bytes=f"{bytes_expr([q, node], ctx)} + {kv_bytes}",
                      variants=[(name, build)])
