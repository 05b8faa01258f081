"""Runtime: execute a compiled module on one Vulkan device through wgpu. Needs no TVM."""

from runtime.api import load

__all__ = ["load"]
