"""KernelSpec, lowering options and the op -> generator table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ir.graph import Graph, Node


@dataclass(frozen=True)
class LowerOptions:
    weight_dtype: str = "float16"  # compiled storage dtype of weights (float16 | float32)
    max_context: int = 4096  # KV cache capacity (tokens)
    prefill_chunk: int = 256  # longest prompt piece one prefill step takes
    max_binding_bytes: int = 128 * 1024 * 1024  # weights above this are split (lavapipe's limit)


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


def spec_for(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    # import for registration side effects
    from lowering.kernels import attention, elementwise, gemv, matmul, memory, norm, softmax  # noqa: F401

    if node.op not in GENERATORS:
        raise KeyError(f"no kernel generator for op {node.op!r} (node {node.name})")
    return GENERATORS[node.op](node, g, opts)
