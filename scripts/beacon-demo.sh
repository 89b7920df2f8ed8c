#!/usr/bin/env bash
# Activation Beacon on the bundled models (docs/kv-cache.md, "Activation Beacon"): trains the beacons of
# models/default.gguf (KJV text) and models/passkey.gguf (half pass-key documents), both frozen, then measures
# held-out perplexity at 1024 and 2048 tokens and pass-key retrieval at 512–2048 against the plain models and
# StreamingLLM at the same KV memory (256 cache slots). Usage: scripts/beacon-demo.sh [STEPS] [PROBES: ppl passkey]
# The longer pass-key run of the docs: cria train-beacon models/passkey.gguf out/beacon/passkey-beacon-long.gguf
#   --corpus data/train.txt --valid data/valid.txt --steps 1000 --ratios 2,4,8 --ratio 4 --lr 1e-3 --warmup 50
#   --passkey-fraction 0.8 --passkey-answer-weight 20 --threads 2
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}; PROBES=${2:-ppl passkey}; OUT=out/beacon
[ -s data/train.txt ] || scripts/get-corpus.sh
mkdir -p "$OUT"
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
train() { # BASE OUT ARGS…
  local base=$1 out=$2; shift 2
  [ -s "$out" ] && { echo "$out exists (delete it to retrain)"; return; }
  $CRIA train-beacon "$base" "$out" --corpus data/train.txt --valid data/valid.txt --steps "$STEPS" --threads 2 "$@" 2>&1 | grep -E "^wrote|^held-out"
}
train models/default.gguf "$OUT/default-beacon.gguf"
train models/passkey.gguf "$OUT/passkey-beacon.gguf" --passkey-fraction 0.5 --passkey-answer-weight 20
sinks=(--kv-evict sinks --kv-budget 192 --kv-shift -ub 64) # at most 192 + 64 slots, as the beacon cache at alpha 8 for 1024 tokens
ppl() { # LABEL CTX MODEL ARGS…
  local label=$1 c=$2 model=$3; shift 3
  printf '%-58s %s\n' "$label @ $c" "$($CRIA perplexity "$model" data/valid.txt -c "$c" --chunks 24 -t 2 "$@" 2>&1 | grep -E "^perplexity:")"
}
if [[ " $PROBES " == *" ppl "* ]]; then
  for c in 1024 2048; do
    ppl "default.gguf, full attention" $c models/default.gguf
    ppl "default.gguf, StreamingLLM (<= 256 slots)" $c models/default.gguf "${sinks[@]}"
    ppl "default.gguf, StreamingLLM (<= 320 slots)" $c models/default.gguf --kv-evict sinks --kv-budget 256 --kv-shift -ub 64
    for a in 4 8 16; do ppl "default-beacon.gguf, alpha $a" $c "$OUT/default-beacon.gguf" --beacon-ratio $a; done
  done
  for a in 32 128; do ppl "default-beacon.gguf, alpha $a" 1024 "$OUT/default-beacon.gguf" --beacon-ratio $a; done
  ppl "passkey.gguf, full attention" 1024 models/passkey.gguf
  ppl "passkey.gguf, StreamingLLM (<= 256 slots)" 1024 models/passkey.gguf "${sinks[@]}"
  ppl "passkey-beacon.gguf, alpha 8" 1024 "$OUT/passkey-beacon.gguf" --beacon-ratio 8
fi
passkey() { # LABEL MODEL ARGS…
  local label=$1 model=$2; shift 2
  echo "== $label"
  $CRIA passkey "$model" --lengths 512,1024,2048 --depths 0,0.25,0.5,0.75,1 --trials 10 -t 2 "$@" 2>&1 | grep -E "^\||^overall"
}
if [[ " $PROBES " == *" passkey "* ]]; then
  passkey "passkey.gguf, full attention" models/passkey.gguf -ub 256
  passkey "passkey.gguf, StreamingLLM (<= 256 slots)" models/passkey.gguf "${sinks[@]}"
  passkey "passkey.gguf, StreamingLLM (budget 256, -ub 256)" models/passkey.gguf --kv-evict sinks --kv-budget 256 --kv-shift -ub 256
  for a in 8 4 16; do passkey "passkey-beacon.gguf, alpha $a" "$OUT/passkey-beacon.gguf" --beacon-ratio $a -ub 256; done
fi
