"""A TVMScript macro shared by the explicitly scheduled kernels: a workgroup tree reduction; and
a faster macro expansion for all of them."""

import sys

from tvm.script import tirx as T
from tvm.script.parser.core import parser as _parser


def _find_parser_def(self):
    """The parser that expands a macro call: the first caller frame whose globals hold it, as
    TVM's own ``ScriptMacro._find_parser_def``, but walking ``f_back`` instead of
    ``inspect.getouterframes``, which reads every caller's source line: deep in the parser's
    recursion that cost 30-60 ms per macro call (a quarter of a GEMV kernel's build time)."""
    frame = sys._getframe(1)
    while frame is not None:
        found = frame.f_globals.get(_parser.ScriptMacro.parser_object_name)
        if found is not None:
            return found
        frame = frame.f_back
    raise RuntimeError(f"{_parser.ScriptMacro.parser_object_name} not available")


if hasattr(_parser.ScriptMacro, "_find_parser_def"):  # same result, no stack inspection
    _parser.ScriptMacro._find_parser_def = _find_parser_def


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
