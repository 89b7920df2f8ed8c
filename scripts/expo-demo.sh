#!/usr/bin/env bash
# ExPO on the preference demo's adapter (docs/adapt.md#expo): the bundled model with the DPO (or SimPO) adapter of
# scripts/dpo-demo.sh merged at scale 1 + α — the same model `cria extrapolate --from models/default.gguf --to
# MERGED-AT-1 --alpha α` writes (tested) — for each α: held-out pair accuracy by the implicit reward
# log π(y|x) − log π_ref(y|x) (CDR against the base model) and by log π(y|x) alone, and the KJV held-out perplexity.
# Usage: [DEMO=DIR] scripts/expo-demo.sh [dpo|simpo] [ALPHAS]   (needs scripts/dpo-demo.sh KIND first)
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-dpo}; ALPHAS=${2:-"0 0.25 0.5 1 2"}
DEMO=${DEMO:-out/dpo-demo/$KIND}; OUT=out/expo/$(basename "$DEMO")   # DEMO=DIR: another dpo-demo run (its OUT)
[ -f "$DEMO/adapter.gguf" ] || { echo "run scripts/dpo-demo.sh $KIND first" >&2; exit 1; }
mkdir -p "$OUT"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
$CRIA export-lora -m models/default.gguf --lora "$DEMO/adapter.gguf" -o "$OUT/merged-1.gguf" --force > /dev/null
echo "| α | implicit-reward accuracy (mean margin) | log π accuracy (mean margin) | KJV held-out ppl |"
echo "|---:|---|---|---:|"
base_lp=$($CRIA reward models/default.gguf --logprob --pairs "$DEMO/valid.jsonl" -t 2 | sed 's/^[^:]*: //')
base_ppl=$($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}')
echo "| base model | — | $base_lp | $base_ppl |"
for a in $ALPHAS; do
  m="$OUT/expo-$a.gguf"
  $CRIA extrapolate --from models/default.gguf --to "$OUT/merged-1.gguf" --alpha "$a" -o "$m" --force > /dev/null
  cdr=$($CRIA reward "$m" --weak models/default.gguf --pairs "$DEMO/valid.jsonl" -t 2 | sed 's/^[^:]*: //')
  lp=$($CRIA reward "$m" --logprob --pairs "$DEMO/valid.jsonl" -t 2 | sed 's/^[^:]*: //')
  ppl=$($CRIA perplexity "$m" data/valid.txt -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}')
  echo "| $a | $cdr | $lp | $ppl |"
done
