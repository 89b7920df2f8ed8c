#!/usr/bin/env bash
# Activation Beacon's speed and KV memory against full attention on one model file (docs/kv-cache.md, "Activation
# Beacon"): `cria generate` on a long prompt of held-out text, alternating --no-beacons and the beacons, ROUNDS rounds;
# prints each run's prompt and generation throughput. Usage: scripts/beacon-speed.sh MODEL [PROMPT_BYTES] [ROUNDS] [RATIO]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?model with beacon tensors}; BYTES=${2:-20000}; ROUNDS=${3:-3}; RATIO=${4:-8}
[ -s data/valid.txt ] || scripts/get-corpus.sh
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
head -c "$BYTES" data/valid.txt > /tmp/beacon-speed-prompt.txt
for i in $(seq "$ROUNDS"); do
  for arm in plain beacon; do
    args=(--no-beacons); [ $arm = beacon ] && args=(--beacon-ratio "$RATIO")
    out=$($CRIA generate "$MODEL" -f /tmp/beacon-speed-prompt.txt -n 128 -c 16384 --temp 0 -t 2 "${args[@]}" 2>&1 >/dev/null)
    echo "round $i $arm: $(grep -E '^prompt:' <<< "$out") | $(grep -E '^generation:' <<< "$out")"
  done
done
