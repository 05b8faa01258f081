"""Which storage dtype each weight node gets: ``opts.weight_dtype``, or, in a ``--quantize`` build,
the quantized format (``common.weight_format``) for every 2-D weight: the linears, the
embedding and the lm_head (unless ``opts.keep_lm_head``). Norm weights (1-D, a few KB) stay in
``weight_dtype``. A weight whose reduced dim is not a multiple of the group size is refused,
naming it: quantizing it would need padded groups that no kernel reads."""

from __future__ import annotations

from common.weight_format import FORMATS
from ir.graph import Graph
from lowering.errors import LoweringError
from lowering.options import LowerOptions

QUANTIZE_CHOICES = ("none", "q8", "q4")


def lm_head_param(g: Graph) -> str | None:
    """The checkpoint param the ``logits`` output is computed from (the embedding's, if tied)."""
    for out in g.by_op("output"):
        src = g[out.inputs[0]]
        if out.attrs.get("name") == "logits" and src.op == "matmul":
            return g[src.inputs[1]].attrs["param"]
    return None


def weight_dtypes(g: Graph, opts: LowerOptions) -> dict[str, str]:
    """Weight node name -> storage dtype."""
    if opts.quantize not in QUANTIZE_CHOICES:
        raise LoweringError(f"--quantize {opts.quantize!r} is not supported (expected one of "
                            f"{', '.join(QUANTIZE_CHOICES)})")
    kept = lm_head_param(g) if opts.keep_lm_head else None  # one param, one format: a tied embedding too
    out = {}
    for n in g.by_op("weight"):
        out[n.name] = opts.weight_dtype
        if opts.quantize == "none" or len(n.shape) != 2 or n.attrs["param"] == kept:
            continue
        fmt = FORMATS[opts.quantize]
        try:
            fmt.check(n.shape, n.attrs["param"])
        except ValueError as e:
            raise LoweringError(f"--quantize {opts.quantize}: {e}; compile without --quantize") from None
        out[n.name] = fmt.dtype
    return out
