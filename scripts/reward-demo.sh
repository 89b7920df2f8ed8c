#!/usr/bin/env bash
# Reward models on the bundled model, measured on held-out pairs (docs/adapt.md, "Reward models").
# A text is the first half of a KJV verse (prompt) and its second half (response) with k of its words replaced by
# random corpus words, k = 0..4; its rating is 4 − k (HelpSteer2's 0–4 scale). A pair holds two responses to the same
# prompt with different k; the one with fewer replacements is chosen, and the magnitude is the difference in k.
# Training data come from data/train.txt: 2,000 pairs (bt, scaled-bt) or 4,000 rated texts (regression: the same
# number of texts); held-out pairs from data/valid.txt (chapters the model never saw). Compared: Bradley–Terry,
# Scaled BT, regression, and the training-free log p(response) and contrastive reward (CDR, strong = the bundled model,
# weak = models/draft.gguf).
# Usage: scripts/reward-demo.sh [STEPS] [SEED] [LOSSES]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; SEED=${2:-1}; LOSSES=${3:-"bt scaled-bt regression"}
OUT=out/reward-demo/seed$SEED
mkdir -p "$OUT"
# FILE SEED COUNT MODE(pairs|ratings) → JSONL
make_data() {
  awk -v seed="$2" -v max="$3" -v mode="$4" 'BEGIN { srand(seed); n = 0; nw = 0 }
    { for (i = 1; i <= NF; i++) W[nw++] = $i }
    NF >= 10 { V[n++] = $0 }
    function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return s }
    function corrupt(k,    m, i, j, t, used) {   # the response with k distinct words replaced
      for (i = 1; i <= R; i++) O[i] = Rw[i]
      m = 0
      while (m < k) { j = 1 + int(rand() * R); if (!(j in used)) { used[j] = 1; O[j] = W[int(rand() * nw)]; m++ } }
      t = O[1]; for (i = 2; i <= R; i++) t = t " " O[i]
      return " " t
    }
    END {
      made = 0
      for (v = 0; v < n && made < max; v++) {
        split(V[v], F, " "); nf = length(F); h = int(nf / 2)
        p = F[1]; for (i = 2; i <= h; i++) p = p " " F[i]
        R = 0; for (i = h + 1; i <= nf; i++) Rw[++R] = F[i]
        if (mode == "pairs") {
          a = int(rand() * 5); do b = int(rand() * 5); while (b == a)
          lo = a < b ? a : b; hi = a < b ? b : a
          printf "{\"prompt\": \"%s\", \"chosen\": \"%s\", \"rejected\": \"%s\", \"magnitude\": %d}\n", esc(p), esc(corrupt(lo)), esc(corrupt(hi)), hi - lo
          made++
        } else {
          for (r = 0; r < 2 && made < max; r++) { k = int(rand() * 5); printf "{\"prompt\": \"%s\", \"response\": \"%s\", \"score\": %d}\n", esc(p), esc(corrupt(k)), 4 - k; made++ }
        }
      }
    }' "$1"
}
make_data data/train.txt "$SEED" 2000 pairs > "$OUT/train-pairs.jsonl"
make_data data/train.txt "$SEED" 4000 ratings > "$OUT/train-ratings.jsonl"
make_data data/valid.txt 99 600 pairs > "$OUT/valid.jsonl"
wc -l "$OUT"/*.jsonl
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
for LOSS in $LOSSES; do
  DATA="$OUT/train-pairs.jsonl"; [ "$LOSS" = regression ] && DATA="$OUT/train-ratings.jsonl"
  /usr/bin/time -f "$LOSS: %e s, %M KiB" $CRIA train-reward --init models/default.gguf --train "$DATA" --valid "$OUT/valid.jsonl" --loss "$LOSS" \
    --ctx 64 --steps "$STEPS" --batch 16 --lr 1e-3 --warmup 20 --eval-every 100 --threads 2 --seed "$SEED" --out "$OUT/$LOSS" | grep -E "^step (0|[0-9]+/[0-9]+ .*held)|^done"
  $CRIA reward models/default.gguf --adapter "$OUT/$LOSS/adapter.gguf" --head "$OUT/$LOSS/head.gguf" --pairs "$OUT/valid.jsonl" --ctx 64 -t 2
done
$CRIA reward models/default.gguf --logprob --pairs "$OUT/valid.jsonl" -t 2
$CRIA reward models/default.gguf --weak models/draft.gguf --pairs "$OUT/valid.jsonl" -t 2
