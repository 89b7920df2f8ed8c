#!/usr/bin/env bash
# Calibrated quantization with disjoint calibration and evaluation text (docs/quantization.md, "GPTQ"):
#   data/valid.txt's chapters (blank-line separated, every 20th KJV chapter, none in data/train.txt) are split
#   alternately: odd-numbered chapters (1st, 3rd, … 59th; 30 chapters) → $OUT/calib.txt,
#   even-numbered (2nd, 4th, … 58th; 29 chapters) → $OUT/eval.txt.
# Each job TYPE:VARIANT quantizes models/default.gguf and prints Cria's perplexity over all of eval.txt (chunks of 128
# tokens, second half of each scored). Variants: plain, imcal / imtrain (imatrix from calib.txt / train.txt, 64 chunks),
# gcal / gtrain (GPTQ calibrated on calib.txt / train.txt), fcal / fcalimp / fcalonly (per-weight diagonal Fisher from
# calib.txt, 64 chunks, candidates ref,ggml / ref,ggml,imp / imp alone), gcalw (GPTQ with imatrix-weighted block scales),
# awqcal (AWQ scaling into the norms, calib.txt), awqclip (+ clipping search), awqinner (+ v→o / up→down scalings),
# awqfull (norms + v→o / up→down + clipping), awqfullim (awqfull with the calib imatrix), awqgptq (AWQ scalings, then
# GPTQ on the scaled matrices with S⁻¹HS⁻¹); clipping experiments:
# awqclipnoqk (q, k unclipped, as llm-awq), awqcliplocal (per-group objective), awqclipdamp (1 % dampening),
# awqclipskip (BOS position left out), awqcliporacle (calibrated on eval.txt: a diagnostic, not a fair variant).
#   scripts/gptq-eval.sh q2_k:plain q2_k:imcal q2_k:gcal q4_0:plain ...
# KLD=1 also compares each file with models/default.gguf on the same chunks (cria perplexity --kl-base): KL(F32 ‖ file),
# same-top-token rate and the paired perplexity change with its standard error, on one line per job.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gptq-eval}; THREADS=${THREADS:-2}
mkdir -p "$OUT"
DLL=src/Cria.Cli/bin/Release/net10.0/Cria.Cli.dll
[ -f "$DLL" ] || dotnet build src/Cria.Cli -c Release >/dev/null
CLI="dotnet $DLL"
awk -v RS= -v ORS='\n\n' -v c="$OUT/calib.txt" -v e="$OUT/eval.txt" 'NR%2==1 {print > c} NR%2==0 {print > e}' data/valid.txt
[ -f "$OUT/calib.imatrix.dat" ] || $CLI imatrix models/default.gguf "$OUT/calib.txt" -o "$OUT/calib.imatrix.dat" -c 128 --chunks 64 -t "$THREADS" >/dev/null
[ -f "$OUT/train.imatrix.dat" ] || $CLI imatrix models/default.gguf data/train.txt -o "$OUT/train.imatrix.dat" -c 128 --chunks 64 -t "$THREADS" >/dev/null
for job in "$@"; do
  T=${job%%:*}; V=${job#*:}
  case $V in
    plain)   args=() ;;
    imcal)   args=(--imatrix "$OUT/calib.imatrix.dat") ;;
    imtrain) args=(--imatrix "$OUT/train.imatrix.dat") ;;
    gcal)    args=(--gptq "$OUT/calib.txt") ;;
    gtrain)  args=(--gptq data/train.txt) ;;
    gcalw)   args=(--gptq "$OUT/calib.txt" --gptq-scales weighted) ;;
    fcal)    args=(--fisher "$OUT/calib.txt") ;;
    fcalimp) args=(--fisher "$OUT/calib.txt" --fisher-candidates ref,ggml,imp) ;;
    fcalonly) args=(--fisher "$OUT/calib.txt" --fisher-candidates imp) ;;
    awqcal)  args=(--awq "$OUT/calib.txt") ;;
    awqclip) args=(--awq "$OUT/calib.txt" --awq-clip) ;;
    awqinner) args=(--awq "$OUT/calib.txt" --awq-inner) ;;
    awqfull) args=(--awq "$OUT/calib.txt" --awq-inner --awq-clip) ;;
    awqfullim) args=(--awq "$OUT/calib.txt" --awq-inner --awq-clip --imatrix "$OUT/calib.imatrix.dat") ;;
    awqgptq) args=(--awq "$OUT/calib.txt" --awq-inner --gptq "$OUT/calib.txt") ;;
    awqclipnoqk) args=(--awq "$OUT/calib.txt" --awq-clip --awq-clip-tensors attn_v,attn_output,ffn_gate,ffn_up,ffn_down) ;;
    awqcliplocal) args=(--awq "$OUT/calib.txt" --awq-clip --awq-clip-local) ;;
    awqclipdamp) args=(--awq "$OUT/calib.txt" --awq-clip --awq-clip-damp 0.01) ;;
    awqclipskip) args=(--awq "$OUT/calib.txt" --awq-clip --awq-skip 1) ;;
    awqcliporacle) args=(--awq "$OUT/eval.txt" --awq-clip --awq-clip-tensors attn_v,attn_output,ffn_gate,ffn_up,ffn_down) ;;   # calibrated on the evaluation text itself: not a fair variant, a diagnostic
    *) echo "unknown variant $V" >&2; exit 2 ;;
  esac
  f="$OUT/$T-$V.gguf"
  $CLI quantize models/default.gguf "$f" --type "$T" -t "$THREADS" --force "${args[@]}" 2>/dev/null | sed 's/^/  /'
  if [ "${KLD:-0}" = 1 ]; then
    echo "$T $V $($CLI perplexity "$f" "$OUT/eval.txt" -c 128 -t "$THREADS" --kl-base models/default.gguf 2>/dev/null | tr '\n' ';')"
  else
    echo "$T $V $($CLI perplexity "$f" "$OUT/eval.txt" -c 128 -t "$THREADS" 2>/dev/null)"
  fi
done
