"""``python -m lowering.dump COMPILED_DIR --phase decode --format text|json|dot``: the lowered graph.

Per node: op, shape, kernel class with its reason, the kernel and its workgroup grid, and for a
kernel that reads weights their format (f32 / f16 / q8 / q4) and sizes and the bytes it moves per
token; a summary with counts per kernel class (original matmuls, also those fused or split),
dispatches per step and the weight bytes a step reads per format.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import expr
from common.cli_help import HelpFormatter
from common.errors import UserError, cli_main
from common.manifest import KernelInfo, Plan, load_manifest
from common.weight_format import of_dtype
from ir.dot import to_dot
from ir.graph import Graph
from ir.printer import format_node
from ir.serialize import from_json
from lowering.classify import KERNEL_CLASSES


def _weights(plan: Plan, args: list[str]) -> list[dict[str, Any]]:
    """The 2-D weights a dispatch reads (a quantized one is two args, one buffer): format and bytes."""
    out = []
    for a in dict.fromkeys(args):
        t = plan.tensors.get(a)
        if t is not None and t.kind == "weight" and len(t.shape) == 2:
            out.append({"name": a, "key": t.weight, "format": of_dtype(t.dtype).name, "bytes": t.nbytes({})})
    return out


def _rows(g: Graph, plan: Plan, kernels: dict[str, KernelInfo], seq: int) -> list[dict[str, Any]]:
    by_node = {d.node: d for d in plan.dispatches}
    rows = []
    for n in g.nodes():
        d = by_node.get(n.name)
        k = kernels.get(d.kernel) if d else None
        weights = _weights(plan, d.args) if d else []
        rows.append({
            "name": n.name, "op": n.op, "shape": list(n.shape), "dtype": n.dtype,
            "inputs": n.inputs,
            "kernel_class": n.attrs.get("kernel_class") if n.op == "matmul" else None,
            "fused_matmuls": n.meta.get("fused_matmuls", []),
            "reason": n.meta.get("reason"),
            "kernel": d.kernel if d else None,
            "schedule": k.rule if k else None,
            "grid": [expr.to_text(e) for e in k.grid] if k else None,
            "workgroup": list(k.workgroup) if k else None,
            "covers": n.meta.get("covers", [n.name]),
            "split_of": n.meta.get("split_of"),
            "written_by": n.attrs.get("written_by"),  # a result another node's kernel writes (a cache row, a merge)
            "weights": weights,
            # bytes the kernel moves per token: a decode step, or a full prefill chunk divided by its tokens
            "bytes_per_token": expr.evaluate(d.bytes, {"seq": seq, "total": seq}) / seq if weights else None,
        })
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per kernel class of the *original* matmuls: a split matmul counts once."""
    counts = {c: 0 for c in KERNEL_CLASSES}
    seen_split: set[str] = set()
    for r in rows:
        if r["split_of"]:
            if r["split_of"] in seen_split:
                continue
            seen_split.add(r["split_of"])
        for m in r.get("fused_matmuls", []):  # e.g. decode attention: QK^T and PV inside one kernel
            counts[m["kernel_class"]] += 1
        if r["kernel_class"]:
            counts[r["kernel_class"]] += 1
    dispatches = sum(1 for r in rows if r["kernel"])
    layer_disp = sum(1 for r in rows if r["kernel"] and r["name"].startswith("layers.0."))
    by_format: dict[str, int] = {}
    for w in {w["key"]: w for r in rows for w in r["weights"]}.values():  # a tied table counts once
        by_format[w["format"]] = by_format.get(w["format"], 0) + w["bytes"]
    return {"matmuls_by_class": counts, "dispatches_per_step": dispatches, "dispatches_per_layer": layer_disp,
            "nodes": len(rows), "weight_bytes_by_format": by_format}


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f} MiB" if b >= 2**16 else f"{b / 1024:.1f} KiB"


def dump(compiled_dir: Path, phase: str, fmt: str) -> str:
    manifest = load_manifest(compiled_dir)
    gpath = compiled_dir / "graphs" / f"{phase}.json"
    try:
        g = from_json(gpath.read_text())
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{gpath}: cannot read the lowered graph ({e})") from None
    seq = 1 if phase == "decode" else manifest.options.prefill_chunk
    rows = _rows(g, manifest.phases[phase], manifest.kernels, seq)
    summ = summary(rows)
    if fmt == "json":
        return json.dumps({"phase": phase, "nodes": rows, "summary": summ}, indent=1)
    if fmt == "dot":
        info = {r["name"]: r for r in rows}
        return to_dot(g, lambda n: " ".join(x for x in (info[n.name]["kernel_class"] or "",
                                                          info[n.name]["kernel"] or "") if x))
    lines = [f"# lowered {phase} graph of {manifest.model_dir}"]
    for r in rows:
        n = g[r["name"]]
        extra = []
        if r["kernel"]:
            extra.append(f"kernel={r['kernel']} ({r['schedule']}) grid={r['grid']} wg={r['workgroup']}")
        if r["weights"]:
            extra.append("weights " + " + ".join(f"{w['format']} {_mib(w['bytes'])}" for w in r["weights"])
                         + f", moves {_mib(r['bytes_per_token'])}/token")
        elif r["written_by"]:
            extra.append(f"no kernel: written by {r['written_by']}'s kernel")
        if r["kernel_class"]:
            extra.append(f"{r['kernel_class'].upper()}: {r['reason']}")
        elif r["fused_matmuls"]:
            extra.append("; ".join(f"{m['name']}: {m['kernel_class'].upper()}" for m in r["fused_matmuls"])
                         + f"; {r['reason']}")
        if len(r["covers"]) > 1:
            extra.append(f"fuses {r['covers']}")
        lines.append(format_node(n, "; ".join(extra)))
    c = summ["matmuls_by_class"]
    lines.append(f"# summary {phase}: " + ", ".join(f"{k}={v}" for k, v in c.items())
                 + f"; dispatches per step={summ['dispatches_per_step']} "
                 f"(per layer {summ['dispatches_per_layer']}); all on GPU, 0 on CPU")
    lines.append(f"# weights read by {phase} kernels: " + ", ".join(
        f"{f} {_mib(b)}" for f, b in sorted(summ["weight_bytes_by_format"].items())))
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lowering.dump", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("compiled_dir", type=Path, help="compiled module to show")
    ap.add_argument("--phase", choices=["decode", "prefill"], default="decode", help="which phase's graph")
    ap.add_argument("--format", choices=["text", "json", "dot"], default="text",
                    help="text table, JSON, or Graphviz DOT")
    a = ap.parse_args(argv)
    print(dump(a.compiled_dir, a.phase, a.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
