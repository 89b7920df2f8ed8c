#!/usr/bin/env bash
# Preference optimisation of the bundled model, measured on held-out pairs. A pair is the first half of a KJV verse
# (prompt), its true second half (chosen) and the second half of the verse seven lines later (rejected): the model
# should prefer the continuation that belongs. Training pairs come from data/train.txt, held-out pairs from
# data/valid.txt (chapters the model never saw). Reports held-out accuracy and margin before and after, and the
# perplexity of data/valid.txt with the adapter (what the preference training costs the language model).
# Usage: scripts/dpo-demo.sh [dpo|simpo] [STEPS] [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-dpo}; STEPS=${2:-200}; N=${3:-2000}
OUT=${OUT:-out/dpo-demo/$KIND}   # OUT=DIR to keep another run
mkdir -p "$OUT"
pairs() { # FILE COUNT → JSONL
  awk -v max="$2" 'BEGIN { n = 0 } NF >= 10 {
      gsub(/\\/, "\\\\"); gsub(/"/, "\\\"")
      h = int(NF / 2); p = $1; for (i = 2; i <= h; i++) p = p " " $i
      c = ""; for (i = h + 1; i <= NF; i++) c = c " " $i
      P[n] = p; C[n] = c; n++
    }
    END { for (i = 0; i < n - 7 && i < max; i++) printf "{\"prompt\": \"%s\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n", P[i], C[i], C[i + 7] }' "$1"
}
pairs data/train.txt "$N" > "$OUT/train.jsonl"
pairs data/valid.txt 500 > "$OUT/valid.jsonl"
wc -l "$OUT/train.jsonl" "$OUT/valid.jsonl"
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
/usr/bin/time -f "$KIND: %e s" $CRIA train --init models/default.gguf --pairs "$OUT/train.jsonl" --valid-pairs "$OUT/valid.jsonl" \
  --preference "$KIND" --lora-rank 8 --steps "$STEPS" --batch 16 --lr 1e-3 --warmup 10 --weight-decay 0 --eval-every 50 --threads 2 --seed 1 --out "$OUT" | grep -E "^step (0|[0-9]+/[0-9]+ .*held)|^done"
echo "KJV valid perplexity: base $($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}'), with the $KIND adapter $($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 --lora "$OUT/adapter.gguf" 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}')"
