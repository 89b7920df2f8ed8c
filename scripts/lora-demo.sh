#!/usr/bin/env bash
# LoRA fine-tuning of the bundled model on a new domain, measured: modern English quotations from Debian's `fortunes`
# package (BSD-licensed fortune-mod data; fetched with apt-get download, no root needed) instead of the King James
# Bible the model was trained on. Every 10th quotation is held out.
#   data/fortunes/train.txt, data/fortunes/valid.txt   (git-ignored)
#   out/lora-demo/…                                     adapters, logs, perplexities
# Usage: scripts/lora-demo.sh [STEPS] [RANK]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}; RANK=${2:-8}
mkdir -p data/fortunes out/lora-demo
if [ ! -s data/fortunes/train.txt ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download fortunes >/dev/null && dpkg -x fortunes_*.deb x)
  src="$tmp/x/usr/share/games/fortunes"
  for f in wisdom people work science politics humorists education law miscellaneous platitudes tao love food medicine sports; do
    cat "$src/$f"; echo "%"
  done | awk -v RS='%\n' 'NF { n++; gsub(/\t/, "    "); out = (n % 10 == 0) ? "data/fortunes/valid.txt" : "data/fortunes/train.txt"; printf "%s\n", $0 > out }'
  rm -rf "$tmp"
fi
wc -c data/fortunes/train.txt data/fortunes/valid.txt
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
ppl() { $CRIA perplexity "$@" -c 256 -t 2 2>/dev/null | grep -m1 '^perplexity:' | awk '{print $2}'; }
echo "base: fortunes $(ppl models/default.gguf data/fortunes/valid.txt), KJV $(ppl models/default.gguf data/valid.txt)"
common=(--init models/default.gguf --corpus data/fortunes/train.txt --valid data/fortunes/valid.txt --steps "$STEPS" --batch 8 --warmup 20 --weight-decay 0 --eval-every 100 --threads 2 --seed 1)
/usr/bin/time -f "lora: %e s" $CRIA train "${common[@]}" --out out/lora-demo/lora --lora-rank "$RANK" --lr 2e-3 | tail -2
echo "lora r=$RANK: fortunes $(ppl models/default.gguf data/fortunes/valid.txt --lora out/lora-demo/lora/adapter.gguf), KJV $(ppl models/default.gguf data/valid.txt --lora out/lora-demo/lora/adapter.gguf)"
/usr/bin/time -f "full: %e s" $CRIA train "${common[@]}" --out out/lora-demo/full --lr 3e-4 | tail -2
echo "full fine-tune: fortunes $(ppl out/lora-demo/full/model.gguf data/fortunes/valid.txt), KJV $(ppl out/lora-demo/full/model.gguf data/valid.txt)"
ls -l out/lora-demo/lora/adapter.gguf out/lora-demo/full/model.gguf
