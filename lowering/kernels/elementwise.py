"""Elementwise and data-movement kernels, generated from one table of per-element formulas."""

from __future__ import annotations

from tvm import te, tirx

from ir.graph import Graph, Node
from lowering.kernels.common import bytes_expr, dim_vars, numel_expr, placeholder, shape_key, te_shape
from lowering.kernels.spec import KernelSpec, generator
from lowering.options import LowerOptions


def _silu(x):
    return x / (tirx.const(1.0, "float32") + te.exp(-x))


_FORMULAS = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "silu": _silu,
    "silu_mul": lambda a, b: _silu(a) * b,
}


def _spec(node: Node, g: Graph, opts: LowerOptions, key: str, kclass: str, body, flops_per: int = 1,
          extra_args: tuple[str, ...] = (), scalars: tuple[str, ...] = ()) -> KernelSpec:
    """``body(tensors, v, idx)`` gives the output element at ``idx`` from input placeholders."""
    ins = [g[i] for i in node.inputs]
    ctx = opts.max_context

    def build():
        v = dim_vars(g)
        ph = [placeholder(n.shape, n.dtype, f"in{k}", v, ctx) for k, n in enumerate(ins)]
        ph += [placeholder(shape, dt, f"c{k}", v, ctx) for k, (shape, dt) in enumerate(extra_shapes)]
        out = te.compute(te_shape(node.shape, v, ctx), lambda *idx: body(ph, v, idx), name="out")
        return te.create_prim_func([*ph, out, *(v[s] for s in scalars)])

    extra_shapes = [(tuple(map(int, a.split(":")[-1].split("x"))), "float32") for a in extra_args]
    args = [*node.inputs, *extra_args, node.name]
    return KernelSpec(key, kclass, build, args, [len(args) - 1],
                      flops=f"{flops_per}*{numel_expr(node.shape, ctx)}", bytes=bytes_expr([*ins, node], ctx))


@generator("add", "mul", "silu", "silu_mul")
def elementwise(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    f = _FORMULAS[node.op]
    return _spec(node, g, opts, f"{node.op}:{shape_key(node)}", "elementwise",
                 lambda ph, v, idx: f(*(p[idx] for p in ph)), flops_per=4 if "silu" in node.op else 1)


@generator("transpose")
def transpose(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    perm = node.attrs["perm"]
    inv = [perm.index(i) for i in range(len(perm))]
    src = g[node.inputs[0]]
    return _spec(node, g, opts, f"transpose:{shape_key(src)}:{perm}", "copy",
                 lambda ph, v, idx: ph[0][tuple(idx[inv[i]] for i in range(len(idx)))], flops_per=0)


@generator("take_last")
def take_last(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    src = g[node.inputs[0]]
    return _spec(node, g, opts, f"take_last:{shape_key(src)}", "copy",
                 lambda ph, v, idx: ph[0][v["seq"] - 1, idx[1]], flops_per=0)


@generator("concat")
def concat(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    widths = [g[i].shape[-1] for i in node.inputs]

    def body(ph, v, idx):
        *lead, j = idx
        val, off = None, sum(widths)
        for p, w in reversed(list(zip(ph, widths, strict=True))):
            off -= w
            here = p[(*lead, tirx.max(j - off, 0))]
            val = here if val is None else tirx.Select(j < off + w, here, val)  # columns [off, off + w)
        return val

    return _spec(node, g, opts, f"concat:{shape_key(node)}:{widths}", "copy", body, flops_per=0)


def rope_tables(rope: str, hd: int, max_context: int) -> tuple[str, str]:
    """The runtime constants (host-computed float32 cos/sin, [max_context, hd / 2]) RoPE reads;
    ``rope`` is an :class:`ir.rope.Rope` key."""
    table = f"{max_context}x{hd // 2}"
    return f"const:rope_cos:{rope}:{hd}:{table}", f"const:rope_sin:{rope}:{hd}:{table}"


def rotate(x, cos, sin, v, idx, hd: int):
    """Rotate-half RoPE of element ``idx = (i, h, d)`` of ``x(i, h, d)`` at position past + i."""
    half = hd // 2
    i, h, d = idx
    pos = v["total"] - v["seq"] + i
    j = tirx.floormod(d, half)
    rot = tirx.Select(d < half, -x(i, h, tirx.min(d + half, hd - 1)), x(i, h, tirx.max(d - half, 0)))
    return x(i, h, d) * cos[pos, j] + rot * sin[pos, j]


@generator("rope")
def rope(node: Node, g: Graph, opts: LowerOptions) -> KernelSpec:
    """Rotate-half RoPE at positions ``past + i``. cos/sin come from tables the runtime computes
    on the host in float32 exactly as HF does (GPU sin/cos of large arguments are too coarse)."""
    x = g[node.inputs[0]]
    rope = node.attrs["rope"]
    consts = rope_tables(rope, x.shape[2], opts.max_context)

    def body(ph, v, idx):
        X, cos, sin = ph
        return rotate(lambda i, h, d: X[i, h, d], cos, sin, v, idx, x.shape[2])

    return _spec(node, g, opts, f"rope:{shape_key(x)}:{rope}:{opts.max_context}", "rope", body, flops_per=3,
                 extra_args=consts, scalars=("total",))
