"""A TVMScript macro shared by the explicitly scheduled kernels: a workgroup tree reduction."""

from tvm.script import tirx as T


@T.macro
def tree_reduce(red, tx, threads: int, take_max: bool):
    """``red[0] = sum (or max) of red[0:threads]`` over shared memory, one halving per barrier.
    ``threads`` is a power of two; every thread must call it (it contains barriers)."""
    for s in T.unroll(threads.bit_length() - 1):
        if tx < (threads >> (s + 1)):
            if take_max:
                red[tx] = T.max(red[tx], red[tx + (threads >> (s + 1))])
            else:
                red[tx] = red[tx] + red[tx + (threads >> (s + 1))]
        T.tvm_storage_sync("shared")
