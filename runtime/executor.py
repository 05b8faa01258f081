"""Executes a compiled module's phases on the GPU.

Everything is created once: weight buffers (uploaded once, in each ``WeightSpec``'s format: float
weights converted from the checkpoint, quantized ones from the packed-weight cache
``runtime.weight_cache``; row chunks where the plan split a weight), the KV caches, activation
slots per phase, pipelines and bind groups. Every allocation is counted per class
(``MEMORY_CLASSES``: ``allocated``). A step writes the token ids and one uniform buffer of POD args, encodes its
dispatches through the fast path (``runtime.fastpass``) in several submits so the GPU starts early
(one pass per dispatch when profiling, for timestamps), and reads back only the logits row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import UserError
from common.manifest import SCRATCH_PREFIX, Dispatch, Plan, WeightSpec, const_nbytes
from common.progress import Progress
from common.weight_format import FORMATS, encode
from frontend.checkpoint import WeightStore
from runtime.compiled import CompiledModule
from runtime.constants import make_constant
from runtime.device import Device, wait_idle
from runtime.fastpass import encoder_for
from runtime.inflight import Inflight
from runtime.kernel import POD_BYTES, KernelProgram
from runtime.launches import LaunchTable
from runtime.weight_cache import load as load_packed

# what the GPU memory of a loaded model is spent on (bench.py reports each)
MEMORY_CLASSES = ("weights", "kv", "activations", "constants", "staging")
UPLOAD_FLUSH_BYTES = 256 << 20
# Share of a short step's dispatches submitted before the rest is encoded; from LONG_STEP_ROWS rows
# on, the first submit's dispatches and the factor each later submit's end grows by (submit_cuts).
FIRST_SHARE = 0.375
LONG_STEP_ROWS, LONG_FIRST, LONG_GROWTH = 64, 4, 4


def submit_cuts(dispatches: int, seq: int) -> list[int]:
    """Where a step of ``dispatches`` over ``seq`` new rows is cut into submits (``[0, .., dispatches]``).
    A short step (decode, a short chat turn): two pieces. Measured on the H100 (qwen3-0.6b decode,
    257 dispatches): encode + submit cost ~5 us per dispatch on the host, the GPU ~9 us, so the
    first piece must keep the GPU busy while the host does the remaining ones: a share of 5 / (5 +
    9) ~ 0.36 (96 dispatches: 268 -> 361 tok/s; equal pieces of 64 were slower than one submit:
    each submit has a fixed cost). A long prefill: a dispatch over hundreds of rows keeps the GPU
    busy many times as long as the host takes to encode one, so the GPU can start after 4 and each
    piece can end 4x further (4, 16, 64, the rest): H200, 0.6B prefill-512 (259 dispatches),
    medians of 12 interleaved runs (``benchmarks/submit_pieces.py``): 20.75 ms vs 21.34 with the
    two pieces and 22.19 in one submit."""
    cuts = [0]
    if seq >= LONG_STEP_ROWS:
        cut = LONG_FIRST
        while cut < dispatches // 2:
            cuts.append(cut)
            cut *= LONG_GROWTH
    elif dispatches >= 32:
        cuts.append(int(dispatches * FIRST_SHARE))
    return [*cuts, dispatches]


def _align(n: int, a: int = 16) -> int:
    return (n + a - 1) // a * a


@dataclass
class StepProfile:
    """Per-dispatch GPU times (seconds) of one step, in dispatch order."""

    phase: str
    seq: int
    total: int
    times: list[float]
    source: str  # "gpu-timestamps" | "cpu-sync"


@dataclass
class _Phase:
    dispatches: list[Dispatch]
    programs: list[KernelProgram]  # decode: the plan's dispatches, then the greedy argmax pair
    bind_groups: list[Any]
    pod_buffer: Any
    pod_stride: int
    logits: Any
    launches: LaunchTable
    slots: list[Any] = field(default_factory=list)
    records: Any = None  # the split-K GEMMs' records (None: no chosen schedule binds them)


class Executor:
    def __init__(self, module: CompiledModule, dev: Device, weights: WeightStore, verbose: bool = True) -> None:
        import wgpu

        self.wgpu = wgpu
        self.module, self.dev, self.device = module, dev, dev.device
        mf = module.manifest
        self.vocab = mf.model.vocab_size
        self.ctx = mf.options.max_context
        self.chunk = mf.options.prefill_chunk
        self.weights = weights
        self.verbose = verbose
        self.live_buffers = 0
        self.allocated_bytes = 0
        self.allocated = dict.fromkeys(MEMORY_CLASSES, 0)  # bytes per memory class
        S = wgpu.BufferUsage.STORAGE
        self._usage = S | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC
        used = {d.kernel for plan in mf.phases.values() for d in plan.dispatches}
        self.programs = {n: KernelProgram(self.device, n, mf.kernels[n], module.wgsl[n]) for n in sorted(used)}
        self.shared: dict[str, Any] = {}
        self._upload_weights()
        self.ids = self._buffer(_align(4 * max(self.chunk, 1)), "input_ids", kind="activations")
        for name in mf.kv_cache.names():
            self.shared[name] = self._buffer(mf.kv_cache.buffer_bytes, name, kind="kv")
        self.phases = {p: self._prepare(p) for p in ("prefill", "decode")}
        self.staging = self._buffer(_align(4 * self.vocab), "logits_staging",
                                    wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST, kind="staging")
        self.query_set = None
        self.inflight = Inflight(self.device)
        # greedy_decode reads step t's token while step t+1 writes the other buffer
        self.token_ring = [self._buffer(4, f"token_readback{i}", wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST,
                                        kind="staging") for i in range(2)]
        # token ids whose K/V the caches hold at positions 0..len-1 (Model.generate reuses a common prefix)
        self.cached_tokens: list[int] = []

    # setup --------------------------------------------------------------------------------
    def _buffer(self, size: int, label: str, usage: int | None = None, data: np.ndarray | None = None, *,
                kind: str) -> Any:
        """Every GPU allocation goes through here, so running out of memory names the buffer, what it
        needed and what was already allocated, instead of a driver error (or a crash later); and
        every byte is counted in its memory ``kind`` (one of ``MEMORY_CLASSES``)."""
        size = _align(data.nbytes if data is not None else size)
        limit = self.dev.limits.get("max-buffer-size")
        if limit is not None and size > limit:
            raise UserError(f"GPU buffer {label} needs {size / 2**20:.1f} MiB but '{self.dev.name}' allows at most "
                            f"{limit / 2**20:.1f} MiB per buffer; try a smaller --max-context")
        try:
            if data is not None:
                buf = self.device.create_buffer_with_data(data=data, usage=usage or self._usage, label=label)
            else:
                buf = self.device.create_buffer(size=size, usage=usage or self._usage, label=label)
        except Exception as e:  # noqa: BLE001 - out of GPU memory surfaces as a wgpu error
            raise UserError(f"out of GPU memory on '{self.dev.name}': {label} needs {size / 2**20:.1f} MiB with "
                            f"{self.allocated_bytes / 2**20:.1f} MiB already allocated "
                            f"({str(e).splitlines()[0][:100]}); try a smaller --max-context, "
                            "--weight-dtype f16 or --quantize q4") from None
        self.live_buffers += 1
        self.allocated_bytes += size
        self.allocated[kind] += size
        return buf

    def _free(self, buf: Any, kind: str) -> None:
        buf.destroy()
        self.live_buffers -= 1
        self.allocated_bytes -= buf.size
        self.allocated[kind] -= buf.size

    def _source(self, w: WeightSpec) -> np.ndarray:
        """The spec's values from the checkpoint, as float32."""
        arr = self.weights.get(w.param)
        return arr[w.rows[0]:w.rows[1]] if w.rows else arr

    def _upload_weights(self) -> None:
        mf = self.module.manifest
        specs = mf.weights
        packed = load_packed(self.module.path, [w for w in specs if FORMATS[w.format].quantized],
                             mf.weights_fingerprint, self._source, self.verbose)
        progress = Progress("uploading weights", len(specs)) if self.verbose else None
        staged = 0
        for w in specs:
            data = packed.pop(w.key) if w.key in packed else encode(self._source(w), FORMATS[w.format])
            if data.nbytes % 4:
                data = np.concatenate([data, np.zeros(4 - data.nbytes % 4, np.uint8)])
            self.shared[w.key] = self._buffer(data.nbytes, w.param, data=data, kind="weights")
            # each upload goes through a staging copy that wgpu frees only once the queue has run
            # it: flush every UPLOAD_FLUSH_BYTES, or the process peaks at twice the weights
            staged += data.nbytes
            if staged >= UPLOAD_FLUSH_BYTES:
                wait_idle(self.device)
                staged = 0
            if progress:
                progress.step()
        if progress:
            progress.done()

    def _resolve(self, plan: Plan, slots: list[Any], name: str) -> Any:
        if name.startswith("const:"):
            if name not in self.shared:
                self.shared[name] = self._buffer(0, name, data=make_constant(name), kind="constants")
            return self.shared[name]
        t = plan.tensors[name]
        if t.kind == "weight":
            return self.shared[t.weight]
        if t.kind == "cache":
            return self.shared[name]
        if t.kind == "input":
            return self.ids
        return slots[t.slot]

    def _bound(self, plan: Plan, slots: list[Any], args: list[str], prog: KernelProgram, scratch: Any) -> list[Any]:
        """A dispatch's buffers per arg; ``None`` for args the kernel does not bind (a GEMM schedule
        other than split-K leaves the split-K records unbound, and they are then never allocated).
        Every split-K record arg gets ``scratch``, the phase's one records buffer (the GEMMs run one
        at a time and read only the records they wrote)."""
        used = {b.arg for b in prog.bindings}
        return [None if i not in used else scratch if a.startswith(SCRATCH_PREFIX) else self._resolve(plan, slots, a)
                for i, a in enumerate(args)]

    def _prepare(self, phase: str) -> _Phase:
        plan = self.module.manifest.phases[phase]
        slots = [self._buffer(size, f"{phase}.slot{i}", kind="activations") for i, size in enumerate(plan.slots)]
        align = max(POD_BYTES, self.dev.limits.get("min-uniform-buffer-offset-alignment", 256))
        logits = self._resolve(plan, slots, plan.outputs["logits"])
        bound = [(d, self.programs[d.kernel]) for d in plan.dispatches]
        # the split-K records: as large as the chosen schedules need (what each declares), not as
        # the largest candidate's (the arg's name)
        need = [b.bytes or const_nbytes(d.args[b.arg]) for d, prog in bound for b in prog.bindings
                if d.args[b.arg].startswith(SCRATCH_PREFIX)]
        scratch = self._buffer(max(need), f"{phase}.split_k_records", kind="activations") if need else None
        launches = [(prog, self._bound(plan, slots, d.args, prog, scratch)) for d, prog in bound]
        tail = self._greedy_launches(logits) if phase == "decode" else []
        pod_buffer = self._buffer(align * max(len(launches) + len(tail), 1), f"{phase}.pod",
                                  self.wgpu.BufferUsage.UNIFORM | self.wgpu.BufferUsage.COPY_DST, kind="activations")
        programs = [prog for prog, _ in launches + tail]
        groups = [prog.bind_group(self.device, bufs, pod_buffer, i * align)
                  for i, (prog, bufs) in enumerate(launches + tail)]
        return _Phase(plan.dispatches, programs, groups, pod_buffer, align, logits,
                      LaunchTable(programs, align // 4), slots, scratch)

    def _greedy_launches(self, logits: Any) -> list[tuple[KernelProgram, list[Any]]]:
        """The argmax kernels (``Manifest.greedy``): logits -> scratch -> the input-id buffer."""
        g = self.module.manifest.greedy
        scratch = self._buffer(g.scratch_bytes, "argmax_scratch", kind="activations")
        return [(self._program(g.partial), [logits, scratch]), (self._program(g.final), [scratch, self.ids])]

    def _program(self, name: str) -> KernelProgram:
        if name not in self.programs:
            self.programs[name] = KernelProgram(self.device, name, self.module.manifest.kernels[name],
                                                self.module.wgsl[name])
        return self.programs[name]

    # execution ----------------------------------------------------------------------------
    def step(self, phase: str, ids: np.ndarray, total: int, profile: bool = False,
             read_logits: bool = True) -> tuple[np.ndarray | None, StepProfile | None]:
        """Run one phase for ``ids`` (new tokens) with ``total`` = past + len(ids). Returns the
        last position's logits [vocab] (float32)."""
        wgpu = self.wgpu
        ph = self.phases[phase]
        seq = len(ids)
        past = total - seq
        # positions from `past` on are about to be overwritten: forget them first (an interrupted
        # step must not leave a claim on half-written cache rows)
        self.cached_tokens = self.cached_tokens[:past] if past <= len(self.cached_tokens) else []
        grids, pods = ph.launches(seq, total)
        grids = grids[:len(ph.dispatches)]  # the host samples: no greedy tail
        q = self.device.queue
        q.write_buffer(self.ids, 0, np.ascontiguousarray(ids, np.int32).tobytes())
        q.write_buffer(ph.pod_buffer, 0, pods.tobytes())
        enc = self.device.create_command_encoder()
        timing = None
        if profile and self.dev.has_timestamps:
            qs = self._queries(len(grids))
            for i, grid in enumerate(grids):
                cp = enc.begin_compute_pass(timestamp_writes={"query_set": qs, "beginning_of_pass_write_index": 2 * i,
                                                              "end_of_pass_write_index": 2 * i + 1})
                cp.set_pipeline(ph.programs[i].pipeline)
                cp.set_bind_group(0, ph.bind_groups[i])
                cp.dispatch_workgroups(*grid)
                cp.end()
            enc.resolve_query_set(qs, 0, 2 * len(grids), self.query_buf, 0)
            enc.copy_buffer_to_buffer(self.query_buf, 0, self.query_read, 0, 16 * len(grids))
            timing = "gpu-timestamps"
        elif profile:
            return self._step_cpu_timed(ph, phase, grids, seq, total, read_logits)
        else:
            enc = self._encode(ph, grids, seq)
        vocab = self.vocab
        if read_logits:
            enc.copy_buffer_to_buffer(ph.logits, 0, self.staging, 0, 4 * vocab)
        q.submit([enc.finish()])
        if len(self.cached_tokens) == past:
            self.cached_tokens.extend(int(t) for t in ids)
        logits = self._read_logits() if read_logits else None
        prof = None
        if timing:
            self.query_read.map_sync(wgpu.MapMode.READ)
            ts = np.frombuffer(self.query_read.read_mapped(), np.uint64)[: 2 * len(grids)].astype(np.float64)
            self.query_read.unmap()
            prof = StepProfile(phase, seq, total, list((ts[1::2] - ts[0::2]) * 1e-9), timing)
        return logits, prof

    def _encode(self, ph: _Phase, grids: list[tuple[int, int, int]], seq: int) -> Any:
        """Encode the step's dispatches in pieces (``submit_cuts``), each submitted before the next
        is encoded, so the GPU starts while Python encodes (and wgpu validates, at submit) the
        rest. Returns the last encoder, not yet submitted."""
        cuts = submit_cuts(len(grids), seq)
        enc = None
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            if enc is not None:
                self.device.queue.submit([enc.finish()])
            enc = self._encoded(ph, grids, start, stop)
        return enc

    def _encoded(self, ph: _Phase, grids: list[tuple[int, int, int]], start: int, stop: int) -> Any:
        """A command encoder holding dispatches ``start:stop`` of the phase in one compute pass."""
        enc = self.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        encode = encoder_for(cp)
        for prog, group, grid in zip(ph.programs[start:stop], ph.bind_groups[start:stop], grids[start:stop],
                                     strict=True):
            encode(prog.pipeline, group, grid)
        cp.end()
        return enc

    def greedy_decode(self, first: int, total: int, steps: int) -> Iterator[int]:
        """Greedy decoding with the argmax on the GPU: ``first`` goes in at position ``total - 1``
        and each of up to ``steps`` decode steps yields its argmax token.

        Step k's token never visits the host on its way to step k+1 (the argmax kernels write it
        into the input-id buffer), so step k+1 is encoded and submitted *before* step k's token is
        read: the host's encoding of hundreds of dispatches overlaps the GPU instead of adding to
        it, and only 4 bytes come back per token. The caller stops by closing the generator; the
        step then already queued runs for nothing, and ``cached_tokens`` does not claim its row."""
        if steps <= 0:
            return
        ph = self.phases["decode"]
        past = total - 1
        self.cached_tokens = self.cached_tokens[:past] if past <= len(self.cached_tokens) else []
        q = self.device.queue
        q.write_buffer(self.ids, 0, np.asarray([first], np.int32).tobytes())

        def launch(t: int) -> tuple[int, Any]:
            grids, pods = ph.launches(1, t)
            q.write_buffer(ph.pod_buffer, 0, pods.tobytes())  # queue-ordered after the step before
            enc = self._encoded(ph, grids, 0, len(grids))
            ring = self.token_ring[t % 2]
            enc.copy_buffer_to_buffer(self.ids, 0, ring, 0, 4)
            return self.inflight.submit([enc.finish()]), ring

        pending = launch(total)
        fed = first
        for k in range(steps):
            ahead = launch(total + k + 1) if k + 1 < steps else None
            tok = self.inflight.read_int32(pending[1], pending[0])
            if len(self.cached_tokens) == past + k:
                self.cached_tokens.append(fed)
            fed = tok
            yield tok
            pending = ahead

    def _read_logits(self) -> np.ndarray:
        self.staging.map_sync(self.wgpu.MapMode.READ)
        out = np.frombuffer(self.staging.read_mapped(), np.float32)[: self.vocab].copy()
        self.staging.unmap()
        return out

    def _queries(self, n: int):
        if self.query_set is None or self.query_set.count < 2 * n:
            wgpu = self.wgpu
            U = wgpu.BufferUsage
            if self.query_set is not None:  # grow: free the smaller ones
                for b in (self.query_buf, self.query_read):
                    self._free(b, "staging")
            self.query_set = self.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * n)
            self.query_buf = self._buffer(16 * n, "timestamps", U.QUERY_RESOLVE | U.COPY_SRC, kind="staging")
            self.query_read = self._buffer(16 * n, "timestamps_read", U.MAP_READ | U.COPY_DST, kind="staging")
        return self.query_set

    def _step_cpu_timed(self, ph: _Phase, phase: str, grids, seq: int, total: int, read_logits: bool):
        """Fallback profiling without timestamp queries: submit and wait per dispatch."""
        times = []
        for i, grid in enumerate(grids):
            enc = self.device.create_command_encoder()
            cp = enc.begin_compute_pass()
            cp.set_pipeline(ph.programs[i].pipeline)
            cp.set_bind_group(0, ph.bind_groups[i])
            cp.dispatch_workgroups(*grid)
            cp.end()
            t0 = time.perf_counter()
            self.device.queue.submit([enc.finish()])
            wait_idle(self.device)
            times.append(time.perf_counter() - t0)
        logits = None
        if read_logits:
            enc = self.device.create_command_encoder()
            enc.copy_buffer_to_buffer(ph.logits, 0, self.staging, 0, 4 * self.vocab)
            self.device.queue.submit([enc.finish()])
            logits = self._read_logits()
        return logits, StepProfile(phase, seq, total, times, "cpu-sync")
