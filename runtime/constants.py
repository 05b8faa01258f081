"""Tables a kernel reads that the runtime computes on the host (named ``const:...`` in a plan)."""

from __future__ import annotations

import numpy as np

from ir.rope import Rope, tables


def make_constant(name: str) -> np.ndarray:
    """``const:rope_cos:<rope key>:<head_dim>:<ctx>x<half>`` -> float32 [ctx, half] (and rope_sin)."""
    _, kind, rope, hd, shape = name.split(":")
    ctx, half = (int(x) for x in shape.split("x"))
    cos, sin = tables(np.arange(ctx), int(hd), Rope.from_key(rope))
    table = cos if kind == "rope_cos" else sin
    return np.ascontiguousarray(table[:, :half])
