"""Greedy decoding on the GPU: the argmax of the logits row, written where the next step reads
its input id. Shipped in every compiled module (like the calibration kernels), not part of the
model graph: the runtime runs them only when the choice is a plain argmax.

Why: when the next token is picked on the GPU, decode step t+1 needs nothing from the host, so
the runtime encodes and submits it while step t is still running and reads back 4 bytes instead
of the 600 KB logits row (``runtime.executor.Executor.greedy_decode``); the host's per-token
cost (encoding hundreds of dispatches) then overlaps the GPU instead of adding to it.

Two kernels: ``argmax_partial`` (one workgroup per ``THREADS * PER_THREAD`` logits, unrolled
loads all in flight) writes each workgroup's (max, index) pair; ``argmax_final`` (one workgroup)
reduces the pairs and stores the index as an int32. Ties go to the lowest index, as numpy's
``argmax`` (and so the CPU sampler) decides them.
"""

from __future__ import annotations

from tvm.script import tirx as T

from common.manifest import GreedyKernels
from lowering.kernels.spec import KernelSpec

THREADS = 256
PER_THREAD = 8
ARGMAX_PARTIAL = "sampling_argmax_partial"
ARGMAX_FINAL = "sampling_argmax_final"
LOWEST = -3.0e38  # below any finite logit


def groups(vocab: int) -> int:
    """Workgroups of the first pass (= (max, index) pairs in the scratch buffer)."""
    return (vocab + THREADS * PER_THREAD - 1) // (THREADS * PER_THREAD)


@T.macro
def _reduce_pairs(val, idx, val2, idx2, tx, half: int, again):
    """Tree-reduce (value, index) pairs in shared memory; the winner of each pair is the larger
    value, the lower index on a tie. Ping-pongs between two buffer pairs (TVM's sync planner sees
    a shared buffer as a whole); the result ends in ``[0]`` of ``_result(...)``."""
    if tx < half:
        take = T.meta_var(T.Or(val[tx + half] > val[tx], T.And(val[tx + half] == val[tx], idx[tx + half] < idx[tx])))
        val2[tx] = T.if_then_else(take, val[tx + half], val[tx])
        idx2[tx] = T.if_then_else(take, idx[tx + half], idx[tx])
    T.tvm_storage_sync("shared")
    if half > 1:
        again(val2, idx2, val, idx, tx, half // 2, again)


@T.macro
def _workgroup_argmax(best, bi, val, idx, val2, idx2, tx):
    """Every thread's (``best[0]``, ``bi[0]``) -> shared, reduced to the workgroup's pair (in
    ``[0]`` of the first pair of buffers if ``_in_first(THREADS)``, else of the second)."""
    val[tx] = best[0]
    idx[tx] = bi[0]
    T.tvm_storage_sync("shared")
    _reduce_pairs(val, idx, val2, idx2, tx, THREADS // 2, _reduce_pairs)


def _in_first(threads: int) -> bool:
    """Whether ``_reduce_pairs`` starting at ``threads // 2`` leaves its result in the first pair."""
    return (threads.bit_length() - 1) % 2 == 0


def _partial_func(vocab: int):
    ngroups = groups(vocab)

    @T.prim_func(private=True)
    def argmax_partial(L: T.Buffer((vocab,), "float32"), P: T.Buffer((2 * ngroups,), "float32")):
        for bx in T.thread_binding(ngroups, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                val = T.alloc_buffer((THREADS,), "float32", scope="shared")
                idx = T.alloc_buffer((THREADS,), "int32", scope="shared")
                val2 = T.alloc_buffer((THREADS,), "float32", scope="shared")
                idx2 = T.alloc_buffer((THREADS,), "int32", scope="shared")
                x = T.alloc_buffer((PER_THREAD,), "float32", scope="local")
                best = T.alloc_buffer((1,), "float32", scope="local")
                bi = T.alloc_buffer((1,), "int32", scope="local")
                base = T.meta_var(bx * (THREADS * PER_THREAD) + tx)
                # every load first (clamped index, no branch), then the compares
                for u in T.unroll(PER_THREAD):
                    x[u] = T.if_then_else(base + u * THREADS < vocab, L[T.min(base + u * THREADS, vocab - 1)],
                                          T.float32(LOWEST))
                best[0] = x[0]
                bi[0] = base
                for u in T.unroll(1, PER_THREAD):
                    if x[u] > best[0]:
                        best[0] = x[u]
                        bi[0] = base + u * THREADS
                _workgroup_argmax(best, bi, val, idx, val2, idx2, tx)
                if tx == 0:
                    P[2 * bx] = val[0] if _in_first(THREADS) else val2[0]
                    P[2 * bx + 1] = T.Cast("float32", idx[0] if _in_first(THREADS) else idx2[0])

    return argmax_partial


def _final_func(vocab: int):
    ngroups = groups(vocab)
    steps = (ngroups + THREADS - 1) // THREADS

    @T.prim_func(private=True)
    def argmax_final(P: T.Buffer((2 * ngroups,), "float32"), Out: T.Buffer((1,), "int32")):
        for _bx in T.thread_binding(1, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                val = T.alloc_buffer((THREADS,), "float32", scope="shared")
                idx = T.alloc_buffer((THREADS,), "int32", scope="shared")
                val2 = T.alloc_buffer((THREADS,), "float32", scope="shared")
                idx2 = T.alloc_buffer((THREADS,), "int32", scope="shared")
                best = T.alloc_buffer((1,), "float32", scope="local")
                bi = T.alloc_buffer((1,), "int32", scope="local")
                best[0] = T.float32(LOWEST)
                bi[0] = vocab
                for s in T.unroll(steps):
                    # pairs are in index order, so a later pair wins only with a larger value
                    j = T.meta_var(s * THREADS + tx)
                    if j < ngroups:
                        if P[2 * j] > best[0]:
                            best[0] = P[2 * j]
                            bi[0] = T.Cast("int32", P[2 * j + 1])
                _workgroup_argmax(best, bi, val, idx, val2, idx2, tx)
                if tx == 0:
                    Out[0] = idx[0] if _in_first(THREADS) else idx2[0]

    return argmax_final


def argmax_specs(vocab: int) -> list[tuple[str, KernelSpec]]:
    """The two kernels, named, in launch order."""
    if vocab >= 1 << 24:
        raise ValueError(f"vocab {vocab}: token ids past 2**24 do not survive the f32 scratch pairs")
    partial, final = (lambda: _partial_func(vocab)), (lambda: _final_func(vocab))
    return [(ARGMAX_PARTIAL, KernelSpec(f"sampling:argmax_partial:{vocab}", "sampling", partial, ["logits", "scratch"],
                                        [1], bytes=f"4*{vocab}", variants=[("argmax-partial", partial)])),
            (ARGMAX_FINAL, KernelSpec(f"sampling:argmax_final:{vocab}", "sampling", final, ["scratch", "ids"], [1],
                                      bytes=f"8*{groups(vocab)}", variants=[("argmax-final", final)]))]


def greedy_kernels(vocab: int) -> GreedyKernels:
    return GreedyKernels(ARGMAX_PARTIAL, ARGMAX_FINAL, 8 * groups(vocab))
