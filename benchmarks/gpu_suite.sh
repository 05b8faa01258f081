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
# the same prompt lengths (PEER_QTYPES="f16 q4_0" picks fewer); each process's peak GPU memory (nvidia-smi)
# goes to OUT/gpu_memory.log. Logs and results.jsonl go to OUT. Start it after the Vulkan prefix
# printed by ../shared/device/prepare.sh; the peer needs .whl2 installed into /tmp/site2.
set -euo pipefail
size=$1 out=$2

# peak GPU memory of the command (nvidia-smi, whole device, above what was in use before it),
# appended to $out/gpu_memory.log as "LABEL peak_mib=N": the same meter for ours and the peer
peak() {
    local label=$1; shift
    local base log=$out/.smi.$$
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
    local smi=$!
    "$@"
    kill $smi 2>/dev/null; wait $smi 2>/dev/null || true
    echo "$label peak_mib=$(( $(sort -n "$log" | tail -n1) - base ))" >> "$out/gpu_memory.log"
    rm -f "$log"
}
shift 2
mkdir -p "$out"
model=/tmp/m-$size
[ -d "$model" ] || python3 -m frontend.make_model "$model" --preset "qwen3-$size" --seed 0 > /dev/null
for mod in "$@"; do
    name=$(basename "$mod" .vkmod)
    python3 -m runtime.tune "$mod" --reps 20 >> "$out/tune.log" 2>&1
    peak "ours $name (bench.py: + 512 MiB of ceiling-timer scratch)" \
        python3 benchmarks/bench.py "$mod" --model-dir "$model" --peer none --runs 3 --prompts 512 \
        --long-context 4096 --results "$out/results.jsonl" > "$out/bench-$name.log" 2>&1
    grep -v "^  " "$out/bench-$name.log"
    peak "ours $name prompt=4096 gen=32" python3 benchmarks/bench.py "$mod" --model-dir "$model" --memory-probe 4096 \
        >> "$out/bench-$name.log" 2>&1
done
for q in ${PEER_QTYPES:-f16 q8_0 q4_0}; do
    for pg in "512 128" "4096 32"; do
        set -- $pg
        PYTHONPATH=/tmp/site2:${PYTHONPATH:-} PEER_QTYPE=$q python3 .peers/llamacpp_peer.py "/tmp/p-$size-$q.gguf" \
            --reuse --size "$size" --prompt 8 --gen 8 --runs 1 --no-bench > /dev/null 2>&1  # write the GGUF
        peak "llama.cpp $q prompt=$1 gen=$2" env PYTHONPATH=/tmp/site2:${PYTHONPATH:-} PEER_QTYPE=$q \
            python3 .peers/llamacpp_peer.py "/tmp/p-$size-$q.gguf" --reuse --size "$size" --prompt "$1" --gen "$2" \
            --runs 2 > "$out/.peer.log" 2>&1
        grep LLAMACPP "$out/.peer.log" | sed "s/^/qtype=$q prompt=$1 /"
    done
done | tee "$out/llamacpp-$size.log"
cat "$out/gpu_memory.log"
