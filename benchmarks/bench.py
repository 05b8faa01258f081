"""Prefill / decode throughput and the per-op roofline of a compiled module, beside a peer.

    python benchmarks/bench.py COMPILED_DIR [--model-dir DIR] [--runs 5] [--peer hf|none]
    python benchmarks/bench.py COMPILED_DIR --decode-sweep 128,16,64,256,400,600 [--new 16 --runs 5] [--cold-warm]

Measures prefill tok/s (prompts 128 and 512), decode tok/s (128 new tokens after a 128-token
prompt, and at context 1024), medians of --runs after a warm-up; the per-op profile of a decode
step, and a roofline table per kernel class against ceilings measured in the same run (the
module's vec4 copy kernel, and its largest prefill GEMM, each timed alone); and HF transformers on
the same weights and device (CUDA when torch sees it, else CPU). Prints ratios, appends one JSON
line per metric to benchmarks/results.jsonl. Also the GPU memory per buffer class (weights per
format, KV cache, activations, constants, staging) from the executor's allocations, and the peak of
the benchmark's own scratch buffers (the ceilings' kernel timers).

``--decode-sweep`` measures only decode after each of several prompt lengths (--runs rounds over
them, in that order, --new tokens each) and prints min/median/max over the prompts of: tok/s in
the first round and the median over rounds, and CPU ms per token. A driver whose speed depends on
the process's history shows as a wide spread (lavapipe once recompiled shaders per dispatch, see
``lowering.kernels.common.opaque_loop_extents``). With ``--cold-warm`` the sweep runs in two fresh
processes sharing a new, empty Mesa shader cache: the first starts cold, the second warm.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import load  # noqa: E402
from runtime.profile import cost, report  # noqa: E402

SCRATCH: dict[str, int] = {}  # GPU bytes each ceiling's kernel timer held (freed after; never two at once)


def _timer(model, name: str, sizes: list[int], seq: int, total: int, what: str):
    from runtime.kernel import KernelProgram
    from runtime.microbench import KernelTimer

    kernels, wgsl = model.module.manifest.kernels, model.module.wgsl
    timer = KernelTimer(model.device, KernelProgram(model.device.device, name, kernels[name], wgsl[name]), sizes,
                        seq, total)
    SCRATCH[what] = timer.nbytes
    return timer


def memory_report(model) -> tuple[str, dict[str, float]]:
    """GPU memory of the loaded model per buffer class, from the executor's own allocations (what
    the driver reports also holds the driver's and, with ``--peer hf`` on CUDA, torch's), plus the
    benchmark's scratch buffers."""
    ex, mf = model.executor, model.module.manifest
    by_format: dict[str, int] = {}
    for w in mf.weights:
        by_format[w.format] = by_format.get(w.format, 0) + w.nbytes
    mib = {k: v / 2**20 for k, v in ex.allocated.items()}
    fmt = ", ".join(f"{f} {b / 2**20:.1f}" for f, b in sorted(by_format.items()))
    kv = mf.kv_cache
    lines = [f"== GPU memory (MiB, executor allocations): total {sum(mib.values()):.1f}",
             f"  weights      {mib['weights']:10.1f}  ({fmt})",
             f"  kv           {mib['kv']:10.1f}  ({kv.dtype}, {kv.layers} layers x K,V x {kv.kv_heads} heads x "
             f"{kv.capacity} positions x {kv.head_dim})",
             f"  activations  {mib['activations']:10.1f}  (slots of both phases, token ids, launch args, "
             "split-K GEMM records)",
             f"  constants    {mib['constants']:10.1f}  (RoPE tables, arrival counters)",
             f"  staging      {mib['staging']:10.1f}  (logits readback, timestamps)"]
    if SCRATCH:
        lines.append(f"  bench scratch {max(SCRATCH.values()) / 2**20:9.1f}  peak, freed after each ceiling ("
                     + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in SCRATCH.items()) + ")")
        mib["bench_scratch"] = max(SCRATCH.values()) / 2**20
    return "\n".join(lines), {f"gpu_mib_{k}": v for k, v in mib.items()}


# each ceiling's kernel runs this long before it is timed: the 0.6B's GEMM ceiling, timed cold after
# the weight upload, read 4.6-5.6 TFLOP/s on the H200 where runtime.tune (which warms up) timed the
# same kernel at 26 (the clock state after idle, as for prefill: PREFILL_WARMUP_S)
CEILING_WARMUP_S = 0.5


