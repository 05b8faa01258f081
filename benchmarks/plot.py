"""Ours beside llama.cpp at a glance: ``python benchmarks/plot.py OUT.png RESULTS.jsonl LOG... [--device NAME]``

Reads bench.py's results (one JSON line per metric, ``quantize`` names the format) and the
``LLAMACPP ...`` lines that ``benchmarks/gpu_suite.sh`` logs (prefixed with ``qtype=`` and
``prompt=``), of one card (``--device``, default the H200: the lent machines are H100s or H200s
and a bar pair must come from one card), keeps the latest value per (model, format, metric) (so a
pair of bars may come from two calls: RESULTS.md says which), and draws three panels per
model size: decode tok/s after 128 tokens, decode at context 4096, prefill tok/s of 512 tokens,
each as ours | llama.cpp bars per weight format (f16, q8, q4) that both have numbers for.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

FORMATS = {"none": "f16", "q8": "q8", "q4": "q4", "f16": "f16", "q8_0": "q8", "q4_0": "q4"}
SIZES = {"/tmp/m-0.6b": "0.6b", "/tmp/m-1.7b": "1.7b", "/tmp/m-4b": "4b"}
PANELS = (("decode", "decode tok/s, context 128"), ("decode4k", "decode tok/s, context 4096"),
          ("prefill", "prefill tok/s, 512-token prompt"))


def ours(path: Path, device: str) -> dict[tuple[str, str, str], float]:
    names = {"decode_tok_s": "decode", "decode_ctx4096_tok_s": "decode4k", "prefill512_tok_s": "prefill"}
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("metric") in names and r.get("model") in SIZES and r.get("device") == device:
            out[(SIZES[r["model"]], FORMATS[r.get("quantize") or "none"], names[r["metric"]])] = r["value"]
    return out


def llamacpp(paths: list[Path], device: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for p in paths:
        for line in p.read_text().splitlines():
            m = re.search(r"qtype=(\S+) prompt=(\d+) .*size=(\S+) .*prefill_tok_s=([\d.]+) decode_tok_s=([\d.]+)", line)
            if not m or f'device="{device}"' not in line:
                continue
            q, prompt, size, prefill, decode = m.groups()
            if prompt == "4096":
                out[(size, FORMATS[q], "decode4k")] = float(decode)
            else:
                out[(size, FORMATS[q], "decode")] = float(decode)
                out[(size, FORMATS[q], "prefill")] = float(prefill)
    return out


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("png")
    ap.add_argument("results", type=Path)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--device", default="NVIDIA H200", help="the card whose numbers to draw (default: %(default)s)")
    args = ap.parse_args(argv)
    png = args.png
    a, b = ours(args.results, args.device), llamacpp(args.logs, args.device)
    sizes = sorted({k[0] for k in a}, key=lambda s: float(s[:-1]))
    fig, axes = plt.subplots(len(sizes), len(PANELS), figsize=(13, 3.4 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        for col, (metric, title) in enumerate(PANELS):
            ax = axes[row][col]
            # only formats the peer ran too: the claim is "both in the same device call"
            fmts = [f for f in ("f16", "q8", "q4") if (size, f, metric) in a and (size, f, metric) in b]
            xs = range(len(fmts))
            ax.bar([x - 0.2 for x in xs], [a.get((size, f, metric), 0) for f in fmts], 0.4, label="qwen3-vk")
            ax.bar([x + 0.2 for x in xs], [b.get((size, f, metric), 0) for f in fmts], 0.4, label="llama.cpp Vulkan")
            ax.set_xticks(list(xs), fmts)
            ax.set_title(f"Qwen3-{size} shape: {title}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"{args.device} through Vulkan, batch 1, random weights; each bar its latest run "
                 "(benchmarks/RESULTS.md names the device call of each)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
