#!/usr/bin/env bash
# Token classification (LS-unLLaMA's token task) on the bundled model, causal vs bidirectional (docs/adapt.md#token-classification):
# a word is tagged SPEAKER when the next word is a verb of speech (said, spake, answered, saith, cried, called), else O.
# Its tag depends on the word after it, which a causal model cannot see at that word. Sentences are KJV verses with
# one of those verbs: training from data/train.txt, held out from data/valid.txt (chapters the model never saw).
# Usage: scripts/tagger-demo.sh [STEPS] [MODES]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}; MODES=${2:-"token bi-token"}
OUT=out/tagger-demo; mkdir -p "$OUT"
conll() { # FILE MAX → CoNLL
  awk -v max="$2" 'BEGIN { n = 0; split("said spake answered saith cried called", v, " "); for (i in v) verb[v[i]] = 1 }
    NF >= 4 && n < max {
      has = 0
      for (i = 2; i <= NF; i++) { w = tolower($i); gsub(/[^a-z]/, "", w); if (w in verb) has = 1 }
      if (!has) next
      for (i = 1; i <= NF; i++) {
        nx = (i < NF) ? tolower($(i + 1)) : ""; gsub(/[^a-z]/, "", nx)
        print $i "\t" ((nx in verb) ? "SPEAKER" : "O")
      }
      print ""; n++
    }' "$1"
}
conll data/train.txt 3000 > "$OUT/train.conll"
conll data/valid.txt 300 > "$OUT/valid.conll"
echo "$(grep -c '^$' "$OUT/train.conll") training sentences, $(grep -c '^$' "$OUT/valid.conll") held out; SPEAKER words: $(grep -c SPEAKER "$OUT/train.conll") / $(grep -c SPEAKER "$OUT/valid.conll")"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
for mode in $MODES; do
  /usr/bin/time -f "$mode: %e s" $CRIA train-classifier --train "$OUT/train.conll" --valid "$OUT/valid.conll" --mode "$mode" \
    --steps "$STEPS" --batch 8 --ctx 64 --lr 1e-3 --eval-every 100 --threads 2 --seed 1 -o "$OUT/$mode" | grep -E "^(step 0|step [0-9]+/[0-9]+ .*held)|^done"
done
