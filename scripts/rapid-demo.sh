#!/usr/bin/env bash
# RAPID on pass-key retrieval beyond the trained context (docs/speculative.md#rapid):
#   scripts/rapid-demo.sh [TRIALS] [LENGTHS]
# For models/passkey.gguf (trained at 256 tokens) at each length and needle depth: the whole prompt read by the model
# (teacher-forced, as `cria passkey`), only the retrieved chunks (--rag-only: what RAPID's drafter reads), RAPID
# (greedy generation, the model itself as drafter) at η = 0, 1, 3, 10, and YaRN-scaled long context with and without
# RAPID; then, at 256 tokens, filler with distractors (see the end). Writes out/rapid/*.txt (one table each).
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-10}
LENGTHS=${2:-512,1024,2048,4096}
DEPTHS=0,0.25,0.5,0.75,1
dotnet build src/Cria.Cli -c Release -v q -nologo > /dev/null
CLI="dotnet src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll"
OUT=out/rapid; mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name: $*"; $CLI passkey models/passkey.gguf --lengths "$LENGTHS" --depths "$DEPTHS" --trials "$TRIALS" -t 2 "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err"; tail -2 "$OUT/$name.txt"; }
run full
run rag-only --rag-only
for eta in 0 1 3 10; do run "rapid-eta$eta" --rapid --rapid-margin "$eta"; done
YARN=(--rope-scaling yarn --rope-scale 16 --yarn-orig-ctx 256)
run yarn "${YARN[@]}"
run yarn-rapid-eta3 "${YARN[@]}" --rapid --rapid-margin 3

# Within the trained length, with distractors: filler that keeps saying "pass key", and a retrieval of two 32-token
# chunks, so that retrieval sometimes misses the needle while the model reading the whole prompt does not.
FILLER="No pass key is here; the pass key is elsewhere. And the earth was without form, and void; and darkness was upon the face of the deep. And God said, Let there be light: and there was light. "
LENGTHS=256
SMALL=(--filler "$FILLER" --rag-budget 64 --rag-chunk 32 --rag-query 16)
run distract-full --filler "$FILLER"
run distract-rag-only "${SMALL[@]}" --rag-only
for eta in 1 3 10; do run "distract-rapid-eta$eta" "${SMALL[@]}" --rapid --rapid-margin "$eta"; done
