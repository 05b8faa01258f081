"""Time one kernel alone on the GPU with timestamp queries (tuning, roofline ceilings).

A weight read repeatedly from one buffer would be served from the GPU's L2 cache after the first
launch and look faster than memory allows, so the read-only buffers are replicated until the
rotating set is larger than ``rotate_bytes`` and each launch reads the next copy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from runtime.device import Device
from runtime.kernel import POD_BYTES, KernelProgram

ROTATE_BYTES = 256 << 20


class ArgBuffers:
    """GPU buffers for one kernel's args (spec order): read-only args filled with small random values
    and replicated until the set is larger than ``rotate_bytes``, written args one buffer each.
    Every schedule of one kernel has the same args, so the tuner's candidates share one set; an arg
    is written if any of ``programs`` writes it (the split-K GEMM schedules bind scratch and
    counters the others leave unbound: the counters must start at zero, as integers)."""

    def __init__(self, dev: Device, programs: list[KernelProgram], sizes: list[int],
                 rotate_bytes: int = ROTATE_BYTES, seed: int = 0) -> None:
        import wgpu

        d = dev.device
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST
        bindings = [b for p in programs for b in p.bindings]
        written = {b.arg for b in bindings if b.write}
        types = {b.arg: b.type for b in bindings}
        read_bytes = sum(s for i, s in enumerate(sizes) if i not in written)
        self.copies = max(1, min(16, rotate_bytes // max(read_bytes, 1)))
        rng = np.random.default_rng(seed)
        self.buffers: list[list[Any]] = []
        self.nbytes = 0  # GPU memory this set holds (benchmark scratch: every copy of every arg)
        for i, size in enumerate(sizes):
            size = (size + 15) // 16 * 16
            n = 1 if i in written else self.copies
            # values of the binding's element type: small normal floats (no denormal slow paths), and
            # zeros for integers (token ids must stay inside the table)
            ty = types.get(i, "f32")
            if "f16" in ty:
                data = rng.uniform(-1, 1, size // 2).astype(np.float16).tobytes()
            elif "f32" in ty:
                data = rng.uniform(-1, 1, size // 4).astype(np.float32).tobytes()
            else:
                data = bytes(size)
            self.buffers.append([d.create_buffer_with_data(data=data, usage=usage) for _ in range(n)])
            self.nbytes += n * size

    def copy(self, c: int) -> list[Any]:
        """One buffer per arg: rotation ``c``'s copy of each read-only one."""
        return [bufs[c % len(bufs)] for bufs in self.buffers]

    def destroy(self) -> None:
        for bufs in self.buffers:
            for b in bufs:
                b.destroy()


class KernelTimer:
    def __init__(self, dev: Device, program: KernelProgram, args: list[int] | ArgBuffers, seq: int, total: int,
                 rotate_bytes: int = ROTATE_BYTES, seed: int = 0) -> None:
        """``args``: bytes of each kernel arg (spec order: the timer makes and owns an
        ``ArgBuffers``), or a set shared with other schedules of the same kernel (not destroyed here)."""
        import wgpu

        if not dev.has_timestamps:
            raise RuntimeError("timing kernels needs the timestamp-query feature")
        self.dev, self.program, self.wgpu = dev, program, wgpu
        d = dev.device
        self.owned = not isinstance(args, ArgBuffers)
        self.args = ArgBuffers(dev, [program], args, rotate_bytes, seed) if self.owned else args
        self.nbytes = self.args.nbytes
        self.grid, pod = program.launch(seq, total)
        self.pod = d.create_buffer_with_data(data=pod.tobytes().ljust(POD_BYTES, b"\0"),
                                             usage=wgpu.BufferUsage.UNIFORM)
        self.groups = [program.bind_group(d, self.args.copy(c), self.pod, 0) for c in range(self.args.copies)]
        self.qs = d.create_query_set(type=wgpu.QueryType.timestamp, count=2)
        self.resolve = d.create_buffer(size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        self.read = d.create_buffer(size=16, usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)

    def seconds(self, reps: int = 50, trials: int = 5) -> float:
        """Median over ``trials`` of the mean GPU time of one launch in a pass of ``reps`` launches.
        Each timed pass follows an untimed one of the same launches in the same submission, so the
        GPU is busy when the timed pass begins: between submissions the host waits for the result
        and the GPU idles, and on the H200 short kernels then timed up to 5x slow for whole rounds
        of ``runtime.tune`` (spreads of x4.7 between a candidate's rounds)."""
        wgpu, d = self.wgpu, self.dev.device
        out = []
        for _ in range(trials + 1):
            enc = d.create_command_encoder()
            for timed in (False, True):
                stamps = {"query_set": self.qs, "beginning_of_pass_write_index": 0, "end_of_pass_write_index": 1}
                cp = enc.begin_compute_pass(timestamp_writes=stamps if timed else None)
                cp.set_pipeline(self.program.pipeline)
                for r in range(reps):
                    cp.set_bind_group(0, self.groups[r % len(self.groups)])
                    cp.dispatch_workgroups(*self.grid)
                cp.end()
            enc.resolve_query_set(self.qs, 0, 2, self.resolve, 0)
            enc.copy_buffer_to_buffer(self.resolve, 0, self.read, 0, 16)
            d.queue.submit([enc.finish()])
            self.read.map_sync(wgpu.MapMode.READ)
            t = np.frombuffer(self.read.read_mapped(), np.uint64).astype(np.float64)
            self.read.unmap()
            out.append((t[1] - t[0]) * 1e-9 / reps)
        return statistics.median(out[1:])

    def warm_up(self, seconds: float = 0.5) -> None:
        """Keep the GPU busy with this kernel for ``seconds``: a GPU that was idle raises its clocks
        only under load, and the first candidates timed in a fresh process would pay for it (on
        the H200 the same o_proj GEMV timed 12.8 us first thing in a cold call, 4.4 us in a warm one)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.seconds(reps=50, trials=1)

    def destroy(self) -> None:
        if self.owned:
            self.args.destroy()
        for b in (self.pod, self.resolve, self.read):
            b.destroy()
