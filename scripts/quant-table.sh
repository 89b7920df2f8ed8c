#!/usr/bin/env bash
# Regenerates the quantization tables of docs/quantization.md and docs/quantization.svg:
# every llama.cpp file type quantized by Cria from models/default.gguf four ways (plain; --imatrix; --awq with
# --awq-inner --awq-clip; --gptq), perplexity by Cria and by llama.cpp (LLamaSharp 0.30.0, bench only) on each file,
# Cria's KL divergence from the F32 model on the same chunks, and llama.cpp's own quantizer run on the plain files with
# the bytes compared.
# Calibration and evaluation text are disjoint halves of the held-out data/valid.txt, split by chapter alternately
# (as scripts/gptq-eval.sh): odd chapters → bench/quant/calib.txt, even chapters → bench/quant/eval.txt; every
# chunk of eval.txt is scored. Needs data/ (scripts/get-corpus.sh). Files go to bench/quant/ (git-ignored).
# Extra arguments go to the runner, e.g. --types Q4_K_M,Q2_K --variants plain,gptq --threads 2
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/valid.txt ] || ./scripts/get-corpus.sh
mkdir -p bench/quant
awk -v RS= -v ORS='\n\n' -v c=bench/quant/calib.txt -v e=bench/quant/eval.txt 'NR%2==1 {print > c} NR%2==0 {print > e}' data/valid.txt
dotnet build bench/Cria.Bench -c Release -v q -nologo >/dev/null
exec dotnet bench/Cria.Bench/bin/Release/net10.0/Cria.Bench.dll quant-table --train bench/quant/calib.txt --valid bench/quant/eval.txt --chunks 0 --calib-chunks 64 "$@"
