#!/usr/bin/env bash
# Fills the decode-speed columns (tg32 at 512, 2K and 8K cached tokens) of docs/kv-cache/results.tsv, written by
# scripts/kv-cache-table.sh (run that with SPEED=0 first), then redraws docs/kv-cache/kv-cache.svg.
#  - formats: one `cria bench --kv-type f16,q8_0,kivi4,kivi2` process per depth, which alternates the four types'
#    repetitions, so machine drift hits all alike (medians of REPS repetitions);
#  - eviction rows: the cache sized for 512 tokens, prefill in steps of 32 rows with eviction after each, then tg32
#    with the cache held at the budget (median of REPS).
# Run it on a quiet machine. Usage: scripts/kv-cache-speed.sh [THREADS]   (REPS, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}; REPS=${REPS:-5}
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CLI=src/Cria.Cli/bin/Release/net10.0/Cria.Cli
TSV=docs/kv-cache/results.tsv
[ -f $TSV ] || { echo "no $TSV: run scripts/kv-cache-table.sh first" >&2; exit 1; }
SPEEDS=$(mktemp)
trap 'rm -f $SPEEDS' EXIT
for d in 512 2048 8192; do
  echo "formats @ $d" >&2
  $CLI bench models/default.gguf -p 0 -n 32 -r $REPS -t $T -d $d --kv-type f16,q8_0,kivi4,kivi2 2>&1 |
    awk -v d=$d '/^tg32 @/ { for (i = 1; i < NF; i++) if ($i == "median") { n = $4; if (n ~ /^kivi/) n = n "-R128"; print n "\t" d "\t" $(i + 1) } }' >> $SPEEDS
done
for policy in sinks h2o snapkv; do
  for budget in 64 128; do
    for d in 512 2048 8192; do
      echo "evict $policy $budget @ $d" >&2
      $CLI bench models/default.gguf -p 0 -n 32 -r $REPS -t $T -d $d -c 512 -ub 32 --kv-evict $policy --kv-budget $budget 2>&1 |
        awk -F'|' -v n="$policy-$budget" -v d=$d '/tg32 @/ { split($8, a, " "); print n "\t" d "\t" a[1] }' >> $SPEEDS
    done
  done
done
cat $SPEEDS >&2
awk -F'\t' -v OFS='\t' 'NR == FNR { s[$1, $2] = $3; next }
  FNR > 1 && (($2, 512) in s) { $6 = s[$2, 512]; $7 = s[$2, 2048]; $8 = s[$2, 8192] } { print }' $SPEEDS $TSV > $TSV.new
mv $TSV.new $TSV
scripts/kv-cache-svg.sh $TSV > docs/kv-cache/kv-cache.svg
cat $TSV
