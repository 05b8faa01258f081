"""``python -m runtime.tune COMPILED_DIR``: pick each kernel's fastest schedule on this GPU.

The compiler builds several schedules of each GEMV (``vec4-gemv(ts=..,tr=..)``: rows per
workgroup, threads per row); which is fastest depends on the GPU and the shape. This times every
candidate alone on the device (timestamp queries, weights rotated past the L2 cache), in
``rounds`` interleaved rounds (each candidate once per round; its time is the median of its
rounds: on the H200 one schedule timed 82.5 us in one pass and 496 us in a later one when each
candidate was timed in one go), prints the table (GB/s moved; TFLOP/s too for GEMMs; the spread
is a candidate's slowest round over its fastest), and writes ``tuning.json`` into the module; later loads
use the chosen schedules. Kernels are timed at a context of ``max(128, rows)`` (decode: one row,
prefill: the chunk), decode attention also at ``LONG_CONTEXT``: its candidates are judged by the
sum of the two times, which the long context dominates, as it dominates attention's share of a
long generation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from common.cli_help import HelpFormatter
from common.errors import UserError, cli_main
from common.manifest import SCRATCH_PREFIX


def tune(compiled_dir: Path, adapter: str | None = None, reps: int = 50, rounds: int = 5) -> dict:
    from runtime.compiled import TUNING_FILE, load_compiled
    from runtime.device import open_device
    from runtime.kernel import KernelProgram
    from runtime.profile import cost

    (compiled_dir / TUNING_FILE).unlink(missing_ok=True)  # measure every candidate, not a previous choice
    module = load_compiled(compiled_dir)
    mf = module.manifest
    if not any(k.alternates for k in mf.kernels.values()):
        raise UserError(f"{compiled_dir}: no kernel has other schedules to choose among (compiled with "
                        "--no-tuning-candidates?); recompile without it to tune")
    dev = open_device(adapter, mf.requires)
    if not dev.has_timestamps:
        raise UserError(f"adapter '{dev.name}' has no timestamp queries; tuning needs them")
    kernels = mf.kernels
    ctx = mf.options.max_context
    choices, table = {}, {}
    print(f"tuning on {dev.name}")
    todo = [(phase, d) for phase in ("decode", "prefill") for d in mf.phases[phase].dispatches]
    for phase, d in todo:
        main = d.kernel
        if main in table or not kernels[main].alternates:
            continue
        plan = mf.phases[phase]
        seq = 1 if phase == "decode" else mf.options.prefill_chunk
        names = [main, *kernels[main].alternates]
        progs = [KernelProgram(dev.device, name, kernels[name], module.wgsl[name]) for name in names]
        contexts = _contexts(phase, d.bytes, seq, ctx)
        per_context = [_time_candidates(dev, plan, d, names, progs, seq, total, ctx, reps, rounds, not table)
                       for total in contexts]
        moved, flops = (sum(cost(e, seq, total) for total in contexts) for e in (d.bytes, d.flops))
        rows = {}
        for name in names:
            t = sum(m[name][0] for m in per_context)  # the candidate's time over the contexts
            rows[name] = {"rule": kernels[name].rule, "us": t * 1e6, "gb_s": moved / t / 1e9,
                          "tflop_s": flops / t / 1e12, "spread": max(m[name][1] for m in per_context)}
        best = _choose(rows, {name for name, prog in zip(names, progs, strict=True)
                              if any(d.args[b.arg].startswith(SCRATCH_PREFIX) for b in prog.bindings)})
        choices[main] = best
        table[main] = rows
        # a GEMM is compute-bound: its rate against the card's FP32 peak says more than its GB/s
        gemm = kernels[main].kclass in ("gemm", "batched_gemm")
        over = f", sum over contexts {' + '.join(map(str, contexts))}" if len(contexts) > 1 else ""
        print(f"{main} ({d.node}, {moved / 2**20:.1f} MiB{f', {flops / 1e9:.2f} GFLOP' if gemm else ''}{over}):")
        width = max(28, *(len(r["rule"]) for r in rows.values()))
        for name, r in sorted(rows.items(), key=lambda kv: kv[1]["us"]):
            rate = f" {r['tflop_s']:6.2f} TFLOP/s" if gemm else ""
            chosen = "  <- chosen" if name == best else ""
            print(f"  {r['rule']:{width}} {r['us']:9.1f} us {r['gb_s']:8.1f} GB/s{rate}  x{r['spread']:.2f}{chosen}")
    out = {"device": dev.name, "choices": choices, "measurements": table}
    tmp = compiled_dir / f".{TUNING_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(compiled_dir / TUNING_FILE)
    print(f"wrote {compiled_dir / TUNING_FILE}")
    return out


# decode attention's time grows with the context, and its schedules rank differently at a short
# and a long one (a split of 32 positions keeps most of a 128-thread workgroup idle at any length,
# but only at a long context are there enough splits to fill the GPU): such kernels are timed at
# both and judged by the sum
LONG_CONTEXT = 4096


def _mentions(expr, name: str) -> bool:
    """Whether a manifest cost expression (a number, a name, or ``[op, lhs, rhs]``) reads ``name``."""
    return expr == name or (isinstance(expr, list) and any(_mentions(e, name) for e in expr[1:]))


def _contexts(phase: str, moved, seq: int, ctx: int) -> list[int]:
    """The contexts (``total``) a kernel's candidates are timed at: one short one, and a long one
    too for a decode kernel whose traffic grows with the context (its bytes expression ``moved``
    reads ``total``: attention over the KV cache)."""
    short = min(max(128, seq), ctx)
    long = min(LONG_CONTEXT, ctx)
    return [short, long] if phase == "decode" and _mentions(moved, "total") and long > short else [short]


def _time_candidates(dev, plan, d, names: list[str], progs: list, seq: int, total: int, ctx: int, reps: int,
                     rounds: int, first: bool) -> dict[str, tuple[float, float]]:
    """Each candidate's (median seconds, spread) for the dispatch ``d`` at ``seq`` rows over a
    context of ``total`` (of a module built for ``ctx``), in ``rounds`` interleaved rounds."""
    from runtime.microbench import ArgBuffers, KernelTimer

    args = ArgBuffers(dev, progs, plan.arg_bytes(d.args, seq, total, ctx))
    timers = [KernelTimer(dev, prog, args, seq, total) for prog in progs]
    timers[0].warm_up(0.5 if first else 0.2)  # pipeline creation left the GPU idle: clocks back up
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):  # interleaved: a clock or neighbour change hits every candidate alike
        for name, timer in zip(names, timers, strict=True):
            samples[name].append(timer.seconds(reps, trials=2))
    for timer in timers:
        timer.destroy()
    args.destroy()
    return {name: (statistics.median(v), max(v) / min(v)) for name, v in samples.items()}


SCRATCH_MARGIN = 1.03  # a schedule holding split-K records is chosen only if it beats every other by more than this


def _choose(rows: dict[str, dict], scratch: set[str]) -> str:
    """The fastest candidate, unless it needs scratch memory (``scratch``: a split-K GEMM's
    records, 80 MB for the 4B SwiGLU GEMM's split-K 2) and a candidate without is within
    ``SCRATCH_MARGIN`` (that GEMM's split-K 4, 159 MB of records, timed 1530 us against 1540
    unsplit on an H200; it is no longer offered: over one storage binding)."""
    best = min(rows, key=lambda n: rows[n]["us"])
    plain = [n for n in rows if n not in scratch]
    if best in scratch and plain:
        alt = min(plain, key=lambda n: rows[n]["us"])
        if rows[alt]["us"] <= rows[best]["us"] * SCRATCH_MARGIN:
            return alt
    return best


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.tune", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("compiled_dir", type=Path, help="compiled module to tune (its manifest records the choices)")
    ap.add_argument("--adapter", help="Vulkan adapter index or name substring (default: $QWEN3VK_ADAPTER, else the "
                    "first GPU)")
    ap.add_argument("--reps", type=int, default=50, help="launches per timed pass")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each candidate's time: its median)")
    a = ap.parse_args(argv)
    tune(a.compiled_dir, a.adapter, a.reps, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