def copy_ceiling(model) -> float:
    """GB/s (bytes read + written) of the module's vec4 copy kernel over the largest buffer one
    binding allows (<= 256 MiB), timed with timestamps like every other kernel."""
    limit = model.device.limits.get("max-storage-buffer-binding-size", 128 << 20)
    n = min(limit, 256 << 20) // 16
    timer = _timer(model, model.module.manifest.calibration["copy"], [16 * n, 16 * n], 1, n, "copy ceiling")
    timer.warm_up(CEILING_WARMUP_S)
    t = timer.seconds(reps=20)
    timer.destroy()
    return 32 * n / t / 1e9


def gemm_ceiling(model) -> tuple[float, str]:
    """GFLOP/s of the module's largest prefill GEMM (a full prefill chunk), timed alone."""
    plan = model.module.manifest.phases["prefill"]
    seq = model.executor.chunk
    gemms = [d for d in plan.dispatches if d.kclass == "gemm"]
    d = max(gemms, key=lambda d: cost(d.flops, seq, seq))
    timer = _timer(model, d.kernel, plan.arg_bytes(d.args, seq, seq, model.max_context), seq, seq, "GEMM ceiling")
    timer.warm_up(CEILING_WARMUP_S)
    t = timer.seconds(reps=10)
    timer.destroy()
    return cost(d.flops, seq, seq) / t / 1e9, f"{d.node} seq={seq}"


def roofline(profiles, plans, phase: str, copy_gb_s: float, gemm_gflop_s: float) -> tuple[str, dict]:
    """Per kernel class: share of the step, achieved GB/s and GFLOP/s, and their fraction of the
    ceilings measured in this run."""
    steps = [p for p in profiles if p.phase == phase]
    times = np.mean([p.times for p in steps], axis=0)
    seq, total = steps[-1].seq, steps[-1].total
    agg: dict[str, list[float]] = {}
    for d, t in zip(plans[phase].dispatches, times, strict=True):
        a = agg.setdefault(d.kclass, [0.0, 0.0, 0.0, 0])
        a[0] += t
        a[1] += cost(d.bytes, seq, total)
        a[2] += cost(d.flops, seq, total)
        a[3] += 1
    step = float(times.sum())
    lines = [f"== roofline: {phase} seq={seq} total={total}; ceilings: copy {copy_gb_s:.0f} GB/s, "
             f"GEMM {gemm_gflop_s:.0f} GFLOP/s",
             f"{'class':14} {'n':>5} {'time us':>9} {'%':>6} {'GB/s':>8} {'%copy':>6} {'GFLOP/s':>9} {'%gemm':>6}"]
    out = {}
    for k, (t, b, f, n) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
        gbs, gfs = b / t / 1e9, f / t / 1e9
        out[k] = {"time_s": t, "gb_s": gbs, "gflop_s": gfs}
        lines.append(f"{k:14} {n:>5} {t * 1e6:>9.1f} {100 * t / step:>6.1f} {gbs:>8.1f} {100 * gbs / copy_gb_s:>6.1f} "
                     f"{gfs:>9.1f} {100 * gfs / gemm_gflop_s:>6.1f}")
    return "\n".join(lines), out


PREFILL_WARMUP_S = 1.0


def time_prefill(model, n: int, runs: int) -> float:
    """Median tok/s of ``runs`` prefills of ``n`` tokens, after untimed prefills for at least
    ``PREFILL_WARMUP_S``: a 512-token prefill of the 0.6B is one ~27 ms burst, and on the H200 such
    a burst after the host's idle time ran at a third of the speed in whole runs (7-9k tok/s
    instead of 18-19k, the same kernels; the per-op profile of a first prefill showed every kernel
    ~3x slow), while llama-bench times its prompts back to back after a warm-up run."""
    ex = model.executor
    prompt = np.random.default_rng(n).integers(0, model.config.vocab_size, n).astype(np.int32)

    def prefill() -> float:
        t0 = time.perf_counter()
        total = 0
        for s in range(0, n, ex.chunk):
            chunk = prompt[s:s + ex.chunk]
            total += len(chunk)
            ex.step("prefill", chunk, total)
        return time.perf_counter() - t0

    warm = time.perf_counter() + PREFILL_WARMUP_S
    while time.perf_counter() < warm:
        prefill()
    return statistics.median(n / prefill() for _ in range(runs))


