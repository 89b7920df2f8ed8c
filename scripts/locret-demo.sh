#!/usr/bin/env bash
# Locret's retaining heads against the training-free eviction policies (docs/kv-cache.md, "Locret").
#  1. trains heads (cria train-locret, STEPS steps) for models/default.gguf and models/passkey.gguf on data/train.txt
#     (plain text only: the last 32 tokens of each 256-token stretch are the "answer"), and a second set for the
#     pass-key model with half of the sequences synthetic pass-key documents (filler from data/train.txt);
#  2. pass-key retrieval with models/passkey.gguf at lengths 128 and 256, budgets 64 and 128, TRIALS keys per depth,
#     prefill in steps of 32 rows with eviction after each: sinks, h2o, snapkv, locret (both head sets);
#  3. perplexity of models/default.gguf on data/valid.txt (CHUNKS chunks of 256, -ub 32) under each policy, and Locret
#     with larger recent windows (--kv-recent);
#  4. decode speed with eviction, sinks against locret (cria bench -d 512 -c 512 -ub 32, budget 128), alternating,
#     ROUNDS rounds of 5 repetitions.
# Writes out/locret/ and docs/kv-cache/locret.tsv. Usage: scripts/locret-demo.sh [STEPS] [TRIALS] [CHUNKS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1000}; TRIALS=${2:-10}; CHUNKS=${3:-60}; ROUNDS=${4:-3}
[ -f data/train.txt ] || scripts/get-corpus.sh
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CLI="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
OUT=out/locret
TSV=docs/kv-cache/locret.tsv
mkdir -p $OUT

train() { # MODEL OUT ARGS…
  local model=$1 out=$2; shift 2
  [ -f "$out" ] || $CLI train-locret "$model" -o "$out" --data data/train.txt --eval data/valid.txt --steps "$STEPS" -t 2 "$@" 2>/dev/null | tee "$out.txt"
}
train models/default.gguf $OUT/default-text.gguf
train models/passkey.gguf $OUT/passkey-text.gguf
train models/passkey.gguf $OUT/passkey-mix.gguf --passkey-fraction 0.5

printf 'measure\tconfig\tbudget\tlength\tdepth\tvalue\texact\n' > $TSV
policies() { # HEADS for locret
  printf 'sinks --kv-evict sinks\nh2o --kv-evict h2o\nsnapkv --kv-evict snapkv\n'
  for h in "$@"; do printf 'locret-%s --kv-evict locret --kv-heads %s\n' "$(basename "$h" .gguf)" "$h"; done
}
policies $OUT/passkey-text.gguf $OUT/passkey-mix.gguf | while read -r name args; do
  for budget in 64 128; do
    echo "passkey $name $budget" >&2
    $CLI passkey models/passkey.gguf -t 2 --lengths 128,256 --trials "$TRIALS" -ub 32 $args --kv-budget $budget 2>&1 </dev/null |
      awk -F'|' -v n="$name" -v b=$budget '
        /^\| length/ { for (i = 3; i < NF - 1; i++) { d[i] = $i; gsub(/ /, "", d[i]) } }
        /^\| [0-9]+ \|/ { len = $2; gsub(/ /, "", len)
          for (i = 3; i < NF - 1; i++) { split($i, c, /[][ ]+/); printf "passkey\t%s\t%s\t%s\t%s\t%s\t%s\n", n, b, len, d[i], c[2], c[3] } }' >> $TSV
  done
done

ppl() { $CLI perplexity models/default.gguf data/valid.txt -t 2 --chunks "$CHUNKS" -ub 32 "$@" 2>&1 </dev/null | awk '/^perplexity:/ {print $2}'; }
printf 'perplexity\tnone\t-\t256\t-\t%s\t\n' "$(ppl)" >> $TSV
policies $OUT/default-text.gguf | while read -r name args; do
  for budget in 64 128; do
    echo "perplexity $name $budget" >&2
    printf 'perplexity\t%s\t%s\t256\t-\t%s\t\n' "$name" $budget "$(ppl $args --kv-budget $budget)" >> $TSV
  done
done
# Locret's recent window (stabilizers) against its scored blocks, for perplexity
for a in "64 48" "128 64" "128 96"; do
  set -- $a
  echo "perplexity locret budget $1 recent $2" >&2
  printf 'perplexity\tlocret-default-text-recent%s\t%s\t256\t-\t%s\t\n' $2 $1 "$(ppl --kv-evict locret --kv-heads $OUT/default-text.gguf --kv-budget $1 --kv-recent $2)" >> $TSV
done

tg() { $CLI bench models/default.gguf -p 0 -n 32 -r 5 -t 2 -d 512 -c 512 -ub 32 --kv-budget 128 "$@" 2>&1 </dev/null | awk -F'|' '/tg32 @/ { split($8, a, " "); print a[1] }'; }
for r in $(seq "$ROUNDS"); do
  echo "speed round $r" >&2
  printf 'tg32@512\tsinks\t128\t512\t%s\t%s\t\n' "$r" "$(tg --kv-evict sinks)" >> $TSV
  printf 'tg32@512\tlocret\t128\t512\t%s\t%s\t\n' "$r" "$(tg --kv-evict locret --kv-heads $OUT/default-text.gguf)" >> $TSV
done
cat $TSV
