"""Prefill / decode throughput and the per-op roofline of a compiled module, beside a peer.

    python benchmarks/bench.py COMPILED_DIR [--model-dir DIR] [--runs 5] [--peer hf|none]

Measures prefill tok/s (prompts 128 and 512), decode tok/s (128 new tokens after a 128-token
prompt, and at context 1024), medians of --runs after a warm-up; the per-op profile of a decode
step against ceilings measured in the same run (device copy bandwidth); and HF transformers on
the same weights and device (CUDA when torch sees it, else CPU). Prints ratios, appends one JSON
line per metric to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import load  # noqa: E402
from runtime.device import wait_idle  # noqa: E402
from runtime.profile import report  # noqa: E402


def copy_bandwidth(model, mb: int = 256, reps: int = 10) -> float:
    """Device-to-device copy GB/s (bytes read + written), the memory ceiling for this run."""
    import wgpu

    dev = model.device.device
    n = mb << 20
    usage = wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.STORAGE
    a, b = dev.create_buffer(size=n, usage=usage), dev.create_buffer(size=n, usage=usage)
    times = []
    for _ in range(reps + 1):
        enc = dev.create_command_encoder()
        enc.copy_buffer_to_buffer(a, 0, b, 0, n)
        t0 = time.perf_counter()
        dev.queue.submit([enc.finish()])
        wait_idle(dev)
        times.append(time.perf_counter() - t0)
    return 2 * n / statistics.median(times[1:]) / 1e9


def time_prefill(model, n: int, runs: int) -> float:
    ex = model.executor
    prompt = np.random.default_rng(n).integers(0, model.config.vocab_size, n).astype(np.int32)
    out = []
    for r in range(runs + 1):
        t0 = time.perf_counter()
        total = 0
        for s in range(0, n, ex.chunk):
            chunk = prompt[s:s + ex.chunk]
            total += len(chunk)
            ex.step("prefill", chunk, total)
        if r:
            out.append(n / (time.perf_counter() - t0))
    return statistics.median(out)


def time_decode(model, context: int, new: int, runs: int) -> float:
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
        for _ in range(new):
            t += 1
            logits, _ = ex.step("decode", np.asarray([tok], np.int32), t)
            tok = int(logits.argmax())
        if r:
            out.append(new / (time.perf_counter() - t0))
    return statistics.median(out)


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
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peer", choices=["hf", "none"], default="hf")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("results.jsonl"))
    a = ap.parse_args()
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    model = load(a.compiled_dir, a.model_dir, verbose=True)
    ctx = model.max_context
    dev_name = model.device.name
    wdtype = model.module.options["weight_dtype"]
    metrics: dict[str, float] = {}
    metrics["copy_gb_s"] = copy_bandwidth(model)
    for n in (128, 512):
        if n <= ctx:
            metrics[f"prefill{n}_tok_s"] = time_prefill(model, n, a.runs)
    metrics["decode_tok_s"] = time_decode(model, 128, a.new, a.runs)
    if 1024 + 32 <= ctx:
        metrics["decode_ctx1024_tok_s"] = time_decode(model, 1024, 32, a.runs)
    # per-op profile of decode steps at context 128
    list(model.generate(list(range(1, 129)), 8, profile=True))
    prof = model.last_stats.profiles
    plans = model.module.manifest["phases"]
    print(report(prof, plans, "decode"))
    dec = [p for p in prof if p.phase == "decode"]
    times = np.mean([p.times for p in dec], axis=0)
    seq, total = dec[-1].seq, dec[-1].total
    gemv_bytes = gemv_time = 0.0
    for d, t in zip(plans["decode"]["dispatches"], times, strict=True):
        if d["kclass"] == "gemv":
            gemv_bytes += eval(d["bytes"], {"__builtins__": {}}, {"seq": seq, "total": total})  # noqa: S307
            gemv_time += t
    metrics["gemv_gb_s"] = gemv_bytes / gemv_time / 1e9
    metrics["gemv_bw_frac"] = metrics["gemv_gb_s"] / metrics["copy_gb_s"]
    layer0 = [d for d in plans["decode"]["dispatches"] if d["node"].startswith("layers.0.")]
    metrics["dispatches_per_layer"] = len(layer0)
    metrics["dispatches_per_token"] = len(plans["decode"]["dispatches"])
    metrics["decode_gpu_ms_per_token"] = float(times.sum() * 1e3)
    peer = hf_peer(model.model_dir, a.runs) if a.peer == "hf" else {}
    date = time.strftime("%Y-%m-%d")
    print(f"\n== {dev_name} ({wdtype} weights), peer: HF transformers on {peer.get('device', '-')}")
    with open(a.results, "a") as f:
        for k, v in metrics.items():
            pv = peer.get(k)
            ratio = f"  ({v / pv:.2f}x peer {pv:.1f})" if pv else ""
            print(f"{k:26} {v:12.2f}{ratio}")
            f.write(json.dumps({"date": date, "device": dev_name, "model": model.module.manifest["model_dir"],
                                "weight_dtype": wdtype, "metric": k, "value": v,
                                "peer": f"hf-transformers-{peer.get('device')}" if pv else None,
                                "peer_value": pv, "command": command}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
