#!/usr/bin/env bash
# Label-supervised classification (LS-LLaMA / LS-unLLaMA) with the bundled model, measured: which of four Debian
# `fortunes` files (BSD-licensed fortune-mod data; computers, politics, science, songs-poems) a quotation comes from.
# Every 10th quotation of each file is held out.
#   data/fortune-topics/train.tsv, valid.tsv   (git-ignored; "label<TAB>text", newlines as \n)
#   out/classify-demo/MODE-sSEED/{adapter,head}.gguf, MODE-sSEED.log
# Usage: scripts/classify-demo.sh [STEPS] [MODES] [SEED]   (defaults: 600, "last mean bi-mean", 1)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}; MODES=${2:-"last mean bi-mean"}; SEED=${3:-1}
mkdir -p data/fortune-topics out/classify-demo
if [ ! -s data/fortune-topics/train.tsv ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download fortunes >/dev/null && dpkg -x fortunes_*.deb x)
  src="$tmp/x/usr/share/games/fortunes"
  : > data/fortune-topics/train.tsv; : > data/fortune-topics/valid.tsv
  for f in computers politics science songs-poems; do
    awk -v RS='%\n' -v label="$f" 'NF { n++; gsub(/\t/, "    "); gsub(/\n+$/, ""); gsub(/\n/, "\\n");
      out = (n % 10 == 0) ? "data/fortune-topics/valid.tsv" : "data/fortune-topics/train.tsv"; printf "%s\t%s\n", label, $0 >> out }' "$src/$f"
  done
  rm -rf "$tmp"
fi
wc -l data/fortune-topics/train.tsv data/fortune-topics/valid.tsv
echo "majority class of the held-out set: $(cut -f1 data/fortune-topics/valid.tsv | sort | uniq -c | sort -rn | head -1)"
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
cria() { dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll "$@"; }
for mode in $MODES; do
  out="out/classify-demo/$mode-s$SEED"
  /usr/bin/time -f "$mode: %e s, %M KiB peak" dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll train-classifier \
    --train data/fortune-topics/train.tsv --valid data/fortune-topics/valid.tsv --mode "$mode" \
    --steps "$STEPS" --eval-every 200 --threads 2 --seed "$SEED" -o "$out" 2>&1 | tee "$out.log" | grep -E "^step (0|[0-9]*00/)|done|labels|LoRA|peak"
  cria classify --adapter "$out/adapter.gguf" --head "$out/head.gguf" --file data/fortune-topics/valid.tsv --threads 2
done
