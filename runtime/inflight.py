"""Submit work, and later wait for *that* submission only, to read a few bytes it wrote.

Why: pipelined greedy decoding (``Executor.greedy_decode``) keeps step t+1 queued on the GPU while
the host reads step t's token. wgpu-py's ``map_sync`` waits through a device poll that blocks until
the *latest* submission is done, so it would drain the queue (step t+1 too) on every token. wgpu-
native can submit "for index" and poll until a given submission index; we call those through
wgpu-py's own cffi handles, as ``runtime.fastpass`` does. Without those internals (another
wgpu-py version) the public API is used: same results, the queue drains at each read.
"""

from __future__ import annotations

from typing import Any

from runtime import fastpass


class Inflight:
    def __init__(self, device: Any) -> None:
        self.device = device
        raw = fastpass.RAW if hasattr(device, "_internal") and hasattr(device.queue, "_internal") else None
        self._raw = raw
        if raw is not None:
            lib, ffi = raw
            self._status: list[int] = []

            @ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
            def mapped(status, _message, _u1, _u2):  # noqa: ANN001 - C callback
                self._status.append(int(status))

            self._callback = mapped  # kept alive as long as the map requests may fire it
            self._info = ffi.new("WGPUBufferMapCallbackInfo *")
            self._info.mode = lib.WGPUCallbackMode_AllowProcessEvents
            self._info.callback = mapped
            self._index = ffi.new("WGPUSubmissionIndex *")

    def submit(self, command_buffers: list[Any]) -> int:
        """Submit; returns the submission's index (0 on the public-API path)."""
        if self._raw is None:
            self.device.queue.submit(command_buffers)
            return 0
        lib, ffi = self._raw
        handles = ffi.new("WGPUCommandBuffer[]", [cb._internal for cb in command_buffers])
        return int(lib.wgpuQueueSubmitForIndex(self.device.queue._internal, len(command_buffers), handles))

    def read_int32(self, buffer: Any, index: int) -> int:
        """Wait for submission ``index``, then read the int32 at the start of ``buffer`` (MAP_READ)."""
        if self._raw is None:
            buffer.map_sync(1)  # wgpu.MapMode.READ
            value = int.from_bytes(buffer.read_mapped(0, 4), "little", signed=True)
            buffer.unmap()
            return value
        lib, ffi = self._raw
        self._status.clear()
        lib.wgpuBufferMapAsync(buffer._internal, lib.WGPUMapMode_Read, 0, 4, self._info[0])
        self._index[0] = index
        lib.wgpuDevicePoll(self.device._internal, True, self._index)
        while not self._status:  # the callback runs in a poll once the submission is done
            lib.wgpuDevicePoll(self.device._internal, True, self._index)
        if self._status[0] != lib.WGPUMapAsyncStatus_Success:
            raise RuntimeError(f"could not map the token readback buffer (status {self._status[0]})")
        value = int(ffi.cast("int32_t *", lib.wgpuBufferGetConstMappedRange(buffer._internal, 0, 4))[0])
        lib.wgpuBufferUnmap(buffer._internal)
        return value
