#!/usr/bin/env bash
# Regenerates the quantization table of docs/quantization.md and docs/quantization.svg:
# every llama.cpp file type quantized by Cria from models/default.gguf (plain, --imatrix, --awq; calibration on
# data/train.txt), perplexity on data/valid.txt by Cria and by llama.cpp (LLamaSharp 0.30.0, bench only) on each file,
# and llama.cpp's own quantizer run on the plain files with the bytes compared.
# Needs data/ (scripts/get-corpus.sh). Files go to bench/quant/ (git-ignored). Extra arguments go to the runner,
# e.g. --chunks 40 --ctx 128 --threads 2 --types Q4_K_M,Q2_K
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/valid.txt ] || ./scripts/get-corpus.sh
dotnet build bench/Cria.Bench -c Release -v q -nologo >/dev/null
exec dotnet bench/Cria.Bench/bin/Release/net10.0/Cria.Bench.dll quant-table "$@"
