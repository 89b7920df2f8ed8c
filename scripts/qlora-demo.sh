#!/usr/bin/env bash
# QLoRA on the bundled model (docs/adapt.md, "QLoRA"): the fortunes domain of scripts/lora-demo.sh (its data), LoRA
# rank 8 on all projections with the same recipe, trained on four forms of the frozen base:
#   f32    the F32 model (models/default.gguf), projections as F32 parameters
#   nf4    the same file held in NF4 with double quantization (--qlora)
#   q4_k_m the model quantized to Q4_K_M, trained on in that type
#   q2_k   the model quantized to Q2_K, trained on in that type
# Reports each run's time and the trainer's held-out loss (on the base it trained on), then the held-out fortunes
# perplexity of every adapter applied at run time to the F32, Q4_K_M and Q2_K files (cria perplexity --lora).
# Usage: scripts/qlora-demo.sh [STEPS] [RANK] [SEED] [RUNS]   (out/qlora/base-*.gguf, out/qlora/sSEED-RUN/…)
#   RUNS: which of "f32 nf4 q4_k_m q2_k" to train (default all four)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}; RANK=${2:-8}; SEED=${3:-1}; RUNS=${4:-f32 nf4 q4_k_m q2_k}; OUT=out/qlora
[ -s data/fortunes/train.txt ] || { echo "run scripts/lora-demo.sh first (its data: data/fortunes/)" >&2; exit 1; }
mkdir -p "$OUT"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
for t in q4_k_m q2_k; do [ -f "$OUT/base-$t.gguf" ] || $CRIA quantize models/default.gguf "$OUT/base-$t.gguf" --type "$t" > /dev/null; done
common=(--corpus data/fortunes/train.txt --valid data/fortunes/valid.txt --steps "$STEPS" --batch 8 --warmup 20 --weight-decay 0
        --eval-every 100 --threads 2 --seed "$SEED" --lora-rank "$RANK" --lr 2e-3)
run() { # NAME INIT ARGS…
  local name=$1 init=$2; shift 2
  [[ " $RUNS " == *" $name "* ]] || return 0
  rm -rf "${OUT:?}/s$SEED-$name"
  /usr/bin/time -f "$name: %e s, peak RSS %M KB" $CRIA train --init "$init" "${common[@]}" --out "$OUT/s$SEED-$name" "$@" 2>&1 |
    grep -E "frozen base|^done|peak RSS" | sed "s/^/$name  /"
}
run f32 models/default.gguf
run nf4 models/default.gguf --qlora
run q4_k_m "$OUT/base-q4_k_m.gguf"
run q2_k "$OUT/base-q2_k.gguf"
ppl() { $CRIA perplexity "$@" -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}'; }
printf "%-10s %12s %12s %12s\n" adapter "F32 file" "Q4_K_M file" "Q2_K file"
printf "%-10s %12s %12s %12s\n" none "$(ppl models/default.gguf data/fortunes/valid.txt)" \
  "$(ppl $OUT/base-q4_k_m.gguf data/fortunes/valid.txt)" "$(ppl $OUT/base-q2_k.gguf data/fortunes/valid.txt)"
for a in $RUNS; do
  A=$OUT/s$SEED-$a/adapter.gguf
  printf "%-10s %12s %12s %12s\n" "$a" "$(ppl models/default.gguf data/fortunes/valid.txt --lora $A)" \
    "$(ppl $OUT/base-q4_k_m.gguf data/fortunes/valid.txt --lora $A)" "$(ppl $OUT/base-q2_k.gguf data/fortunes/valid.txt --lora $A)"
done
