#!/usr/bin/env bash
# SFT with and without packing (docs/adapt.md, "Packing"): the data of scripts/sft-demo.sh (half-verse prompts and
# their true second halves: 2,000 training examples, 500 held out), LoRA rank 8, STEPS steps at the same settings.
# Unpacked: 8 rows per step, each padded to the longest example (80 tokens: 640 token-rows a step). Packed (--pack):
# rows of the model's context (256), examples back to back, each attending only to itself; 2 rows (512 token-rows)
# and 3 rows (768) per step. Reports held-out response loss every 50 steps and the wall time.
# Usage: scripts/sft-pack-demo.sh [STEPS]   (needs scripts/sft-demo.sh's data: out/sft-demo/*.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
DATA=out/sft-demo; OUT=out/pack-demo
[ -f "$DATA/train.jsonl" ] || { echo "run scripts/sft-demo.sh first (its data)" >&2; exit 1; }
mkdir -p "$OUT"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
run() { # NAME ARGS…
  local name=$1; shift
  rm -rf "${OUT:?}/$name"
  /usr/bin/time -f "$name: %e s" $CRIA train --init models/default.gguf --sft "$DATA/train.jsonl" --valid-sft "$DATA/valid.jsonl" \
    --lora-rank 8 --steps "$STEPS" --lr 1e-3 --warmup 10 --weight-decay 0 --eval-every 50 --threads 2 --seed 1 --out "$OUT/$name" "$@" 2>&1 |
    grep -E "^SFT on|held-out|^done|: [0-9.]+ s$" | sed "s/^/$name  /"
}
run unpacked-b8 --batch 8
run packed-b2 --batch 2 --pack
run packed-b3 --batch 3 --pack
