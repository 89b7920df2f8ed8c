#!/usr/bin/env bash
# Calibrated quantization measured by two-fold cross-fitting (docs/quantization.md, "Unbiased row scale"):
#   data/valid.txt's chapters are split alternately as in scripts/gptq-eval.sh: odd chapters → $OUT/calib.txt,
#   even chapters → $OUT/eval.txt. Fold A calibrates on calib.txt and scores eval.txt; fold B swaps them. Every file is
#   scored against the plain (round-to-nearest) file of its type on the same text (`cria perplexity F TEXT --kl-base
#   PLAIN`: the paired perplexity change and its standard error), and the two folds are averaged: every held-out token
#   is scored once, by a file calibrated on the other half.
# Usage: TYPES="q2_k q4_0" VARIANTS="NAME:ARGS|NAME:ARGS" [MODEL=models/default.gguf] [OUT=DIR] scripts/twofold-eval.sh
#   ARGS are `cria quantize` options; @IM@ stands for the fold's imatrix (64 chunks × 128 tokens of its calibration
#   half) and @CAL@ for its calibration text; @PLACEBO<S>@ for that imatrix with every tensor's columns shuffled (seed S;
#   S = 0: all ones) — the control that runs the imatrix path without the activation information. Example:
#   TYPES="q2_k q3_k_m q4_0 q4_k_m" VARIANTS="im:--imatrix @IM@|imfit:--imatrix @IM@ --imatrix-row-scale fitted|gptq:--gptq @CAL@" scripts/twofold-eval.sh
# One line per type and variant: "TYPE NAME | A Δ% se | B Δ% se => mean ± se".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/twofold-eval}; THREADS=${THREADS:-2}; MODEL=${MODEL:-models/default.gguf}
mkdir -p "$OUT"
DLL=src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll
[ -f "$DLL" ] || dotnet build src/Cria.Cli -c Release >/dev/null
CLI="dotnet $DLL"
[ -f data/valid.txt ] || ./scripts/get-corpus.sh
awk -v RS= -v ORS='\n\n' -v c="$OUT/calib.txt" -v e="$OUT/eval.txt" 'NR%2==1 {print > c} NR%2==0 {print > e}' data/valid.txt
for half in calib eval; do
  [ -f "$OUT/$half.imatrix.dat" ] || $CLI imatrix "$MODEL" "$OUT/$half.txt" -o "$OUT/$half.imatrix.dat" -c 128 --chunks 64 -t "$THREADS" >/dev/null 2>&1
done
for S in $(grep -oE '@PLACEBO[0-9]+@' <<< "${VARIANTS:-}" | tr -dc '0-9\n' | sort -u); do
  BENCH=bench/Cria.Bench/bin/Release/net10.0/Cria.Bench.dll
  [ -f "$BENCH" ] || dotnet build bench/Cria.Bench -c Release >/dev/null
  for half in calib eval; do
    [ -f "$OUT/$half.placebo$S.dat" ] || dotnet "$BENCH" imatrix-placebo "$OUT/$half.imatrix.dat" "$OUT/$half.placebo$S.dat" --seed "$S" 2>/dev/null
  done
done
for T in ${TYPES:?TYPES is empty}; do
  plain="$OUT/$T-plain.gguf"
  [ -f "$plain" ] || $CLI quantize "$MODEL" "$plain" --type "$T" -t "$THREADS" --force >/dev/null 2>&1
  IFS='|' read -ra VS <<< "${VARIANTS:?VARIANTS is empty}"
  for v in "${VS[@]}"; do
    name=${v%%:*}; args=${v#*:}
    line="$T $name"
    for fold in A B; do
      if [ $fold = A ]; then cal=calib; ev=eval; else cal=eval; ev=calib; fi
      a=${args//@IM@/$OUT/$cal.imatrix.dat}; a=${a//@CAL@/$OUT/$cal.txt}
      while [[ $a =~ @PLACEBO([0-9]+)@ ]]; do a=${a//${BASH_REMATCH[0]}/$OUT/$cal.placebo${BASH_REMATCH[1]}.dat}; done
      f="$OUT/$T-$name-$fold.gguf"
      # shellcheck disable=SC2086  # $a is a list of options
      $CLI quantize "$MODEL" "$f" --type "$T" -t "$THREADS" --force $a >/dev/null 2>&1 || { line="$line | $fold FAILED"; continue; }
      d=$($CLI perplexity "$f" "$OUT/$ev.txt" -c 128 -t "$THREADS" --kl-base "$plain" 2>/dev/null \
        | grep -oE "perplexity change: [-+0-9.]+ % ± [0-9.]+" | sed -E 's/perplexity change: //; s/ % ± / /')
      line="$line | $fold $d"
    done
    echo "$line" | awk '{ if (NF >= 10) printf "%s  => %+.3f ± %.3f\n", $0, ($5 + $9) / 2, sqrt($6 * $6 + $10 * $10) / 2; else print }'
  done
done
