"""Lowering: op graph -> classified, fused, planned graph -> TVM-scheduled WGSL kernels."""
