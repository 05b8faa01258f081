"""The pass pipeline: named Graph -> Graph functions, verifier after each, any output dumpable."""

from __future__ import annotations

from collections.abc import Callable

from ir.graph import Graph
from ir.printer import to_text
from ir.verify import GraphError, verify
from lowering.classify import classify_matmuls
from lowering.fuse_attention_combine import fuse_attention_combine
from lowering.fuse_k_write import fuse_k_write
from lowering.fuse_prefill_attention import fuse_prefill_attention
from lowering.fuse_prefill_qkv import fuse_prefill_qkv
from lowering.fuse_prefill_swiglu import fuse_prefill_swiglu
from lowering.options import LowerOptions
from lowering.passes import (
    elide_layout_transposes,
    fuse_decode_attention,
    fuse_decode_gemv,
    fuse_elementwise,
    fuse_kv_writes,
    pack_qkv,
    set_kv_dtype,
    set_weight_dtype,
    split_decode_attention,
    split_large_weights,
)

Pass = Callable[[Graph, LowerOptions], Graph]

PASSES: list[tuple[str, Pass]] = [
    ("set_weight_dtype", set_weight_dtype),
    ("set_kv_dtype", set_kv_dtype),
    ("classify_matmuls", lambda g, o: classify_matmuls(g)),
    ("split_large_weights", split_large_weights),
    ("fuse_elementwise", lambda g, o: fuse_elementwise(g)),
    ("elide_layout_transposes", elide_layout_transposes),
    ("fuse_decode_attention", fuse_decode_attention),
    ("fuse_prefill_attention", fuse_prefill_attention),
    ("fuse_prefill_swiglu", fuse_prefill_swiglu),
    ("fuse_decode_gemv", fuse_decode_gemv),
    ("fuse_kv_writes", fuse_kv_writes),
    ("pack_qkv", pack_qkv),
    ("fuse_prefill_qkv", fuse_prefill_qkv),
    ("fuse_k_write", fuse_k_write),
    ("split_decode_attention", split_decode_attention),
    ("fuse_attention_combine", fuse_attention_combine),
]
PASS_NAMES = ["trace"] + [name for name, _ in PASSES]


def lower(g: Graph, opts: LowerOptions, dump_after: str | None = None,
          dump: Callable[[str], None] = print) -> Graph:
    if dump_after == "trace":
        dump(to_text(g))
    for name, fn in PASSES:
        g = fn(g, opts)
        try:
            verify(g)
        except GraphError as e:
            raise AssertionError(f"pass {name} produced an invalid graph: {e}") from None
        if dump_after == name:
            dump(f"# after {name}\n{to_text(g)}")
    return g
