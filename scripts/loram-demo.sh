#!/usr/bin/env bash
# LoRAM ("Train Small, Infer Large") on the bundled model, measured against plain LoRA with scripts/lora-demo.sh's
# recipe: prune the feed-forward neurons to KEEP, train a LoRA adapter on the pruned model, recover it to the full
# model's shapes and evaluate it on the full model. Needs data/fortunes (scripts/lora-demo.sh fetches it).
#   out/loram-demo/…   the pruned model, adapters, logs
# Usage: scripts/loram-demo.sh [STEPS] [RANK] [KEEP] [--with-lora]   (--with-lora: also train plain LoRA, for the time side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}; RANK=${2:-8}; KEEP=${3:-0.5}; WITH_LORA=${4:-}
[ -s data/fortunes/train.txt ] || { echo "run scripts/lora-demo.sh first (it fetches data/fortunes)"; exit 1; }
mkdir -p out/loram-demo
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
ppl() { $CRIA perplexity "$@" -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}'; }
P=out/loram-demo/pruned-$KEEP.gguf
$CRIA prune models/default.gguf "$P" --keep "$KEEP" --force
echo "pruned (keep $KEEP): fortunes $(ppl "$P" data/fortunes/valid.txt), KJV $(ppl "$P" data/valid.txt)"
common=(--corpus data/fortunes/train.txt --valid data/fortunes/valid.txt --steps "$STEPS" --batch 8 --warmup 20 --weight-decay 0 --eval-every 100 --threads 2 --seed 1 --lora-rank "$RANK" --lr 2e-3)
rm -rf out/loram-demo/lora-pruned out/loram-demo/lora-full
/usr/bin/time -f "loram train: %e s, max RSS %M KB" $CRIA train --init "$P" "${common[@]}" --out out/loram-demo/lora-pruned | tail -2
$CRIA recover-lora out/loram-demo/lora-pruned/adapter.gguf --pruned "$P" -o out/loram-demo/recovered.gguf --force
echo "pruned + its adapter: fortunes $(ppl "$P" data/fortunes/valid.txt --lora out/loram-demo/lora-pruned/adapter.gguf)"
echo "full + recovered adapter: fortunes $(ppl models/default.gguf data/fortunes/valid.txt --lora out/loram-demo/recovered.gguf), KJV $(ppl models/default.gguf data/valid.txt --lora out/loram-demo/recovered.gguf)"
if [ "$WITH_LORA" = "--with-lora" ]; then
  /usr/bin/time -f "lora train: %e s, max RSS %M KB" $CRIA train --init models/default.gguf "${common[@]}" --out out/loram-demo/lora-full | tail -2
  echo "full + LoRA trained on it: fortunes $(ppl models/default.gguf data/fortunes/valid.txt --lora out/loram-demo/lora-full/adapter.gguf), KJV $(ppl models/default.gguf data/valid.txt --lora out/loram-demo/lora-full/adapter.gguf)"
fi
