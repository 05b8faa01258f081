"""The per-dispatch hot path of a step: set pipeline, set bind group, dispatch.

wgpu-py wraps every native call in an error-capturing proxy (capture, call, release, check):
about 3 us per call, three calls per dispatch, hundreds of dispatches per token; on a fast GPU
that Python overhead, not the GPU, bounds decode speed. These three calls take only objects that
were validated when they were created (pipelines, bind groups) and integers, so we call wgpu-native
directly through wgpu-py's own cffi handles. If those internals are not there (another wgpu-py
version), the public API is used instead: slower, same result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _raw_lib() -> tuple[Any, Any] | None:
    try:
        from wgpu.backends.wgpu_native._ffi import ffi, lib

        return (lib, ffi) if hasattr(lib, "wgpuComputePassEncoderDispatchWorkgroups") else None
    except ImportError:
        return None


RAW = _raw_lib()  # (lib, ffi) of wgpu-native, or None (also used by runtime.inflight)


def encoder_for(cp: Any) -> Callable[[Any, Any, tuple[int, int, int]], None]:
    """A function ``(pipeline, bind_group, grid)`` that encodes one dispatch into compute pass ``cp``;
    it skips ``set_pipeline`` when the pipeline did not change."""
    last: list[Any] = [None]
    handle = getattr(cp, "_internal", None)
    if RAW is not None and handle is not None:
        lib, ffi = RAW
        set_pipeline, set_group = lib.wgpuComputePassEncoderSetPipeline, lib.wgpuComputePassEncoderSetBindGroup
        dispatch, null = lib.wgpuComputePassEncoderDispatchWorkgroups, ffi.NULL

        def encode(pipeline: Any, group: Any, grid: tuple[int, int, int]) -> None:
            if pipeline is not last[0]:
                set_pipeline(handle, pipeline._internal)
                last[0] = pipeline
            set_group(handle, 0, group._internal, 0, null)
            dispatch(handle, *grid)

        return encode

    def encode_public(pipeline: Any, group: Any, grid: tuple[int, int, int]) -> None:
        if pipeline is not last[0]:
            cp.set_pipeline(pipeline)
            last[0] = pipeline
        cp.set_bind_group(0, group)
        cp.dispatch_workgroups(*grid)

    return encode_public
