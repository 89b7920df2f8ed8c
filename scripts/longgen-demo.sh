#!/usr/bin/env bash
# LongGen (docs/kv-cache.md, "Hybrid attention"): the pass-key model (models/passkey.gguf, trained at 256 tokens) is
# extended to 1024 tokens by fine-tuning, three ways, with the same data and recipe:
#   full     every layer keeps full attention (plain length extension)
#   longgen  LongGen's hybrid: layers 0, 1, 4, 5 see 16 sinks + a window of 256, layers 2 and 3 see everything
#   window   every layer windowed (sinks 16 + window 256): no layer can reach the middle of the prompt
# then each model, and passkey.gguf as it is (full attention, and with the windows imposed without training), is
# probed: pass-key retrieval by length and needle depth, held-out perplexity at 1024 tokens, KV bytes.
# Usage: scripts/longgen-demo.sh [STEPS] [SEED] [RUNS] [BASELINES]   (out/longgen/sSEED/ARM/model.gguf; results on stdout)
#   BASELINES=0 skips probing passkey.gguf itself (it does not depend on the seed)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; SEED=${2:-5}; RUNS=${3:-full longgen window}; BASELINES=${4:-1}; OUT=out/longgen/s$SEED
[ -s data/train.txt ] || scripts/get-corpus.sh
mkdir -p "$OUT"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
common=(--init models/passkey.gguf --corpus data/train.txt --valid data/valid.txt --ctx 1024 --batch 2 --steps "$STEPS"
        --warmup 30 --lr 3e-4 --passkey-fraction 0.5 --repeat-fraction 0.2 --passkey-answer-weight 20
        --passkey-min-length 64 --seed "$SEED" --eval-every 100 --eval-batches 4 --threads 2 --checkpoint-minutes 5)
arm_args() { case $1 in full) ;; longgen) echo "--attn-window 256 --attn-window-sinks 16" ;; window) echo "--attn-window 256 --attn-window-sinks 16 --attn-window-layers all" ;; esac; }
for arm in $RUNS; do
  [ -s "$OUT/$arm/model.gguf" ] && { echo "$arm: $OUT/$arm/model.gguf exists (delete it to retrain)"; continue; }
  rm -rf "${OUT:?}/$arm"
  # shellcheck disable=SC2046
  /usr/bin/time -f "$arm: %e s" $CRIA train "${common[@]}" --out "$OUT/$arm" $(arm_args "$arm") 2>&1 |
    grep -E "^model:|^done|: [0-9.]+ s$|step $STEPS/" | sed "s/^/$arm  /"
done
probe() { # LABEL MODEL ARGS…
  local label=$1 model=$2; shift 2
  echo "== $label"
  $CRIA passkey "$model" --lengths 512,1024,2048 --depths 0,0.25,0.5,0.75,1 --trials 10 -t 2 -ub 256 "$@" 2>&1 | grep -E "^model|^\||^overall"
  $CRIA perplexity "$model" data/valid.txt -c 1024 --chunks 24 -t 2 "$@" 2>&1 | grep -E "^perplexity:"
}
if [ "$BASELINES" = 1 ]; then
  probe "passkey.gguf as it is (full attention, trained at 256)" models/passkey.gguf
  probe "passkey.gguf with LongGen's windows, no training" models/passkey.gguf --attn-window 256
fi
for arm in $RUNS; do probe "$arm (fine-tuned at 1024)" "$OUT/$arm/model.gguf"; done
