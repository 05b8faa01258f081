"""Kernel generators: one TE/TIR definition per op kind, parameterized by the node's shapes.

``registry.spec_for(node, graph, options)`` returns a ``KernelSpec``: the computation (a PrimFunc builder),
a key that identifies it (identical keys are built once), the kernel class that picks its
schedule, and which graph tensors (or runtime constants) bind to its buffer params.
"""
