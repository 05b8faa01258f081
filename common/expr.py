"""Integer expressions of the runtime scalars (``seq``, ``total``) as plain JSON data.

The compiler states launch grids and per-dispatch costs as expressions of the step's scalars
(``(seq + 31) // 32``). They cross into the runtime as trees, ``int | "seq" | [op, a, b]``, so
the runtime evaluates data with a five-line interpreter instead of ``eval``-ing text, and a
corrupt manifest is rejected when read rather than executed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

Expr = Any  # int | float | str | list: [op, a, b]

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "%": operator.mod,
    "min": min, "max": max,
}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}
VARS = ("seq", "total")


def parse(text: str) -> Expr:
    """``"(seq + 31) // 32"`` -> ``["//", ["+", "seq", 31], 32]``; anything else is a ValueError."""

    def conv(n: ast.AST) -> Expr:
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.Name) and n.id in VARS:
            return n.id
        if isinstance(n, ast.BinOp) and type(n.op) in _AST_OPS:
            return [_AST_OPS[type(n.op)], conv(n.left), conv(n.right)]
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return ["-", 0, conv(n.operand)]
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("min", "max") \
                and len(n.args) >= 2 and not n.keywords:
            out = conv(n.args[0])
            for a in n.args[1:]:
                out = [n.func.id, out, conv(a)]
            return out
        raise ValueError(f"unsupported expression {ast.unparse(n)!r} in {text!r}")

    return conv(ast.parse(text.strip(), mode="eval").body)


def validate(e: Expr) -> None:
    if isinstance(e, bool) or not isinstance(e, int | float | str | list):
        raise ValueError(f"not an expression: {e!r}")
    if isinstance(e, str) and e not in VARS:
        raise ValueError(f"unknown variable {e!r} (expected one of {VARS})")
    if isinstance(e, list):
        if len(e) != 3 or e[0] not in _OPS:
            raise ValueError(f"not an expression node: {e!r}")
        validate(e[1])
        validate(e[2])


def evaluate(e: Expr, env: Mapping[str, Any]) -> Any:
    """Works on ints and on numpy arrays of scalars alike (min/max need ints there)."""
    if isinstance(e, list):
        return _OPS[e[0]](evaluate(e[1], env), evaluate(e[2], env))
    return env[e] if isinstance(e, str) else e


def uses(e: Expr) -> set[str]:
    """The variables ``e`` depends on (a grid that uses none is computed once)."""
    if isinstance(e, list):
        return uses(e[1]) | uses(e[2])
    return {e} if isinstance(e, str) else set()


def to_text(e: Expr) -> str:
    """The readable form, as ``parse`` accepts it."""
    if not isinstance(e, list):
        return str(e)
    op, a, b = e
    if op in ("min", "max"):
        return f"{op}({to_text(a)}, {to_text(b)})"
    return f"({to_text(a)} {op} {to_text(b)})"
