#!/usr/bin/env bash
# Activation Beacon on the bundled models (docs/kv-cache.md, "Activation Beacon"): trains the beacons of
# models/default.gguf (KJV text) and models/passkey.gguf (half pass-key documents), both frozen, then measures
# held-out perplexity at 1024 and 2048 tokens and pass-key retrieval at 512–2048 against the plain models and
# StreamingLLM. Usage: scripts/beacon-demo.sh [STEPS] [PROBES: ppl passkey]
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
sinks=(--kv-evict sinks --kv-budget 256 --kv-shift -ub 64)
ppl() { # LABEL CTX MODEL ARGS…
  local label=$1 c=$2 model=$3; shift 3
  printf '%-58s %s\n' "$label @ $c" "$($CRIA perplexity "$model" data/valid.txt -c "$c" --chunks 24 -t 2 "$@" 2>&1 | grep -E "^perplexity:")"
}
if [[ " $PROBES " == *" ppl "* ]]; then
  for c in 1024 2048; do
    ppl "default.gguf, full attention" $c models/default.gguf
    ppl "default.gguf, StreamingLLM (sinks + 256, shifted)" $c models/default.gguf "${sinks[@]}"
    for a in 4 8 16; do ppl "default-beacon.gguf, alpha $a" $c "$OUT/default-beacon.gguf" --beacon-ratio $a; done
  done
  ppl "default.gguf at its trained context" 256 models/default.gguf
fi
passkey() { # LABEL MODEL ARGS…
  local label=$1 model=$2; shift 2
  echo "== $label"
  $CRIA passkey "$model" --lengths 512,1024,2048 --depths 0,0.25,0.5,0.75,1 --trials 10 -t 2 -ub 256 "$@" 2>&1 | grep -E "^\||^overall"
}
if [[ " $PROBES " == *" passkey "* ]]; then
  passkey "passkey.gguf, full attention" models/passkey.gguf
  passkey "passkey.gguf, StreamingLLM (sinks + 256, shifted)" models/passkey.gguf --kv-evict sinks --kv-budget 256 --kv-shift
  passkey "passkey-beacon.gguf, alpha 8" "$OUT/passkey-beacon.gguf" --beacon-ratio 8
  passkey "passkey-beacon.gguf, alpha 4" "$OUT/passkey-beacon.gguf" --beacon-ratio 4
fi
