#!/usr/bin/env bash
# Markdown tables for docs/kv-cache.md from scripts/kv-cache-table.sh's passkey.tsv (section 5): per configuration the
# mean over depths at each length, token accuracy [exact answers]; then, per length in LENGTHS (default: the longest),
# every depth. Usage: scripts/passkey-md.sh [docs/kv-cache/passkey.tsv] [LENGTHS, space-separated]
set -euo pipefail
TSV=${1:-docs/kv-cache/passkey.tsv}
awk -F'\t' -v want="${2:-}" '
  NR == 1 { next }
  { if (!($1 in seen)) { seen[$1] = 1; cfg[++nc] = $1 }
    if (!($2 in sl)) { sl[$2] = 1; len[++nl] = $2 }
    if (!($3 in sd)) { sd[$3] = 1; dep[++nd] = $3 }
    tok[$1, $2, $3] = $4; ex[$1, $2, $3] = $5
    st[$1, $2] += $4; se[$1, $2] += $5; n[$1, $2]++; at[$1] += $4; ae[$1] += $5; an[$1]++ }
  END {
    printf "| config |"; for (j = 1; j <= nl; j++) printf " %s |", len[j]; printf " all |\n|---|"
    for (j = 1; j <= nl; j++) printf "---:|"; printf "---:|\n"
    for (i = 1; i <= nc; i++) { c = cfg[i]; printf "| %s |", c
      for (j = 1; j <= nl; j++) printf " %.2f [%.2f] |", st[c, len[j]] / n[c, len[j]], se[c, len[j]] / n[c, len[j]]
      printf " %.2f [%.2f] |\n", at[c] / an[c], ae[c] / an[c] }
    if (want == "") want = len[nl]
    nw = split(want, ws, " ")
    for (w = 1; w <= nw; w++) { L = ws[w]
      printf "\nlength %s, by depth:\n\n| config |", L; for (k = 1; k <= nd; k++) printf " %s |", dep[k]; printf "\n|---|"
      for (k = 1; k <= nd; k++) printf "---:|"; printf "\n"
      for (i = 1; i <= nc; i++) { c = cfg[i]; printf "| %s |", c
        for (k = 1; k <= nd; k++) printf " %s [%s] |", tok[c, L, dep[k]], ex[c, L, dep[k]]; printf "\n" } }
  }' "$TSV"
