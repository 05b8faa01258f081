"""Helpers shared by the kernel generators: symbolic dims as TIR vars, placeholders, byte counts."""

from __future__ import annotations

import tvm_ffi
from tvm import te, tirx

from common.dtypes import DTYPE_BYTES as DTYPE_BYTES  # the one table; generators import it from here
from common.weight_format import QUANTIZED_DTYPES, of_dtype
from ir.graph import Graph, Node
from ir.shapes import Shape

SCALARS = ("seq", "total")  # the runtime scalars: fields of the kernels' uniform PODArgs struct


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
    """Bytes of these tensors (a quantized weight: codes and scales, ``common.weight_format``)."""
    return " + ".join(str(of_dtype(n.dtype).nbytes(n.shape)) if n.dtype in QUANTIZED_DTYPES
                      else f"{DTYPE_BYTES[n.dtype]}*{numel_expr(n.shape, ctx)}" for n in nodes) or "0"


def _uniform_only(e: tirx.PrimExpr) -> bool:
    """Whether ``e`` reads runtime scalars and nothing else besides constants."""
    seen: list[str] = []
    tvm_ffi.structural_walk(e, (tirx.Var, lambda v: seen.append(v.name)))
    return bool(seen) and all(n in SCALARS for n in seen)


def opaque_loop_extents(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (a lowered device kernel) with every loop whose extent is computed from the
    runtime scalars alone (``(total + 511) >> 9``, ``seq``, ...) given the extent
    ``max(extent, 0 - b)``, ``b`` the enclosing ``blockIdx`` thread var: the same trip count for
    every value (``-b <= 0``, and a loop from 0 runs ``max(extent, 0)`` times), but no longer a
    function of uniforms alone.

    Why: Mesa's lavapipe (22.3) inlines the uniforms that decide a loop's trip count (Mesa's
    ``nir_find_inlinable_uniforms``; branch conditions on uniforms alone too, which no kernel has):
    it compiles a copy of the shader specialised to their current values, keeps none of them, and
    recompiles on every dispatch after the uniform buffer is rebound (10 ms - 1 s per dispatch;
    decode 3-30x slower, decided by the first dispatches of a process). A trip count that also
    depends on the workgroup id cannot be specialised; the workgroup id is uniform within a
    workgroup, so loops holding barriers stay in uniform control flow. It runs on the lowered
    kernel, after TVM's simplifications (which could not fold the ``max`` anyway: they know ``b``'s
    range, not the scalars'), because dlight's cross-thread reduction lowering needs the plain split
    extents. Applied once, by ``lowering.build``, to every kernel (explicit TIR and dlight alike);
    ``tests/test_kernels.py`` scans the emitted WGSL for loop bounds and branches on uniforms alone."""

    def loop(f: tirx.For, b: tirx.Var) -> tirx.For:
        if f.kind == tirx.ForKind.THREAD_BINDING or not _uniform_only(f.extent):
            return f
        dtype = str(f.extent.ty)
        neg = tirx.const(0, dtype) - (b if str(b.ty) == dtype else tirx.Cast(dtype, b))
        return tirx.For(f.loop_var, f.min, tirx.max(f.extent, neg), f.kind, f.body, f.thread_binding,
                        f.annotations, f.step)

    def launch(a: tirx.AttrStmt) -> tirx.AttrStmt:
        # post-order: a nested blockIdx launch has already rewritten the loops it encloses
        if a.attr_key != "thread_extent" or not a.node.thread_tag.startswith("blockIdx"):
            return a
        b = a.node.var
        return tirx.AttrStmt(a.node, a.attr_key, a.value,
                             tvm_ffi.structural_map(a.body, (tirx.For, lambda f: loop(f, b))))

    return tvm_ffi.structural_map(func, (tirx.AttrStmt, launch))
