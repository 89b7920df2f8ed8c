#!/usr/bin/env bash
# Regenerates the measurements of docs/kv-cache.md: for each KV format and eviction budget, KV bytes per token,
# perplexity on data/valid.txt (scripts/get-corpus.sh), copy-probe accuracy and decode tokens/s at 512, 2K and 8K
# context; long-context perplexity with and without RoPE scaling; a 100K-token stream under eviction.
# Writes docs/kv-cache/results.tsv and docs/kv-cache/kv-cache.svg. Usage: scripts/kv-cache-table.sh [THREADS] [CHUNKS]
# Environment: SPEED=0 leaves the decode-speed cells empty (the slowest part on a busy machine); LONG=0 skips sections 3
# and 4 (default model, F16 KV only); PASSKEY_MODEL=FILE adds section 5, pass-key accuracy of a model that can retrieve
# (models/passkey.gguf) by format, eviction, length and depth -> passkey.tsv (PK_LENGTHS, PK_BUDGETS, TRIALS; ONLY_PASSKEY=1
# runs only that section).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}
CHUNKS=${2:-60}             # perplexity chunks of 256 tokens (the whole of data/valid.txt is ~195)
SPEED=${SPEED:-1}; LONG=${LONG:-1}; PASSKEY_MODEL=${PASSKEY_MODEL:-}; TRIALS=${TRIALS:-10}
[ -f data/valid.txt ] || scripts/get-corpus.sh
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CLI=src/Cria.Cli/bin/Release/net10.0/Cria.Cli
OUT=docs/kv-cache
mkdir -p $OUT
TSV=$OUT/results.tsv

ppl() { nice $CLI perplexity data/valid.txt -t $T --chunks $CHUNKS "$@" 2>&1 | awk '/^perplexity:/ {print $2}'; }
bpt() { nice $CLI perplexity data/valid.txt -t $T --chunks 1 "$@" 2>&1 | sed -n 's/.*KV .*, \([0-9,.]*\) bytes\/token.*/\1/p' | tr -d ,; }
copy() { nice $CLI passkey -t $T --task copy --lengths 128,256 --depths 0,0.5,1 --trials 3 "$@" 2>&1 | awk '/^overall/ {gsub(",", "", $4); print $4}'; }
tg() { nice $CLI bench models/default.gguf -p 0 -n 32 -r 3 -t $T -d "$1" "${@:2}" 2>&1 | awk -F'|' '/tg32 @/ {split($8, a, " "); print a[1]}'; }

# 5. pass-key retrieval (PASSKEY_MODEL, e.g. models/passkey.gguf): lengths PK_LENGTHS, depths 0 … 1, TRIALS keys per
# cell; KIVI also with R = 32 (at these lengths R = 128 keeps nearly everything in F16); eviction budgets PK_BUDGETS,
# eviction after each 32-row prefill step. Run first, so that ONLY_PASSKEY=1 can stop after it (results.tsv untouched).
if [ -n "$PASSKEY_MODEL" ]; then
  PK_TSV=$OUT/passkey.tsv
  PK_LENGTHS=${PK_LENGTHS:-64,128,256}; PK_BUDGETS=${PK_BUDGETS:-64 128}
  printf 'config\tlength\tdepth\ttoken_accuracy\texact_accuracy\n' > $PK_TSV
  { printf 'f16 --kv-type f16\nq8_0 --kv-type q8_0\n'
    printf 'kivi4-R128 --kv-type kivi4 --kivi-residual 128\nkivi2-R128 --kv-type kivi2 --kivi-residual 128\n'
    printf 'kivi4-R32 --kv-type kivi4 --kivi-residual 32\nkivi2-R32 --kv-type kivi2 --kivi-residual 32\n'
    for policy in sinks h2o snapkv; do for budget in $PK_BUDGETS; do
      printf '%s-%s --kv-evict %s --kv-budget %s -ub 32\n' $policy $budget $policy $budget; done; done
    printf 'kivi2-R32+snapkv-128 --kv-type kivi2 --kivi-residual 32 --kv-evict snapkv --kv-budget 128 -ub 32\n'
  } | while read -r name args; do
    echo "passkey $name" >&2
    nice $CLI passkey "$PASSKEY_MODEL" -t $T --lengths $PK_LENGTHS --trials $TRIALS $args 2>&1 </dev/null |
      awk -F'|' -v n="$name" '
        /^\| length/ { for (i = 3; i < NF - 1; i++) { d[i] = $i; gsub(/ /, "", d[i]) } }
        /^\| [0-9]+ \|/ { len = $2; gsub(/ /, "", len)
          for (i = 3; i < NF - 1; i++) { split($i, c, /[][ ]+/); printf "%s\t%s\t%s\t%s\t%s\n", n, len, d[i], c[2], c[3] } }' >> $PK_TSV
  done
  [ "${ONLY_PASSKEY:-0}" = 1 ] && { cat $PK_TSV; exit 0; }
