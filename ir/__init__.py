"""The op graph: a small typed IR over networkx, shared by the frontend, lowering and runtime."""

from ir.graph import Graph, Node
from ir.verify import GraphError, verify

__all__ = ["Graph", "Node", "GraphError", "verify"]
