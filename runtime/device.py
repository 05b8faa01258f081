"""Open one Vulkan device through wgpu (backend forced to Vulkan) and check it against a module."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from common.errors import UserError
from common.manifest import Requirements

NO_ADAPTER_HELP = ("no Vulkan adapter found. Install your GPU's Vulkan driver, or the CPU implementation "
                   "lavapipe: sudo apt-get install -y mesa-vulkan-drivers libvulkan1")


@dataclass
class Device:
    adapter: Any
    device: Any
    name: str
    features: set[str]
    limits: dict[str, int]
    has_timestamps: bool
    is_cpu: bool


def list_adapters() -> list[Any]:
    # Mesa's WSI layer complains on stderr when this is unset, even for compute-only use.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    import wgpu

    try:
        adapters = wgpu.gpu.enumerate_adapters_sync()
    except Exception as e:  # noqa: BLE001 - the loader itself failing (no libvulkan) is the same user problem
        raise UserError(f"{NO_ADAPTER_HELP} ({e})") from None
    return [a for a in adapters if a.info.get("backend_type") == "Vulkan"]


def open_device(which: str | None = None, required: Requirements | None = None,
                want_timestamps: bool = True) -> Device:
    """``which``: an adapter index or a substring of its name (default: env QWEN3VK_ADAPTER, else
    the first discrete/integrated GPU, else the first adapter, e.g. lavapipe)."""
    adapters = list_adapters()
    if not adapters:
        raise UserError(NO_ADAPTER_HELP)
    which = which if which is not None else os.environ.get("QWEN3VK_ADAPTER")
    if which is not None and which != "":
        if str(which).isdigit() and int(which) < len(adapters):
            adapter = adapters[int(which)]
        else:
            match = [a for a in adapters if str(which).lower() in a.info.get("device", "").lower()]
            if not match:
                names = ", ".join(f"{i}: {a.info.get('device')}" for i, a in enumerate(adapters))
                raise UserError(f"no Vulkan adapter matches {which!r} (available: {names})")
            adapter = match[0]
    else:
        rank = {"DiscreteGPU": 0, "IntegratedGPU": 1}
        adapter = sorted(adapters, key=lambda a: rank.get(a.info.get("adapter_type", ""), 2))[0]
    features = set(adapter.features)
    limits = dict(adapter.limits)
    if required is not None:
        check_adapter(adapter.info.get("device", "?"), features, limits, required)
    ts = want_timestamps and "timestamp-query" in features
    wanted = [f for f in ("shader-f16", "timestamp-query") if f in features and (f != "timestamp-query" or ts)]
    raise_limits = {k: limits[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                           "max-storage-buffers-per-shader-stage",
                                           "max-compute-invocations-per-workgroup",
                                           "max-compute-workgroup-size-x", "max-compute-workgroup-storage-size")
                    if k in limits}
    device = adapter.request_device_sync(required_features=wanted, required_limits=raise_limits)
    return Device(adapter, device, adapter.info.get("device", "?"), features, limits, ts,
                  adapter.info.get("adapter_type") == "CPU")


def check_adapter(name: str, features: set[str], limits: dict[str, int], required: Requirements) -> None:
    """Refuse, with the fix in the message, an adapter that lacks what the module was compiled for.
    (A missing ``timestamp-query`` is not an error: profiling falls back to CPU timing.)"""
    missing = [f for f in required.features if f not in features]
    if missing:
        raise UserError(f"adapter '{name}' lacks required feature(s) {missing}; recompile with --weight-dtype f32 "
                        "--kv-dtype f32 and without --quantize to run without shader-f16")
    for key, need in required.limits.items():
        have = limits.get(key)
        if have is not None and have < need:
            raise UserError(f"adapter '{name}' limit {key} is {have}, the module needs {need}; recompile with a "
                            "smaller --max-context / --prefill-chunk")


def wait_idle(device: Any) -> None:
    """Block until the queue's submitted work is done. A tiny readback does it portably
    (``on_submitted_work_done_sync`` is broken in some wgpu-py / wgpu-native pairings)."""
    import wgpu

    buf = device.create_buffer(size=4, usage=wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST)
    device.queue.read_buffer(buf)
    buf.destroy()
