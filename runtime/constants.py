"""Buffers a kernel reads that the runtime makes on the host (named ``const:...`` in a plan): RoPE
tables, the zeroed arrival counters of a fused attention combine or a split-K GEMM, and the split-K
GEMMs' partial records (scratch)."""

from __future__ import annotations

import numpy as np

from ir.rope import Rope, tables


def make_constant(name: str) -> np.ndarray:
    """``const:rope_cos:<rope key>:<head_dim>:<ctx>x<half>`` -> float32 [ctx, half] (and rope_sin);
    ``const:counters:<n>x1`` -> int32 zeros [n, 1] (arrival counters a kernel leaves at zero,
    ``lowering.kernels.attention.split_counters``, ``lowering.kernels.gemm.schedules``);
    ``const:scratch:<n>x4`` -> float32 [n, 4] (records a kernel writes before it reads them)."""
    _, kind, *key, shape = name.split(":")
    rows, cols = (int(x) for x in shape.split("x"))
    if kind == "counters":
        return np.zeros((rows, cols), np.int32)
    if kind == "scratch":
        return np.zeros((rows, cols), np.float32)
    rope, hd = key
    cos, sin = tables(np.arange(rows), int(hd), Rope.from_key(rope))
    table = cos if kind == "rope_cos" else sin
    return np.ascontiguousarray(table[:, :cols])
