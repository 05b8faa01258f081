"""One compiled kernel on a wgpu device: its pipeline, and per launch the grid and POD bytes.

The ABI is TVM's WebGPU one: buffer bindings first, then a uniform ``PODArgs`` struct with the
scalar params and ``packGridDimX``. A grid wider than 65535 is folded into z exactly as TVM's
web runtime does; we pass ``packGridDimX = grid_x - 1`` so the shader's ``>`` guard is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common import expr
from common.manifest import KernelInfo

MAX_GRID = 65535
POD_BYTES = 16  # i32 seq, i32 total, u32 packGridDimX, padding: every kernel's struct fits


class KernelProgram:
    def __init__(self, device: Any, name: str, meta: KernelInfo, wgsl: str) -> None:
        self.name, self.meta = name, meta
        self.bindings = meta.bindings
        self.pod = meta.pod
        self._grid = meta.grid
        # a grid that names neither runtime scalar is computed once, not per step
        self.static = not any(expr.uses(e) for e in meta.grid)
        module = device.create_shader_module(code=wgsl, label=name)
        self.pipeline = device.create_compute_pipeline(layout="auto", compute={"module": module,
                                                                               "entry_point": meta.entry})
        self.layout = self.pipeline.get_bind_group_layout(0)

    def grid(self, seq: int, total: int) -> tuple[tuple[int, int, int], int]:
        """Workgroup counts (x folded into z past 65535) and ``packGridDimX``."""
        env = {"seq": seq, "total": total}
        gx, gy = int(expr.evaluate(self._grid[0], env)), int(expr.evaluate(self._grid[1], env))
        pack = gx - 1
        gz = 1
        while gx > MAX_GRID:
            gx, gz = (gx + 1) // 2, gz * 2
        return (gx, gy, gz), pack

    def launch(self, seq: int, total: int) -> tuple[tuple[int, int, int], np.ndarray]:
        """Workgroup counts and the POD struct bytes (as 4 x int32) for these runtime scalars."""
        grid, pack = self.grid(seq, total)
        pod = np.zeros(4, np.int32)
        vals = {"seq": seq, "total": total}
        for i, p in enumerate(self.pod):
            pod[i] = vals[p]
        pod[len(self.pod)] = pack
        return grid, pod

    def bind_group(self, device: Any, buffers: list[Any], pod_buffer: Any, pod_offset: int) -> Any:
        """``buffers`` are given per kernel *arg* (spec order); bindings are remapped to slots."""
        entries = [{"binding": b.slot, "resource": {"buffer": buffers[b.arg], "offset": 0,
                                                    "size": buffers[b.arg].size}} for b in self.bindings]
        entries.append({"binding": len(self.bindings),
                        "resource": {"buffer": pod_buffer, "offset": pod_offset, "size": POD_BYTES}})
        return device.create_bind_group(layout=self.layout, entries=entries)
