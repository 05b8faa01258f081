"""KernelSpec and the op -> generator table (filled by ``@generator``; looked up
through ``lowering.kernels.registry.spec_for``, which imports every generator module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ir.graph import Graph, Node
from lowering.options import LowerOptions


@dataclass
class KernelSpec:
    key: str  # identity of the computation: same key, same WGSL
    kclass: str  # gemv | gemm | batched_gemv | batched_gemm | norm | rope | softmax | elementwise | ...
    build: Callable[[], object]  # -> tvm PrimFunc (unscheduled)
    args: list[str]  # per buffer param, in PrimFunc order: a graph tensor name or "const:<name>"
    writes: list[int] = field(default_factory=list)  # indices into args the kernel writes
    flops: str = "0"  # expression of seq/total: floating point ops of one launch (for the profiler)
    bytes: str = "0"  # expression of seq/total: bytes moved by one launch, each tensor once
    # explicitly scheduled TIR builders (name, builder), tried in order before the dlight rules
    variants: list[tuple[str, Callable[[], object]]] = field(default_factory=list)


Generator = Callable[[Node, Graph, LowerOptions], KernelSpec]
GENERATORS: dict[str, Generator] = {}


def generator(*ops: str) -> Callable[[Generator], Generator]:
    def reg(fn: Generator) -> Generator:
        for op in ops:
            GENERATORS[op] = fn
        return fn

    return reg
