"""Element dtypes the graph, the kernels and the runtime share: one table of byte sizes."""

DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "int32": 4}
