"""Helpers shared by the kernel generators: symbolic dims as TIR vars, placeholders, byte counts."""

from __future__ import annotations

from tvm import te, tirx

from ir.graph import Graph, Node
from ir.shapes import Shape

DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4}


def dim_vars(g: Graph) -> dict[str, tirx.PrimExpr]:
    """Fresh int32 vars for the runtime scalars (int64 breaks dlight's Matmul rule); in the
    decode graph ``seq`` is the constant 1, so kernels specialise to it."""
    seq = g.meta.get("dims", {}).get("seq", "seq")
    return {"seq": tirx.const(seq, "int32") if isinstance(seq, int) else tirx.Var("seq", "int32"),
            "total": tirx.Var("total", "int32")}


def te_shape(shape: Shape, v: dict[str, tirx.Var], ctx: int):
    return tuple(ctx if d == "ctx" else (v[d] if isinstance(d, str) else d) for d in shape)


def placeholder(shape: Shape, dtype: str, name: str, v: dict[str, tirx.Var], ctx: int) -> te.Tensor:
    return te.placeholder(te_shape(shape, v, ctx), dtype, name=name)



def shape_key(n: Node) -> str:
    return f"{n.dtype}[{','.join(map(str, n.shape))}]"


def numel_expr(shape: Shape, ctx: int) -> str:
    parts = [str(ctx) if d == "ctx" else str(d) for d in shape]
    return "*".join(parts) if parts else "1"


def bytes_expr(nodes: list[Node], ctx: int) -> str:
    return " + ".join(f"{DTYPE_BYTES.get(n.dtype, 4)}*{numel_expr(n.shape, ctx)}" for n in nodes) or "0"

