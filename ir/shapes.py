"""Symbolic dimensions.

A dim is an int or the name of a runtime scalar (``seq``, ``total``, ``ctx``). ``past`` is not a
separate scalar: every kernel and the reference executor derive it as ``total - seq``, so the set
of runtime scalars stays minimal and a dim never needs an expression language.
"""

from __future__ import annotations

Dim = int | str
Shape = tuple[Dim, ...]


def resolve(shape: Shape, dims: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape for the given values of the symbolic dims."""
    return tuple(d if isinstance(d, int) else dims[d] for d in shape)


def fmt(shape: Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def same_numel(a: Shape, b: Shape) -> bool:
    """Whether two shapes hold the same element count, symbolic factors compared by name."""

    def split(s: Shape) -> tuple[int, list[str]]:
        n, syms = 1, []
        for d in s:
            if isinstance(d, int):
                n *= d
            else:
                syms.append(d)
        return n, sorted(syms)

    return split(a) == split(b)
