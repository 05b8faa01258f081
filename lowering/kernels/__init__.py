"""Kernel generators: one TE/TIR definition per op kind, parameterized by the node's shapes.

``spec_for(node, graph, options)`` returns a ``KernelSpec``: the computation (a PrimFunc builder),
a key that identifies it (identical keys are built once), the kernel class that picks its
schedule, and which graph tensors (or runtime constants) bind to its buffer params.
"""

from lowering.kernels.spec import KernelSpec, LowerOptions, spec_for

__all__ = ["KernelSpec", "LowerOptions", "spec_for"]
