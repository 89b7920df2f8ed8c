#!/usr/bin/env bash
# Data curation with a reward model (docs/adapt.md, "Curating SFT data"): the 4,000 rated texts of
# scripts/reward-demo.sh (a KJV half-verse prompt and its second half with k = 0..4 words replaced, rating 4 − k) as
# SFT records, filtered by `cria filter-sft` with the seed-2 Bradley–Terry reward model, then SFT on each set with the
# same steps, and the held-out response loss on clean continuations of data/valid.txt verses (chapters never seen).
# Sets: all 4,000; a random half (the control for size); the reward model's best half; one per prompt (the better of
# its two responses), then the best half of those.
# Usage: scripts/filter-demo.sh [STEPS]   (after scripts/reward-demo.sh 400 1 bt && scripts/reward-demo.sh 400 2 bt)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
RM=out/reward-demo; OUT=out/filter-demo
[ -f $RM/seed1/train-ratings.jsonl ] && [ -f $RM/seed2/bt/head.gguf ] || { echo "run scripts/reward-demo.sh 400 1 bt and scripts/reward-demo.sh 400 2 bt first" >&2; exit 1; }
mkdir -p "$OUT"
cp $RM/seed1/train-ratings.jsonl "$OUT/all.jsonl"
awk 'BEGIN { srand(1) } { print rand() "\t" $0 }' "$OUT/all.jsonl" | sort -k1,1 | cut -f2- | awk 'NR <= 2000' > "$OUT/random.jsonl"
# clean held-out records: the first half of a verse as the prompt, the rest as the completion
awk 'function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return s }
  NF >= 10 && n < 400 { h = int(NF / 2); p = $1; for (i = 2; i <= h; i++) p = p " " $i; c = ""; for (i = h + 1; i <= NF; i++) c = c " " $i
    printf "{\"prompt\": \"%s\", \"completion\": \"%s\"}\n", esc(p), esc(c); n++ }' data/valid.txt > "$OUT/valid.jsonl"
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
SCORER="--reward-adapter $RM/seed2/bt/adapter.gguf --reward-head $RM/seed2/bt/head.gguf --reward-ctx 64"
$CRIA filter-sft "$OUT/all.jsonl" -o "$OUT/rm-half.jsonl" --force --keep 0.5 $SCORER -t 2
$CRIA filter-sft "$OUT/all.jsonl" -o "$OUT/rm-dedup-half.jsonl" --force --dedup --keep 0.5 $SCORER -t 2
for SET in all random rm-half rm-dedup-half; do
  python3 -c "
import json
s = [json.loads(l)['score'] for l in open('$OUT/$SET.jsonl') if l.strip()]
print('$SET: %d records, mean rating %.3f, rated 4: %.1f %%, rated 0-1: %.1f %%' % (len(s), sum(s) / len(s), 100 * sum(x == 4 for x in s) / len(s), 100 * sum(x <= 1 for x in s) / len(s)))"
  $CRIA train --init models/default.gguf --sft "$OUT/$SET.jsonl" --valid-sft "$OUT/valid.jsonl" --lora-rank 8 --steps "$STEPS" --batch 8 \
    --lr 1e-3 --warmup 10 --weight-decay 0 --eval-every "$STEPS" --threads 2 --seed 1 --out "$OUT/sft-$SET" 2>/dev/null | grep -E "^step (0|$STEPS/)" | sed "s/^/  $SET: /"
done
