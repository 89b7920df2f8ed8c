#!/usr/bin/env bash
# Simulated activation quantization on the bundled model (docs/quantization.md, "Activation quantization").
# Every block matrix product's input is quantized per token in blocks of channels: uniform A8 / A4, or COMET's FMPQ
# (outlier channels, found on calibration text, permuted into INT8 blocks; the rest INT4) and FMPQ without its
# permutation (each block that holds an outlier INT8), with F32 weights, with
# Q4_0 weights (W4A4), and with a 4-bit KIVI KV cache as well (COMET's W4A4KV4; groups of 32 tokens, the 32 most
# recent in F16, so that most of each 128-token chunk's keys and values are 4-bit). Calibration and evaluation are the disjoint halves of data/valid.txt used by the quantization
# tables (odd chapters → calib.txt, even → eval.txt); each line: perplexity over all of eval.txt (chunks of 128, second
# half scored) and the KL divergence from the F32 model with unquantized activations.
# Usage: scripts/act-quant-demo.sh [BLOCKS]
set -euo pipefail
cd "$(dirname "$0")/.."
BLOCKS=${1:-"128 64 32"}
OUT=out/act-quant
mkdir -p "$OUT"
awk -v RS= -v ORS='\n\n' -v c="$OUT/calib.txt" -v e="$OUT/eval.txt" 'NR%2==1 {print > c} NR%2==0 {print > e}' data/valid.txt
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
[ -f "$OUT/q4_0.gguf" ] || $CRIA quantize models/default.gguf "$OUT/q4_0.gguf" --type q4_0 -t 2 >/dev/null 2>&1
run() { # NAME MODEL ARGS…
  local name=$1 model=$2; shift 2
  local res bits
  res=$($CRIA perplexity "$model" "$OUT/eval.txt" -c 128 -t 2 --kl-base models/default.gguf "$@" 2>"$OUT/err.txt" | awk '/^perplexity:/ {p=$2} /^mean KLD:/ {k=$3; s=$5} END {printf "ppl %s  KLD %s ± %s", p, k, s}')
  bits=$(awk '/bits per value/ {for (i = 1; i <= NF; i++) if ($i == "bits") print $(i-1)}' "$OUT/err.txt")
  echo "$name  ${bits:+$bits bits/value  }$res"
}
run "F32 weights, F32 activations" models/default.gguf
run "Q4_0 weights, F32 activations" "$OUT/q4_0.gguf"
for B in $BLOCKS; do
  run "F32 weights, A8 block $B" models/default.gguf --act-quant a8 --act-block "$B"
  run "F32 weights, A4 block $B" models/default.gguf --act-quant a4 --act-block "$B"
  run "F32 weights, FMPQ block $B" models/default.gguf --act-quant fmpq --act-block "$B" --act-calib "$OUT/calib.txt"
  run "F32 weights, FMPQ without the permutation, block $B" models/default.gguf --act-quant fmpq-inplace --act-block "$B" --act-calib "$OUT/calib.txt"
  run "Q4_0 weights, A4 block $B (W4A4)" "$OUT/q4_0.gguf" --act-quant a4 --act-block "$B"
  run "Q4_0 weights, FMPQ block $B (W4A4, INT8 outlier blocks)" "$OUT/q4_0.gguf" --act-quant fmpq --act-block "$B" --act-calib "$OUT/calib.txt"
  run "Q4_0 weights, FMPQ block $B, KIVI-4 KV cache (W4A4KV4)" "$OUT/q4_0.gguf" --act-quant fmpq --act-block "$B" --act-calib "$OUT/calib.txt" --kv-type kivi4 --kivi-residual 32
done
