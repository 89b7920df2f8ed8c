#!/usr/bin/env bash
# Cria vs llama.cpp (LLamaSharp 0.30.0) on TinyLlama-1.1B-shaped random-weight models, same threads, alternating runs.
#
#   bench/compare.sh                      # F16, Q8_0, Q4_K_M; 2 threads; 3 rounds x 5 reps; pp512 / tg128
#   ROUNDS=2 REPS=3 TYPES="q4_k_m" bench/compare.sh
#
# Environment: THREADS (2), ROUNDS (3), REPS (5), PP (512), TG (128), TYPES ("f16 q8_0 q4_k_m"; q4_k_m is always run
# last so that the last line is its ratio), MODELS_DIR (bench/models, git-ignored cache of generated files),
# LLAMA_MMAP=1 (load llama.cpp with mmap instead of LLamaSharp's default, no mmap), BANDWIDTH=0 (skip the probe).
# The last line reads exactly `ratio tg128=<x> pp512=<y>` (Cria median / llama.cpp median) for Q4_K_M.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

THREADS="${THREADS:-2}"; ROUNDS="${ROUNDS:-3}"; REPS="${REPS:-5}"; PP="${PP:-512}"; TG="${TG:-128}"
TYPES="${TYPES:-f16 q8_0 q4_k_m}"
MODELS_DIR="${MODELS_DIR:-$root/bench/models}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# Q4_K_M last, whatever order TYPES gives.
ordered=()
for t in $TYPES; do [[ "${t,,}" == q4_k_m ]] || ordered+=("${t,,}"); done
for t in $TYPES; do [[ "${t,,}" == q4_k_m ]] && { ordered+=(q4_k_m); break; }; done

echo "== build (Release)"
dotnet build src/Cria.Cli/Cria.Cli.csproj -c Release -v q -nologo
dotnet build bench/Cria.Bench/Cria.Bench.csproj -c Release -v q -nologo
[[ "${BANDWIDTH:-1}" == 0 ]] || dotnet build bench/bandwidth/Cria.Bandwidth.csproj -c Release -v q -nologo
cli=(dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll)
runner=(dotnet bench/Cria.Bench/bin/Release/net10.0/Cria.Bench.dll)

echo "== models ($MODELS_DIR)"
mkdir -p "$MODELS_DIR"
for t in "${ordered[@]}"; do
  f="$MODELS_DIR/tinyllama-$t.gguf"
  if [[ ! -s "$f" ]]; then
    echo "generating $f"
    "${cli[@]}" make-model "$f.tmp" --preset tinyllama --type "$t"
    mv "$f.tmp" "$f"
  else
    echo "cached $f ($(stat -Lc %s "$f") bytes)"
  fi
done

if [[ "${BANDWIDTH:-1}" != 0 ]]; then
  echo "== machine limits"
  dotnet bench/bandwidth/bin/Release/net10.0/Cria.Bandwidth.dll
  # the same sweep over a buffer in 2 MiB pages (MADV_HUGEPAGE), as Cria's model mappings are where the page cache allows
  dotnet bench/bandwidth/bin/Release/net10.0/Cria.Bandwidth.dll --huge | grep -E 'madvise|read'
fi

summary="$(mktemp /tmp/cria-bench-summary.XXXXXX.tsv)"; rm -f "$summary"
last=""
extra=(); [[ "${LLAMA_MMAP:-0}" == 1 ]] && extra+=(--llama-mmap)
for t in "${ordered[@]}"; do
  f="$MODELS_DIR/tinyllama-$t.gguf"
  echo
  echo "== $t: $f"
  out="$("${runner[@]}" --model "$f" --threads "$THREADS" --rounds "$ROUNDS" --reps "$REPS" --pp "$PP" --tg "$TG" \
         --summary "$summary" "${extra[@]}" | tee /dev/stderr)"
  last="$(grep '^ratio ' <<<"$out" | tail -n 1)"
done

echo
echo "== summary: medians of $((ROUNDS * REPS)) runs per cell (tok/s), $THREADS threads, $(date -u '+%Y-%m-%d %H:%M') UTC, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs"
echo "| model | type | threads | Cria pp$PP | llama.cpp pp$PP | pp ratio | Cria tg$TG | llama.cpp tg$TG | tg ratio | peak RSS alone, tg / pp: Cria | llama.cpp |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
tail -n +2 "$summary" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $6, $7, $8, $9, $10, $11, $12, $13 }'
rm -f "$summary"
echo "$last"
