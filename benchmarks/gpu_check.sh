#!/usr/bin/env bash
# The CUDA path's checks, for a machine with an NVIDIA GPU, a CUDA 13-capable driver and the CUDA 13 toolkit's
# nvcc (these checks compile their kernels there; running a shipped artifact needs no nvcc). Results go under
# $OUT (default ./gpu_check_out): kernels.txt (every kernel vs the CPU kernel), SmolLM2 greedy text on the GPU
# vs the CPU in float16 and Q4_1 (text-*.txt, diff-*.txt), and `graphllm bench --device cuda` JSON for SmolLM2
# and a random Llama-3.2-1B-shaped model in float16 and int4 (bench-*.json). summary.txt has one line per check.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
ARCH="${CUDA_ARCH:-sm_90}"
PROMPT="The capital of France is"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

python benchmarks/gpu_check.py kernels > "$OUT/kernels.txt" 2>&1
note "kernels: exit $? ($(grep -c '^ok' "$OUT/kernels.txt") ok, $(grep -c '^FAIL' "$OUT/kernels.txt") failed)"

compile() {  # compile NAME MODEL DTYPE -> $OUT/art-NAME
  python -m graphllm.cli compile --device cuda --cuda-arch "$ARCH" ${2:+-m "$2"} ${3:+--dtype "$3"} \
    -o "$OUT/art-$1" > "$OUT/compile-$1.txt" 2>&1
  note "compile $1: exit $?"
}

for dtype in float16 q4_1; do
  flag=$([ "$dtype" = float16 ] && echo float16 || echo "")  # the default model is stored as Q4_1 blocks
  compile "smollm2-$dtype" "" "$flag"
  python -m graphllm.cli run --device cuda --artifact "$OUT/art-smollm2-$dtype" ${flag:+--dtype $flag} \
    -n 32 "$PROMPT" > "$OUT/text-smollm2-$dtype-cuda.txt" 2> "$OUT/run-smollm2-$dtype-cuda.err"
  note "run smollm2 $dtype on cuda: exit $?"
  python -m graphllm.cli run ${flag:+--dtype $flag} -n 32 "$PROMPT" > "$OUT/text-smollm2-$dtype-cpu.txt" 2>/dev/null
  if diff "$OUT/text-smollm2-$dtype-cpu.txt" "$OUT/text-smollm2-$dtype-cuda.txt" > "$OUT/diff-smollm2-$dtype.txt"; then
    note "greedy text smollm2 $dtype: cuda == cpu"
  else
    note "greedy text smollm2 $dtype: cuda != cpu (see diff-smollm2-$dtype.txt)"
  fi
  python -m graphllm.cli bench --device cuda --artifact "$OUT/art-smollm2-$dtype" ${flag:+--dtype $flag} --json \
    > "$OUT/bench-smollm2-$dtype.json" 2> "$OUT/bench-smollm2-$dtype.err"
  note "bench smollm2 $dtype: exit $?"
done

LLAMA="$OUT/llama-3.2-1b-random"
python benchmarks/gpu_check.py make-llama "$LLAMA" > "$OUT/make-llama.txt" 2>&1
note "make llama-3.2-1b-shaped model: exit $?"
for dtype in float16 int4; do
  compile "llama1b-$dtype" "$LLAMA" "$dtype"
  python -m graphllm.cli bench --device cuda --artifact "$OUT/art-llama1b-$dtype" -m "$LLAMA" --dtype "$dtype" \
    --json > "$OUT/bench-llama1b-$dtype.json" 2> "$OUT/bench-llama1b-$dtype.err"
  note "bench llama1b $dtype: exit $?"
done
