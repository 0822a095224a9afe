#!/usr/bin/env bash
# Runs every CPU benchmark with its default settings, one after the other, and saves each output under
# /tmp/gym-bench-results/ (or the folder given as $1). docs/benchmarks.md is written from these files.
# The GPU benchmarks are separate: python bench/gpu_train.py, bench/gpu_preference.py (on a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gym-bench-results}"
mkdir -p "$out"
for cmd in "bench/cli_latency.py" "bench/startup.py" "bench/packing.py" "bench/preprocess.py" "bench/train_cpu.py" \
           "bench/gpu_train.py --smoke" "bench/gpu_preference.py --smoke" "bench/gpu_attention_packing.py --smoke"; do
    name="$(echo "$cmd" | sed 's#bench/##; s#\.py##; s# --#-#; s# #_#g')"
    echo ">>> python $cmd" >&2
    python $cmd | tee "$out/$name.md"
done
