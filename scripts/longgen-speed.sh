#!/usr/bin/env bash
# Speed of LongGen's hybrid attention (docs/kv-cache.md, "Hybrid attention"): the same file with full attention and
# with LongGen's layout imposed (--attn-window W: the bottom and top thirds of the layers see 16 sinks + the last W
# positions), prompt processing and generation with DEPTH tokens already cached, alternating, ROUNDS rounds each.
# Speed does not depend on the weights, so a random TinyLlama-shaped file serves (cria make-model … --preset tinyllama).
# Usage: scripts/longgen-speed.sh MODEL [DEPTH] [ROUNDS] [WINDOW]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; DEPTH=${2:-4096}; ROUNDS=${3:-3}; WINDOW=${4:-256}
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
for r in $(seq 1 "$ROUNDS"); do
  for arm in full longgen; do
    args=(); [ "$arm" = longgen ] && args=(--attn-window "$WINDOW")
    $CRIA bench "$MODEL" -p 512 -n 128 -d "$DEPTH" -r 2 -t 2 "${args[@]}" 2>&1 | grep -E "^\| .*(pp|tg)[0-9]+|bytes/token" | sed "s/^/round $r $arm  /"
  done
done
