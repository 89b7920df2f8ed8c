#!/usr/bin/env bash
# Capability-aware self-evaluation on the bundled model (docs/adapt.md, "Self-evaluation").
# Needs scripts/reward-demo.sh 400 1 first: its Bradley–Terry reward model rates the samples (the paper's external
# reward model) and its regression model is the judge of the benchmark.
# Prompts: the first half of every 10th verse of data/train.txt (from the 6th on; the reward demo's pairs were every
# verse's halves), PROMPTS of them; the policy draws 8 samples of 32 tokens of each, and 10 % of the prompts are held out.
# Then Cria.Bench best-of measures best-of-k, adaptive sampling and early pruning with P(No) on 40 held-out verses of
# data/valid.txt, next to the reward model it learned from.
# With PARTIAL > 0, that fraction of the training responses is cut to a random prefix (train-self-eval --partial-fraction).
# Usage: scripts/self-eval-demo.sh [STEPS] [SEED] [PROMPTS] [LR] [PARTIAL]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1000}; SEED=${2:-1}; PROMPTS=${3:-1200}; LR=${4:-5e-4}; PARTIAL=${5:-0}
OUT=out/self-eval-demo/seed$SEED-$PROMPTS; [ "$PARTIAL" != 0 ] && OUT=$OUT-partial$PARTIAL
RM=out/reward-demo/seed1
mkdir -p "$OUT"
awk -v max="$PROMPTS" 'NF >= 10 && n < max { if (c++ % 10 == 5) { h = int(NF / 2); s = $1; for (i = 2; i <= h; i++) s = s " " $i; print s; n++ } }' data/train.txt > "$OUT/prompts.txt"
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
dotnet build bench/Cria.Bench -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
/usr/bin/time -f "train-self-eval: %e s, %M KiB" $CRIA train-self-eval --init models/default.gguf --prompts "$OUT/prompts.txt" -N 8 -n 32 \
  --reward-adapter "$RM/bt/adapter.gguf" --reward-head "$RM/bt/head.gguf" --reward-ctx 64 \
  --partial-fraction "$PARTIAL" --ctx 96 --steps "$STEPS" --batch 8 --lr "$LR" --warmup 20 --eval-every 100 --holdout 0.1 --seed "$SEED" -t 2 --out "$OUT" \
  | grep -E "^step (0|[0-9]+/[0-9]+ .*held)|^done"
dotnet bench/Cria.Bench/bin/Release/net10.0/Cria.Bench.dll best-of --model models/default.gguf \
  --selector "$RM/bt" --judge "$RM/regression" --self-eval "$OUT/adapter.gguf" --self-eval-ctx 96 --count 40 -N 16 -n 32 --threads 2