fi

printf 'section\tconfig\tbytes_per_token\tperplexity\tcopy_accuracy\ttg_d512\ttg_d2048\ttg_d8192\n' > $TSV

# 1. formats (KIVI with the paper's R = 128 and with R = 32, where most of a 256-token chunk is quantized)
# (decode speed only where the window size does not matter for it: f32 and the R = 32 variants are left out)
while read -r name speed args; do
  echo "format $name" >&2
  if [ "$speed" = y ] && [ "$SPEED" = 1 ]; then s1=$(tg 512 $args); s2=$(tg 2048 $args); s3=$(tg 8192 $args); else s1=; s2=; s3=; fi
  printf 'format\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(bpt $args)" "$(ppl $args)" "$(copy $args)" "$s1" "$s2" "$s3" >> $TSV
done <<'EOF'
f32 n --kv-type f32
f16 y --kv-type f16
q8_0 y --kv-type q8_0
kivi4-R128 y --kv-type kivi4 --kivi-group 32 --kivi-residual 128
kivi2-R128 y --kv-type kivi2 --kivi-group 32 --kivi-residual 128
kivi4-R32 n --kv-type kivi4 --kivi-group 32 --kivi-residual 32
kivi2-R32 n --kv-type kivi2 --kivi-group 32 --kivi-residual 32
EOF

# 2. eviction: budget in tokens out of the 256-token chunk, prefill in steps of 32 rows (eviction after each step)
for policy in sinks h2o snapkv; do
  for budget in 64 128; do
    echo "evict $policy $budget" >&2
    printf 'evict\t%s-%s\t\t%s\t%s\t\t\t\n' "$policy" "$budget" \
      "$(ppl --kv-evict $policy --kv-budget $budget -ub 32)" \
      "$(copy --kv-evict $policy --kv-budget $budget -ub 32)" >> $TSV
  done
done
echo "evict kivi2+snapkv" >&2
printf 'evict\tkivi2-R32+snapkv-128\t\t%s\t\t\t\t\n' "$(ppl --kv-type kivi2 --kivi-residual 32 --kv-evict snapkv --kv-budget 128 -ub 32)" >> $TSV

# 3. long context: perplexity with chunks beyond the trained 256 tokens, with and without RoPE scaling
[ "$LONG" = 1 ] && for ctx in 256 512 1024; do
  [ "$ctx" = 256 ] && { printf 'longctx\tctx256-none\t\t%s\t\t\t\t\n' "$(grep -P '^format\tf16\t' $TSV | cut -f4)" >> $TSV; continue; }
  f=$((ctx / 256))
  ntk=$(awk -v s=$f 'BEGIN { printf "%.0f", 10000 * s ^ (32 / 30) }')   # NTK-aware: base · s^(d/(d−2)), head dim d = 32
  while read -r name args; do
    echo "longctx $ctx $name" >&2
    printf 'longctx\tctx%s-%s\t\t%s\t\t\t\t\n' "$ctx" "$name" "$(nice $CLI perplexity data/valid.txt -t $T --chunks $((CHUNKS * 256 / ctx)) -c $ctx $args 2>&1 | awk '/^perplexity:/ {print $2}')" >> $TSV
  done <<EOF
none
linear --rope-scaling linear --rope-scale $f
ntk --rope-freq-base $ntk
yarn --rope-scaling yarn --rope-scale $f --yarn-orig-ctx 256
EOF
done

# 4. a 100K-token stream under eviction: the KV cache is sized for 512 tokens and stays at the budget
[ "$LONG" = 1 ] && rm -f $OUT/stream.txt
[ "$LONG" = 1 ] && for d in 10000 100000; do
  echo "stream $d" >&2
  nice $CLI bench models/default.gguf -p 0 -n 16 -r 1 -t $T -d $d -c 512 -ub 64 --kv-evict sinks --kv-budget 256 2>&1 \
    | grep -E 'tg16|peak RSS' | sed "s/^/stream d=$d: /" >> $OUT/stream.txt
done

scripts/kv-cache-svg.sh $TSV > $OUT/kv-cache.svg
cat $TSV
