"""A tracing tensor API: model code calls these functions on proxies, and each call records one
node (with its inferred shape) in an ``ir.Graph``. The model is written once against this API
and traced per phase, like torch.fx's symbolic tracing but with explicit shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ir.graph import Graph, Node
from ir.ops import infer
from ir.shapes import Shape


class Proxy:
    """Stands for one tensor (one node's output) during tracing."""

    def __init__(self, tracer: Tracer, node: Node) -> None:
        self.tracer, self.node = tracer, node

    @property
    def shape(self) -> Shape:
        return self.node.shape

    def __add__(self, other: Proxy) -> Proxy:
        return self.tracer.op("add", [self, other])

    def __mul__(self, other: Proxy) -> Proxy:
        return self.tracer.op("mul", [self, other])

    def reshape(self, *shape: int | str) -> Proxy:
        return self.tracer.op("reshape", [self], shape=tuple(shape))

    def transpose(self, *perm: int) -> Proxy:
        return self.tracer.op("transpose", [self], perm=list(perm))


class Tracer:
    def __init__(self, phase: str, meta: dict[str, Any] | None = None) -> None:
        self.graph = Graph(phase, meta)
        self._scope: list[str] = []

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _name(self, base: str) -> str:
        return self.graph.fresh_name(".".join([*self._scope, base]))

    def leaf(self, op: str, name: str, shape: Shape, dtype: str, **attrs: Any) -> Proxy:
        node = Node(self.graph.fresh_name(name), op, [], tuple(shape), dtype, attrs)
        return Proxy(self, self.graph.add(node))

    def op(self, op: str, inputs: list[Proxy], node_name: str | None = None, **attrs: Any) -> Proxy:
        shape, dtype = infer(op, [(p.node.shape, p.node.dtype) for p in inputs], attrs)
        node = Node(self._name(node_name or op), op, [p.node.name for p in inputs], tuple(shape), dtype, attrs)
        return Proxy(self, self.graph.add(node))


# functional API used by the model definition ------------------------------------------------
def linear(x: Proxy, w: Proxy, name: str) -> Proxy:
    """``x @ w.T`` with ``w`` in HF's [out, in] layout."""
    return x.tracer.op("matmul", [x, w], node_name=name, transpose_b=True)


def matmul(a: Proxy, b: Proxy, name: str, **attrs: Any) -> Proxy:
    return a.tracer.op("matmul", [a, b], node_name=name, **attrs)


def rms_norm(x: Proxy, w: Proxy, eps: float, name: str) -> Proxy:
    return x.tracer.op("rms_norm", [x, w], node_name=name, eps=eps)


def rope(x: Proxy, rope_key: str, name: str) -> Proxy:
    """``rope_key``: an :class:`ir.rope.Rope` key (every number the frequencies depend on)."""
    return x.tracer.op("rope", [x], node_name=name, rope=rope_key)


def silu(x: Proxy) -> Proxy:
    return x.tracer.op("silu", [x])


def softmax(x: Proxy, scale: float, causal: bool) -> Proxy:
    return x.tracer.op("softmax", [x], scale=scale, causal=causal)


def embedding(ids: Proxy, table: Proxy) -> Proxy:
    return ids.tracer.op("embedding", [ids, table], node_name="embed")


def kv_cache_write(cache: Proxy, new: Proxy, name: str) -> Proxy:
    return cache.tracer.op("kv_cache_write", [cache, new], node_name=name)


def kv_cache_read(cache: Proxy, name: str) -> Proxy:
    return cache.tracer.op("kv_cache_read", [cache], node_name=name)


def take_last(x: Proxy) -> Proxy:
    return x.tracer.op("take_last", [x])


def output(x: Proxy, name: str) -> Proxy:
    return x.tracer.op("output", [x], node_name=f"out.{name}", name=name)
