"""Attention alone on the GPU, per context length: ``python benchmarks/attention_sweep.py OUT [--prefill]``.

Times one layer's decode attention dispatches (flash-decoding partials + combine, or the unsplit
kernel of a module compiled with ``--attention-splits 1``) with every schedule compiled into OUT,
at several cache lengths, with timestamp queries (``runtime.microbench``: K/V rotated past the L2
cache). ``runtime.tune`` picks schedules at a short context only; this shows how each one scales
and what share of the memory bandwidth the cache walk reaches. Needs no weights: random K/V.

``--prefill``: one prefill chunk of ``--seq`` rows (default: the module's prefill chunk) at each
total (``past = total - seq`` cached positions before it): every schedule of the fused
``prefill_attention`` kernel, or, in a module compiled with ``--unfused-prefill-attention``, each
dispatch the fusion replaces (q norm + RoPE, transposes, the two batched GEMMs, softmax) and their
sum; the fused kernel's TFLOP/s count the causal math only (``4 * heads * hd`` per visible position).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ATTENTION_OPS = ("attention", "attention_partial", "attention_combine")
# what fuse_prefill_attention replaces (q's norm + RoPE is the rms_norm_rope feeding the transpose)
PREFILL_OPS = ("prefill_attention", "softmax", "transpose", "rms_norm_rope")


def sweep(compiled_dir: Path, totals: list[int], reps: int, adapter: str | None = None) -> None:
    """Per total, per schedule of each attention dispatch of layer 0: time per launch, GB/s."""
    from ir.ops import attention_split
    from runtime.compiled import load_compiled
    from runtime.device import open_device
    from runtime.kernel import KernelProgram
    from runtime.microbench import KernelTimer
    from runtime.profile import cost

    module = load_compiled(compiled_dir)
    mf = module.manifest
    dev = open_device(adapter, mf.requires)
    plan = mf.phases["decode"]
    ctx = mf.options.max_context
    layer = [d for d in plan.dispatches if d.op in ATTENTION_OPS and d.node.startswith("layers.0.")]
    graph_attrs = _attrs(compiled_dir, [d.node for d in layer])
    print(f"{dev.name}; KV cache {mf.kv_cache.dtype}, capacity {ctx}")
    for total in (t for t in totals if t <= ctx):
        for d in layer:
            sizes = plan.arg_bytes(d.args, 1, total, ctx)
            moved = cost(d.bytes, 1, total)
            at = graph_attrs[d.node]
            split = f", {attention_split(total, at['split_unit'], at['max_splits'])[1]} splits" \
                if "max_splits" in at else ""
            for name in [d.kernel, *mf.kernels[d.kernel].alternates]:
                timer = KernelTimer(dev, KernelProgram(dev.device, name, mf.kernels[name], module.wgsl[name]), sizes,
                                    1, total)
                t = timer.seconds(reps)
                timer.destroy()
                print(f"total {total:6}  {d.op:18} {mf.kernels[name].rule:52} {t * 1e6:9.1f} us "
                      f"{moved / t / 1e9:8.1f} GB/s{split}")


def prefill_sweep(compiled_dir: Path, totals: list[int], seq: int | None, reps: int,
                  adapter: str | None = None) -> None:
    """Per total, layer 0's prefill attention: each schedule of the fused kernel, or each unfused dispatch."""
    from runtime.compiled import load_compiled
    from runtime.device import open_device
    from runtime.kernel import KernelProgram
    from runtime.microbench import KernelTimer
    from runtime.profile import cost

    module = load_compiled(compiled_dir)
    mf = module.manifest
    dev = open_device(adapter, mf.requires)
    plan = mf.phases["prefill"]
    ctx = mf.options.max_context
    seq = min(seq or mf.options.prefill_chunk, mf.options.prefill_chunk)
    layer = [d for d in plan.dispatches if d.node.startswith("layers.0.") and (
        d.op in PREFILL_OPS and not d.node.endswith(".k_rope") or d.kclass == "batched_gemm")]
    fused = any(d.op == "prefill_attention" for d in layer)
    print(f"{dev.name}; KV cache {mf.kv_cache.dtype}, capacity {ctx}; prefill chunk of {seq} rows, "
          f"{'fused' if fused else 'unfused'} attention")
    for total in (t for t in totals if seq <= t <= ctx):
        sum_us = 0.0
        for d in layer:
            sizes = plan.arg_bytes(d.args, seq, total, ctx)
            flops = cost(d.flops, seq, total) if d.op == "prefill_attention" else 0
            best = None
            for name in [d.kernel, *mf.kernels[d.kernel].alternates]:
                timer = KernelTimer(dev, KernelProgram(dev.device, name, mf.kernels[name], module.wgsl[name]), sizes,
                                    seq, total)
                t = timer.seconds(reps)
                timer.destroy()
                best = t if best is None else min(best, t)
                rate = f" {flops / t / 1e12:7.2f} TFLOP/s" if flops else ""
                print(f"total {total:6}  {d.node:24} {mf.kernels[name].rule:72} {t * 1e6:9.1f} us{rate}")
            sum_us += best * 1e6
        if not fused:
            print(f"total {total:6}  unfused: sum of the fastest schedule of each dispatch {sum_us:9.1f} us")


def _attrs(compiled_dir: Path, nodes: list[str]) -> dict[str, dict]:
    from ir.serialize import from_json

    g = from_json((compiled_dir / "graphs" / "decode.json").read_text())
    return {n: g[n].attrs for n in nodes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--totals", default="128,1024,4096,8192", help="cache lengths (comma-separated; those above "
                    "the module's --max-context are skipped)")
    ap.add_argument("--reps", type=int, default=50, help="launches per timed pass")
    ap.add_argument("--adapter", help="Vulkan adapter index or name substring")
    ap.add_argument("--prefill", action="store_true", help="prefill attention (one chunk of --seq rows per total)")
    ap.add_argument("--seq", type=int, help="with --prefill: rows of the chunk (default: the module's prefill chunk)")
    a = ap.parse_args()
    totals = [int(x) for x in a.totals.split(",") if x]
    if a.prefill:
        prefill_sweep(a.compiled_dir, totals, a.seq, a.reps, a.adapter)
    else:
        sweep(a.compiled_dir, totals, a.reps, a.adapter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
