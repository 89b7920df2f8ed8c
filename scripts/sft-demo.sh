#!/usr/bin/env bash
# Supervised fine-tuning on the preference demo's data (docs/adapt.md#supervised-fine-tuning-cria-train---sft): the
# prompt is the first half of a KJV verse and the completion its true second half (the pairs' "chosen"), 2000 from
# data/train.txt, 500 held out from data/valid.txt. Reports the held-out response loss before and after, the KJV
# held-out perplexity with the adapter, and the held-out pair accuracy by log π (the true second half against the
# verse seven lines later) next to the base model's.
# Usage: scripts/sft-demo.sh [STEPS]   (needs scripts/dpo-demo.sh dpo first, for its pairs)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
PAIRS=out/dpo-demo/dpo; OUT=out/sft-demo
[ -f "$PAIRS/train.jsonl" ] || { echo "run scripts/dpo-demo.sh dpo first (its pairs)" >&2; exit 1; }
mkdir -p "$OUT"
to_sft() { sed -E 's/"chosen": /"completion": /; s/, "rejected": "([^"\\]|\\.)*"\}$/}/' "$1"; }
to_sft "$PAIRS/train.jsonl" > "$OUT/train.jsonl"
to_sft "$PAIRS/valid.jsonl" > "$OUT/valid.jsonl"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
/usr/bin/time -f "sft: %e s" $CRIA train --init models/default.gguf --sft "$OUT/train.jsonl" --valid-sft "$OUT/valid.jsonl" \
  --lora-rank 8 --steps "$STEPS" --batch 8 --lr 1e-3 --warmup 10 --weight-decay 0 --eval-every 50 --threads 2 --seed 1 --out "$OUT" | grep -E "^step (0|[0-9]+/[0-9]+ .*held)|^done"
echo "KJV valid perplexity: base $($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}'), with the SFT adapter $($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 --lora "$OUT/adapter.gguf" 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}')"
echo "held-out pairs by log π: base $($CRIA reward models/default.gguf --logprob --pairs "$PAIRS/valid.jsonl" -t 2 | sed 's/^[^:]*: //')"
echo "held-out pairs by log π: SFT $($CRIA reward models/default.gguf --logprob --lora "$OUT/adapter.gguf" --pairs "$PAIRS/valid.jsonl" -t 2 | sed 's/^[^:]*: //')"
echo "held-out pairs by log π: DPO $($CRIA reward models/default.gguf --logprob --lora "$PAIRS/adapter.gguf" --pairs "$PAIRS/valid.jsonl" -t 2 | sed 's/^[^:]*: //')"
