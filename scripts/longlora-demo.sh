#!/usr/bin/env bash
# Long-context fine-tuning of the bundled model from 256 to 1,024 tokens (docs/adapt.md, "Long context: S2-Attn"):
# full fine-tuning of models/default.gguf on data/train.txt at context 1024 for STEPS steps of 2 sequences, with full
# attention and with LongLoRA's S2-Attn (groups of 256, half the heads shifted), each without and with position
# interpolation (--rope-scale 4). The two runs of a pair train side by side on one thread each. Then perplexity of
# every model on data/valid.txt at 1024 and 256 tokens (inference always uses full attention), and the base model at
# 1024 with and without linear RoPE scaling ×4.
# Usage: scripts/longlora-demo.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-150}
OUT=out/longlora
mkdir -p $OUT
[ -f data/train.txt ] || scripts/get-corpus.sh
dotnet build src/Cria.Cli -c Release -v q -nologo >/dev/null
CRIA="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
train() { # NAME ARGS…
  local name=$1; shift
  /usr/bin/time -f "$name: %e s" $CRIA train --init models/default.gguf --ctx 1024 --batch 2 --steps "$STEPS" --warmup 15 --lr 3e-4 \
    --threads 1 --seed 1 --eval-every 100000 --out $OUT/$name "$@" > $OUT/$name.log 2>&1
}
for pi in "" "--rope-scale 4"; do
  sfx=${pi:+-pi}
  train full$sfx $pi & train s2$sfx $pi --s2-attn & wait
  tail -n 1 $OUT/full$sfx.log $OUT/s2$sfx.log
done
ppl() { $CRIA perplexity "$1" data/valid.txt -c "$2" -t 2 "${@:3}" 2>&1 | grep -m1 '^perplexity:' | awk '{print $2}'; }
echo "base: 1024 $(ppl models/default.gguf 1024), 1024 with linear ×4 $(ppl models/default.gguf 1024 --rope-scaling linear --rope-scale 4), 256 $(ppl models/default.gguf 256)"
for m in full s2 full-pi s2-pi; do echo "$m: 1024 $(ppl $OUT/$m/model.gguf 1024), 256 $(ppl $OUT/$m/model.gguf 256)"; done
