#!/usr/bin/env bash
# One model size on the lent GPU, ours and llama.cpp's Vulkan backend in the same device call.
#
#   bash benchmarks/gpu_suite.sh SIZE OUT MODULE...
#
# SIZE is a preset size (0.6b, 1.7b, 4b); each MODULE was compiled on the CPU machine from
# `python -m frontend.make_model DIR --preset qwen3-SIZE` (seed 0, so the weights made here
# again have the fingerprint the module expects). Per module: runtime.tune, then bench.py
# (prefill 512, decode after 128 and at context 4096, GPU memory per buffer class). Then
# llama.cpp (.peers/llamacpp_peer.py, a copy of ../shared/peers/) at f16, q8_0 and q4_0 with
# the same prompt lengths (PEER_QTYPES="f16 q4_0" picks fewer). Logs and results.jsonl go to OUT. Start it after the Vulkan prefix
# printed by ../shared/device/prepare.sh; the peer needs .whl2 installed into /tmp/site2.
set -euo pipefail
size=$1 out=$2
shift 2
mkdir -p "$out"
model=/tmp/m-$size
[ -d "$model" ] || python3 -m frontend.make_model "$model" --preset "qwen3-$size" --seed 0 > /dev/null
for mod in "$@"; do
    name=$(basename "$mod" .vkmod)
    python3 -m runtime.tune "$mod" --reps 20 >> "$out/tune.log" 2>&1
    python3 benchmarks/bench.py "$mod" --model-dir "$model" --peer none --runs 3 --prompts 512 \
        --long-context 4096 --results "$out/results.jsonl" 2>&1 | tee "$out/bench-$name.log" | grep -v "^  "
done
for q in ${PEER_QTYPES:-f16 q8_0 q4_0}; do
    for pg in "512 128" "4096 32"; do
        set -- $pg
        PYTHONPATH=/tmp/site2:${PYTHONPATH:-} PEER_QTYPE=$q python3 .peers/llamacpp_peer.py "/tmp/p-$size-$q.gguf" \
            --reuse --size "$size" --prompt "$1" --gen "$2" --runs 2 2>&1 | grep LLAMACPP | sed "s/^/qtype=$q prompt=$1 /"
    done
done | tee "$out/llamacpp-$size.log"
