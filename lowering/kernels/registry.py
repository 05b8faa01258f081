"""``spec_for(node, graph, options)``: the kernel spec of a node, from the generator registered for
its op. Importing this module imports every generator module, so the table is complete; the
generators import only ``spec`` (no cycle)."""

from __future__ import annotations

from ir.graph import Graph, Node
from lowering.kernels import (  # noqa: F401 - registration
    attention,
    elementwise,
    gemv,
    matmul,
    memory,
    norm,
    prefill_attention,
    softmax,
)
from lowering.kernels.spec import GENERATORS, KernelSpec
from lowering.options import LowerOptions


def spec_for(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    if node.op not in GENERATORS:
        raise KeyError(f"no kernel generator for op {node.op!r} (node {node.name})")
    return GENERATORS[node.op](node, g, opts)