def time_decode(model, context: int, new: int, runs: int, host_sampled: bool = False) -> float:
    """Greedy decode tok/s of ``new`` tokens after ``context``: as ``Model.generate`` runs it (argmax
    on the GPU, each step queued before the previous token is read), or ``host_sampled`` (logits
    read back and the argmax taken on the host, as any sampling other than greedy does)."""
    ex = model.executor
    prompt = np.random.default_rng(context).integers(0, model.config.vocab_size, context).astype(np.int32)
    total = 0
    for s in range(0, context, ex.chunk):  # fill the cache once
        chunk = prompt[s:s + ex.chunk]
        total += len(chunk)
        logits, _ = ex.step("prefill", chunk, total)
    out = []
    for r in range(runs + 1):
        tok, t = int(logits.argmax()), context
        t0 = time.perf_counter()
        if host_sampled:
            for _ in range(new):
                t += 1
                step_logits, _ = ex.step("decode", np.asarray([tok], np.int32), t)
                tok = int(step_logits.argmax())
        else:
            for _ in ex.greedy_decode(tok, t + 1, new):
                pass
        if r:
            out.append(new / (time.perf_counter() - t0))
    return statistics.median(out)


def decode_sweep(model, prompts: list[int], new: int, runs: int) -> dict[str, list[float]]:
    """Decode after each prompt length: ``runs`` rounds over the prompts, in the given order (the
    first decodes of a process can decide a driver's state for the rest of it); each prefills its
    prompt, takes one untimed decode step, then times ``new`` tokens. Per prompt: tok/s of the
    first round (what the process's history gives) and the median over rounds (rounds spread other
    processes' load over all prompts), and this process's CPU ms per token in its worst round (all
    threads: a CPU driver's work and its shader compiles, which other processes hardly change)."""
    ex = model.executor
    rate: dict[int, list[float]] = {n: [] for n in prompts}
    cpu: dict[int, list[float]] = {n: [] for n in prompts}
    for _ in range(runs):
        for n in prompts:
            prompt = np.random.default_rng(n).integers(0, model.config.vocab_size, n).astype(np.int32)
            total = 0
            for s in range(0, n, ex.chunk):
                chunk = prompt[s:s + ex.chunk]
                total += len(chunk)
                logits, _ = ex.step("prefill", chunk, total)
            tok = int(logits.argmax())
            for i in range(new + 1):
                if i == 1:
                    t0, c0 = time.perf_counter(), time.process_time()
                total += 1
                logits, _ = ex.step("decode", np.asarray([tok], np.int32), total)
                tok = int(logits.argmax())
            rate[n].append(new / (time.perf_counter() - t0))
            cpu[n].append((time.process_time() - c0) * 1e3 / new)
    out = {"first": [rate[n][0] for n in prompts], "median": [statistics.median(rate[n]) for n in prompts],
           "cpu_ms": [max(cpu[n]) for n in prompts]}
    for n, f, m, c in zip(prompts, out["first"], out["median"], out["cpu_ms"], strict=True):
        print(f"  prompt {n:5}: decode {f:7.2f} tok/s first round, {m:7.2f} median of {runs}; CPU {c:6.1f} ms/token "
              "(worst round)", flush=True)
    return out


