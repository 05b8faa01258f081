"""The compiled module: trace both phases, lower, build kernels, plan memory, write OUT atomically.

Layout of OUT (no weights inside; they are read from the model dir at run time)::

    manifest.json            format version, TVM version, config, weight fingerprint, options,
                             required device features/limits, kernels, per-phase plans
    graphs/{prefill,decode}.json   the lowered graphs (ir JSON)
    kernels/<name>.wgsl      one WGSL compute shader per unique kernel
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import tvm

from common import expr
from common.atomic import atomic_dir
from common.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Binding,
    CompileOptions,
    Dispatch,
    KernelInfo,
    KVCacheSpec,
    Manifest,
    ModelInfo,
    Plan,
    Requirements,
    WeightSpec,
)
from common.progress import Progress
from frontend.checkpoint import WeightStore
from frontend.config import load_config
from frontend.qwen3 import PHASES, trace
from frontend.weights import expected_params
from ir.graph import Graph
from ir.ops import LEAF_OPS, VIEW_OPS
from ir.serialize import to_json
from lowering.build import Kernel, build_kernel
from lowering.errors import LoweringError
from lowering.kernels.calibration import COPY_KERNEL, copy_spec
from lowering.kernels.registry import spec_for
from lowering.kernels.sampling import argmax_specs, greedy_kernels
from lowering.kernels.spec import KernelSpec
from lowering.options import LowerOptions
from lowering.pipeline import lower
from lowering.plan import plan_memory, storage_root


def _dispatches(g: Graph, opts: LowerOptions, specs: dict[str, KernelSpec],
                names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for n in g.nodes():
        if n.op in LEAF_OPS or n.op in VIEW_OPS or n.attrs.get("written_by"):
            continue  # no kernel: views, and results another node's kernel writes (cache rows, the split merge)
        try:
            spec = spec_for(n, g, opts)
        except KeyError as e:
            raise LoweringError(f"node {n.name}: op '{n.op}' has no GPU kernel ({e})") from None
        if spec.key not in names:
            names[spec.key] = f"{spec.kclass}_{len(names)}"
            specs[spec.key] = spec
        args = [a if a.startswith("const:") else storage_root(g, a) for a in spec.args]
        out.append({"node": n.name, "op": n.op, "kernel": names[spec.key], "args": args,
                    "flops": expr.parse(spec.flops), "bytes": expr.parse(spec.bytes)})
    return out


def _requirements(kernels: dict[str, Kernel], plans: dict[str, Plan], weights: list[WeightSpec],
                  kv: KVCacheSpec) -> Requirements:
    biggest = max([*(max(p.slots, default=0) for p in plans.values()), *(w.nbytes for w in weights), kv.buffer_bytes])
    return Requirements(
        features=["shader-f16"] if any("enable f16" in k.wgsl for k in kernels.values()) else [],
        limits={
            "max-storage-buffer-binding-size": biggest,
            "max-storage-buffers-per-shader-stage": max(len(k.bindings) for k in kernels.values()),
            "max-compute-invocations-per-workgroup": max(k.workgroup[0] * k.workgroup[1] * k.workgroup[2]
                                                         for k in kernels.values()),
        },
        optional_features=["timestamp-query"],
    )


def kernel_info(k: Kernel, alternates: list[str] | None = None) -> KernelInfo:
    """The manifest entry of a built kernel (launch grid as expression data)."""
    return KernelInfo(k.key, k.kclass, k.rule, k.entry, f"kernels/{k.name}.wgsl",
                      [Binding(b["slot"], b["arg"], b["write"], b["type"], b.get("bytes", 0)) for b in k.bindings],
                      list(k.pod), tuple(k.workgroup), tuple(k.grid), alternates or [])


def compile_model(model_dir: Path, out: Path, opts: LowerOptions, force: bool = False,
                  dump_after: str | None = None, use_cache: bool = True, log=print) -> Manifest:
    t0 = time.perf_counter()
    cfg = load_config(model_dir)
    if opts.max_context > cfg.max_position_embeddings:
        raise LoweringError(f"--max-context {opts.max_context} exceeds max_position_embeddings "
                            f"{cfg.max_position_embeddings} in {Path(model_dir) / 'config.json'}")
    ws = WeightStore(model_dir, expected_params(cfg))
    graphs: dict[str, Graph] = {}
    specs: dict[str, KernelSpec] = {}
    names: dict[str, str] = {}
    plans: dict[str, Plan] = {}
    dispatches: dict[str, list[dict[str, Any]]] = {}
    weights: dict[str, WeightSpec] = {}
    for phase in PHASES:
        g = lower(trace(cfg, phase), opts, dump_after, log)
        graphs[phase] = g
        max_dims = {"seq": 1 if phase == "decode" else opts.prefill_chunk, "total": opts.max_context,
                    "ctx": opts.max_context}
        tensors, slots, phase_weights = plan_memory(g, max_dims, ws.expected)
        weights.update({w.key: w for w in phase_weights})
        dispatches[phase] = _dispatches(g, opts, specs, names)
        plans[phase] = Plan(tensors, slots, [], {n.attrs["name"]: storage_root(g, n.name) for n in g.by_op("output")})
    kernels: dict[str, Kernel] = {}
    alternates: dict[str, list[str]] = {}
    progress = Progress("building kernels", sum(max(1, len(s.variants)) if opts.tuning_candidates else 1
                                                for s in specs.values()))
    cached = 0
    for key, spec in specs.items():
        func = spec.build()  # parsed once: its script is the cache key of the default and every alternate
        k, hit = build_kernel(spec, names[key], use_cache, func=func)
        kernels[k.name] = k
        cached += hit
        progress.step()
        # the other schedules of this kernel, for on-device tuning (python -m runtime.tune)
        others = [v for v in spec.variants if v[0] != k.rule] if opts.tuning_candidates else []
        for i, (vname, builder) in enumerate(others):
            try:
                alt, hit = build_kernel(replace(spec, variants=[(vname, builder)]), f"{k.name}.v{i + 1}", use_cache,
                                        first_variant_only=True, func=func)
            except RuntimeError:
                continue  # that schedule does not build for this shape: not a candidate
            finally:
                progress.step()
            kernels[alt.name] = alt
            alternates.setdefault(k.name, []).append(alt.name)
            cached += hit
    for name, spec in [(COPY_KERNEL, copy_spec()), *argmax_specs(cfg.vocab_size)]:
        kernels[name], _ = build_kernel(spec, name, use_cache, first_variant_only=True)
    progress.done()
    for phase, plan in plans.items():
        plan.dispatches = [Dispatch(**d, kclass=kernels[d["kernel"]].kclass) for d in dispatches[phase]]
    kv = KVCacheSpec(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, opts.max_context, opts.kv_dtype)
    weight_list = list(weights.values())
    manifest = Manifest(
        format_version=FORMAT_VERSION, tvm_version=tvm.__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        model_dir=str(Path(model_dir).resolve()), model=ModelInfo("qwen3", cfg.vocab_size, cfg.num_hidden_layers),
        config=cfg.to_dict(), weights_fingerprint=ws.fingerprint(),
        options=CompileOptions(opts.weight_dtype, opts.max_context, opts.prefill_chunk, opts.max_binding_bytes,
                               opts.quantize),
        requires=_requirements(kernels, plans, weight_list, kv), weights=weight_list, kv_cache=kv,
        kernels={name: kernel_info(k, alternates.get(name, [])) for name, k in kernels.items()},
        phases=plans, calibration={"copy": COPY_KERNEL},
        greedy=greedy_kernels(cfg.vocab_size))
    with atomic_dir(out, force) as tmp:
        (tmp / "graphs").mkdir()
        (tmp / "kernels").mkdir()
        for phase, g in graphs.items():
            (tmp / "graphs" / f"{phase}.json").write_text(to_json(g))
        for name, k in kernels.items():
            (tmp / "kernels" / f"{name}.wgsl").write_text(k.wgsl)
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
    log(f"compiled {len(kernels)} kernels ({cached} from cache) for {cfg.num_hidden_layers} layers in "
        f"{time.perf_counter() - t0:.1f}s -> {out}")
    if opts.quantize != "none":
        log(f"weights: {_weights_summary(weight_list)}; quantized at the first load, cached in {out}")
    return manifest


def _weights_summary(weights: list[WeightSpec]) -> str:
    """``q4 1.23 GiB (197 tensors), f16 ...``: GPU bytes per format."""
    by: dict[str, list[int]] = {}
    for w in weights:
        by.setdefault(w.format, []).append(w.nbytes)
    return ", ".join(f"{f} {sum(b) / 2**20:.1f} MiB ({len(b)} tensors)" for f, b in sorted(by.items()))
