#!/usr/bin/env bash
# The recipe of the bundled models (models/README.md): corpus, tokenizer + default model, then the draft model with the
# same tokenizer. About 1.5 hours on 2 shared cores. Outputs go to out/ (git-ignored); copy model.gguf to models/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/get-corpus.sh
dotnet build src/Cria.Cli -c Release
CRIA=src/Cria.Cli/bin/Release/net10.0/Cria.Cli
nice -n 5 $CRIA train --corpus data/train.txt --valid data/valid.txt --out out/default --vocab-size 4096 \
  --dim 256 --layers 6 --heads 8 --kv-heads 2 --ffn 768 --ctx 256 --steps 1000 --batch 8 --lr 1e-3 --warmup 100 \
  --eval-every 100 --eval-batches 8 --checkpoint-minutes 4 --seed 1234 --threads 2 --name cria-default-6m
nice -n 5 $CRIA train --corpus data/train.txt --valid data/valid.txt --out out/draft --tokenizer out/default/tokenizer.gguf \
  --dim 128 --layers 3 --heads 4 --kv-heads 2 --ffn 384 --ctx 256 --tied --steps 1200 --batch 8 --lr 2e-3 --warmup 50 \
  --eval-every 100 --eval-batches 8 --checkpoint-minutes 3 --seed 4321 --threads 2 --name cria-draft-1m
cp out/default/model.gguf models/default.gguf
cp out/draft/model.gguf models/draft.gguf
$CRIA perplexity models/default.gguf data/valid.txt
$CRIA perplexity models/draft.gguf data/valid.txt
