#!/usr/bin/env bash
# REFUEL (multi-turn RLHF) on the bundled model (docs/adapt.md, "Multi-turn RLHF: REFUEL").
# A dialogue opens with the first six words of a KJV verse (the user's first turn); the policy (the bundled model with
# a LoRA adapter) and the user simulator (the bundled model, frozen) then take turns: policy 24 tokens, user 16,
# policy 24. The reward is a rule: how many times the dialogue says a word. Two runs:
#   lord-all  — "LORD" anywhere in the dialogue (what the policy says counts: a reward it can simply take);
#   and-user  — "and" in the user's turn only (the policy earns it only through what it makes the user say next);
#   rm        — a learned reward: the Bradley–Terry reward model of scripts/reward-demo.sh (seed 1; it prefers verses
#               without corrupted words), with the seed-2 model as a judge the policy never trains on; turns of 16
#               and 8 tokens, so that opening and dialogue fit the reward models' 64 tokens. Run first:
#               scripts/reward-demo.sh 400 1 bt && scripts/reward-demo.sh 400 2 bt
# Openings: 3,000 verses of data/train.txt for training; 200 of data/valid.txt (chapters the model never saw) held
# out, one dialogue each with the same seeds at every evaluation. Afterwards the KJV held-out perplexity with each
# adapter (how far the policy's language model moved) and two held-out dialogues before and after.
# Usage: scripts/refuel-demo.sh [ITERATIONS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
ITER=${1:-30}; RUNS=${2:-"lord-all and-user"}
OUT=out/refuel-demo
mkdir -p "$OUT"
awk 'NF >= 8 && n++ < 3000 { print $1" "$2" "$3" "$4" "$5" "$6 }' data/train.txt > "$OUT/train.txt"
awk 'NF >= 8 && ++n % 5 == 0 && m++ < 200 { print $1" "$2" "$3" "$4" "$5" "$6 }' data/valid.txt > "$OUT/valid.txt"
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
base_ppl=$($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 2>/dev/null | awk '/^perplexity:/ && !d { print $2; d = 1 }')
echo "KJV held-out perplexity, base: $base_ppl"
for RUN in $RUNS; do
  case $RUN in
    lord-all) ARGS="--reward-words LORD --reward-turns all" ;;
    and-user) ARGS="--reward-words and --reward-turns user" ;;
    rm) RM=out/reward-demo
        for S in 1 2; do [ -f $RM/seed$S/bt/head.gguf ] || { echo "run scripts/reward-demo.sh 400 $S bt first"; exit 1; }; done
        ARGS="--reward-adapter $RM/seed1/bt/adapter.gguf --reward-head $RM/seed1/bt/head.gguf --reward-ctx 64 --judge-adapter $RM/seed2/bt/adapter.gguf --judge-head $RM/seed2/bt/head.gguf --judge-ctx 64 --response-tokens 16 --user-tokens 8" ;;
    *) echo "unknown run $RUN"; exit 1 ;;
  esac
  echo "== $RUN: $ARGS"
  /usr/bin/time -f "$RUN: %e s, %M KiB" $CRIA train-refuel --prompts "$OUT/train.txt" --valid-prompts "$OUT/valid.txt" --iterations "$ITER" \
    --dialogues 32 --eval-every 5 $ARGS -t 2 -o "$OUT/$RUN" | grep -E "^iteration (0|[0-9]+/[0-9]+ .*held)|^done"
  echo "KJV held-out perplexity with the $RUN adapter: $($CRIA perplexity models/default.gguf data/valid.txt -c 256 -t 2 --lora "$OUT/$RUN/adapter.gguf" 2>/dev/null | awk '/^perplexity:/ && !d { print $2; d = 1 }')"
  for P in "$(sed -n 1p "$OUT/valid.txt")" "$(sed -n 2p "$OUT/valid.txt")"; do
    echo "-- base:    $($CRIA generate -p "$P" -n 24 --seed 7 --temp 1 -t 2 2>/dev/null | tr '\n' ' ')"
    echo "-- policy:  $($CRIA generate -p "$P" -n 24 --seed 7 --temp 1 -t 2 --lora "$OUT/$RUN/adapter.gguf" 2>/dev/null | tr '\n' ' ')"
  done
done
