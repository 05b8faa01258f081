"""KernelSpec, lowering options and the op -> generator table (filled by ``@generator``; looked up
through ``lowering.kernels.registry.spec_for``, which imports every generator module)."""

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
    kv_dtype: str = "float16"  # KV cache storage dtype (float16 | float32); kernels accumulate in f32
    # decode attention (flash-decoding): at most this many splits of the cache per kv head, each
    # at least `attention_split_unit` positions; 1 = one workgroup per kv head, no combine dispatch
    attention_splits: int = 32
    attention_split_unit: int = 64
    # none | q8 | q4: 2-D weights (linears, embedding) in that common.weight_format, quantized at first load
    quantize: str = "none"
    keep_lm_head: bool = False  # with quantize: the lm_head (and a tied embedding) stays in weight_dtype


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
