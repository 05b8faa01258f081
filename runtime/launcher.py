"""Run one compiled kernel on numpy arrays (kernel tests, micro-benchmarks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.manifest import KernelInfo
from runtime.kernel import POD_BYTES, KernelProgram


class KernelLauncher:
    def __init__(self, device: Any, name: str, meta: KernelInfo, wgsl: str) -> None:
        import wgpu

        self.wgpu, self.device = wgpu, device
        self.program = KernelProgram(device, name, meta, wgsl)

    def __call__(self, arrays: list[np.ndarray], seq: int, total: int) -> list[np.ndarray]:
        """``arrays`` per kernel arg (spec order). Returns every arg's contents after the launch."""
        wgpu = self.wgpu
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        bufs = []
        for a in arrays:
            data = np.ascontiguousarray(a).tobytes()
            data += b"\0" * (-len(data) % 16 or (16 if not data else 0))
            bufs.append(self.device.create_buffer_with_data(data=data, usage=usage))
        grid, pod = self.program.launch(seq, total)
        pod_buf = self.device.create_buffer_with_data(data=pod.tobytes().ljust(POD_BYTES, b"\0"),
                                                      usage=wgpu.BufferUsage.UNIFORM)
        group = self.program.bind_group(self.device, bufs, pod_buf, 0)
        enc = self.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        cp.set_pipeline(self.program.pipeline)
        cp.set_bind_group(0, group)
        cp.dispatch_workgroups(*grid)
        cp.end()
        self.device.queue.submit([enc.finish()])
        return [np.frombuffer(self.device.queue.read_buffer(b), a.dtype)[: a.size].reshape(a.shape)
                for a, b in zip(arrays, bufs, strict=True)]