def run_sweep(a: argparse.Namespace, command: str) -> int:
    """``--decode-sweep``: this process, or (``--cold-warm``) two child processes on a fresh Mesa
    shader cache."""
    if a.cold_warm:
        argv = [x for x in sys.argv if x != "--cold-warm"]
        with tempfile.TemporaryDirectory(prefix="mesa-cache-") as cache:
            env = {**os.environ, "MESA_SHADER_CACHE_DIR": cache}
            for label in ("cold", "warm"):
                print(f"== {label} process (Mesa shader cache {'empty' if label == 'cold' else 'from the cold run'})",
                      flush=True)
                rc = subprocess.call([sys.executable, *argv, "--process-label", label], env=env)
                if rc:
                    return rc
        return 0
    model = load(a.compiled_dir, a.model_dir, verbose=False)
    prompts = [int(x) for x in a.decode_sweep.split(",") if x]
    fit = [n for n in prompts if n + a.new + 1 <= model.max_context]
    if fit != prompts:
        print(f"note: skipping prompts {sorted(set(prompts) - set(fit))}: prompt + {a.new + 1} tokens exceed the "
              f"compiled context {model.max_context}")
    res = decode_sweep(model, fit, a.new, a.runs)
    label = f" ({a.process_label} process)" if a.process_label else ""
    print(f"decode sweep{label}, {model.device.name}, prompts {','.join(map(str, fit))}, {a.runs} rounds x {a.new} "
          f"tokens; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    stats = {}
    for key, what, unit in (("median", "median of rounds", "tok/s"), ("first", "first round", "tok/s"),
                            ("cpu_ms", "CPU, worst round", "ms/token")):
        v = res[key]
        stats[key] = (min(v), statistics.median(v), max(v))
        print(f"  {what:17} min/median/max {min(v):7.1f} / {statistics.median(v):7.1f} / {max(v):7.1f} {unit:8} "
              f"(max/min {max(v) / min(v):.2f}x)", flush=True)
    date = time.strftime("%Y-%m-%d")
    names = {"median": "decode_sweep_{}_tok_s", "first": "decode_sweep_first_round_{}_tok_s",
             "cpu_ms": "decode_sweep_cpu_ms_per_token_{}"}
    with open(a.results, "a") as f:
        for key, triple in stats.items():
            for which, v in zip(("min", "median", "max"), triple, strict=True):
                f.write(json.dumps({"date": date, "device": model.device.name,
                                    "model": model.module.manifest.model_dir,
                                    "weight_dtype": model.module.manifest.options.weight_dtype,
                                    "metric": names[key].format(which), "value": v, "prompts": fit,
                                    "process": a.process_label or None, "command": command}) + "\n")
    return 0


def memory_probe(compiled_dir: Path, model_dir: Path | None, n: int) -> int:
    from runtime.sampling import SamplingParams

    model = load(compiled_dir, model_dir, verbose=False)
    prompt = np.random.default_rng(n).integers(0, model.config.vocab_size, n).tolist()
    list(model.generate(prompt, 32, SamplingParams(), set()))
    mib = {k: v / 2**20 for k, v in model.executor.allocated.items()}
    print(f"memory probe: prompt {n} + 32 tokens; executor allocations (MiB): "
          + ", ".join(f"{k} {v:.0f}" for k, v in mib.items()) + f"; total {sum(mib.values()):.0f}")
    return 0


def hf_peer(model_dir: Path, runs: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(dev).eval()

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    res = {"device": dev}
    with torch.no_grad():
        for n in (128, 512):
            ids = torch.randint(0, m.config.vocab_size, (1, n), device=dev)
            ts = []
            for r in range(runs + 1):
                sync()
                t0 = time.perf_counter()
                m(ids)
                sync()
                if r:
                    ts.append(n / (time.perf_counter() - t0))
            res[f"prefill{n}_tok_s"] = statistics.median(ts)
        ids = torch.randint(0, m.config.vocab_size, (1, 128), device=dev)
        ts = []
        for r in range(min(runs, 3) + 1):
            out = m(ids, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            t0 = time.perf_counter()
            for _ in range(32):
                out = m(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            if r:
                ts.append(32 / (time.perf_counter() - t0))
        res["decode_tok_s"] = statistics.median(ts)
    if dev == "cuda":  # in this process: the driver's memory report of a bench run includes it
        res["gpu_mib_total"] = torch.cuda.max_memory_reserved() / 2**20
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peer", choices=["hf", "none"], default="hf")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompts", default="128,512", help="prefill prompt lengths (comma-separated)")
    ap.add_argument("--long-context", type=int, default=1024, help="also time decode at this context (0: skip)")
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("results.jsonl"))
    ap.add_argument("--decode-sweep", default="", metavar="PROMPTS",
                    help="only time decode (--runs rounds of --new tokens) after each of these prompt lengths, "
                         "in order, and print min/median/max over them (default: off)")
    ap.add_argument("--cold-warm", action="store_true",
                    help="with --decode-sweep: run it in two fresh processes, empty then warm Mesa shader cache")
    ap.add_argument("--process-label", default="", help=argparse.SUPPRESS)
    ap.add_argument("--memory-probe", type=int, default=0, metavar="PROMPT",
                    help="only load, prefill PROMPT random tokens and decode 32 (what a user's process holds; "
                         "gpu_suite.sh meters its peak GPU memory beside llama.cpp's)")
    a = ap.parse_args()
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    if a.cold_warm and not a.decode_sweep:
        ap.error("--cold-warm needs --decode-sweep")
    if a.decode_sweep:
        return run_sweep(a, command)
    if a.memory_probe:
        return memory_probe(a.compiled_dir, a.model_dir, a.memory_probe)
    model = load(a.compiled_dir, a.model_dir, verbose=True)
    ctx = model.max_context
    dev_name = model.device.name
    wdtype = model.module.manifest.options.weight_dtype
    metrics: dict[str, float] = {}
    metrics["copy_gb_s"] = copy_ceiling(model)
    metrics["gemm_ceiling_gflop_s"], gemm_what = gemm_ceiling(model)
    print(f"ceilings: copy {metrics['copy_gb_s']:.1f} GB/s; GEMM {metrics['gemm_ceiling_gflop_s']:.1f} GFLOP/s "
          f"({gemm_what})")
    for n in (int(x) for x in a.prompts.split(",") if x):
        if n <= ctx:
            metrics[f"prefill{n}_tok_s"] = time_prefill(model, n, a.runs)
    metrics["decode_tok_s"] = time_decode(model, 128, a.new, a.runs)
    metrics["decode_host_sampled_tok_s"] = time_decode(model, 128, a.new, a.runs, host_sampled=True)
    if a.long_context and a.long_context + 32 <= ctx:
        metrics[f"decode_ctx{a.long_context}_tok_s"] = time_decode(model, a.long_context, 32, a.runs)
    # per-op profile of a 128-token prefill and decode steps at context 128
    from runtime.sampling import SamplingParams

    list(model.generate(list(range(1, 129)), 8, SamplingParams(), set(), profile=True))  # greedy, no EOS stop
    prof = model.last_stats.profiles
    plans = model.module.manifest.phases
    print(report(prof, plans, "decode"))
    for phase in ("prefill", "decode"):
        table, by_class = roofline(prof, plans, phase, metrics["copy_gb_s"], metrics["gemm_ceiling_gflop_s"])
        print(table)
        if phase == "decode":
            metrics["gemv_gb_s"] = by_class["gemv"]["gb_s"]
            metrics["gemv_bw_frac"] = metrics["gemv_gb_s"] / metrics["copy_gb_s"]
        else:
            metrics["prefill_gemm_gflop_s"] = by_class["gemm"]["gflop_s"]
    dec = [p for p in prof if p.phase == "decode"]
    times = np.mean([p.times for p in dec], axis=0)
    layer0 = [d for d in plans["decode"].dispatches if d.node.startswith("layers.0.")]
    metrics["dispatches_per_layer"] = len(layer0)
    metrics["dispatches_per_token"] = len(plans["decode"].dispatches)
    metrics["decode_gpu_ms_per_token"] = float(times.sum() * 1e3)
    mem_text, mem = memory_report(model)
    print(mem_text)
    metrics.update(mem)
    metrics["gpu_mib_total"] = sum(v for k, v in mem.items() if k != "gpu_mib_bench_scratch")
    peer = hf_peer(model.model_dir, a.runs) if a.peer == "hf" else {}
    date = time.strftime("%Y-%m-%d")
    quant = model.module.manifest.options.quantize
    print(f"\n== {dev_name} ({wdtype} weights{'' if quant == 'none' else f', {quant} linears'}), peer: HF "
          f"transformers on {peer.get('device', '-')}")
    with open(a.results, "a") as f:
        for k, v in metrics.items():
            pv = peer.get(k)
            ratio = f"  ({v / pv:.2f}x peer {pv:.1f})" if pv else ""
            print(f"{k:26} {v:12.2f}{ratio}")
            f.write(json.dumps({"date": date, "device": dev_name, "model": model.module.manifest.model_dir,
                                "weight_dtype": wdtype, "quantize": quant, "metric": k, "value": v,
                                "peer": f"hf-transformers-{peer.get('device')}" if pv else None,
                                "peer_value": pv, "command": command}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
