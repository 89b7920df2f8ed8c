#!/usr/bin/env bash
# LoRA's variations measured on the fortunes domain of scripts/lora-demo.sh (run that first for the data): the same
# 300-step recipe (8 × 256 tokens, warm-up 20, lr 2e-3, seed 1) with
#   r 8  α 16             the plain adapter of docs/adapt.md
#   r 8  α 16 dropout P   PEFT's lora_dropout
#   r 64 α 16             a large rank at the standard scale α/r = 0.25
#   r 64 α 16 --rslora    the same rank at rsLoRA's scale α/√r = 2
# and the held-out perplexity of each adapter on fortunes and on the Bible.
# Usage: scripts/lora-variants-demo.sh [STEPS] [DROPOUT] [CRIA_DLL]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}; P=${2:-0.1}
DLL=${3:-src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll}
[ -s data/fortunes/train.txt ] || { echo "run scripts/lora-demo.sh first (it fetches data/fortunes)"; exit 1; }
[ $# -ge 3 ] || dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet $DLL"
OUT=out/lora-variants; mkdir -p $OUT
ppl() { $CRIA perplexity "$@" -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}'; }
common=(--init models/default.gguf --corpus data/fortunes/train.txt --valid data/fortunes/valid.txt --steps "$STEPS" --batch 8 --warmup 20 --weight-decay 0 --eval-every 100 --threads 2 --seed 1 --lr 2e-3)
run() {
  local name=$1; shift
  /usr/bin/time -f "$name: %e s" $CRIA train "${common[@]}" --out $OUT/$name "$@" > $OUT/$name.log 2>&1 || { tail -3 $OUT/$name.log; exit 1; }
  tail -1 $OUT/$name.log
  echo "$name ($*): fortunes $(ppl models/default.gguf data/fortunes/valid.txt --lora $OUT/$name/adapter.gguf), KJV $(ppl models/default.gguf data/valid.txt --lora $OUT/$name/adapter.gguf)"
}
run r8 --lora-rank 8 --lora-alpha 16
run r8-dropout --lora-rank 8 --lora-alpha 16 --lora-dropout "$P"
run r64 --lora-rank 64 --lora-alpha 16
run r64-rslora --lora-rank 64 --lora-alpha 16 --rslora
