#!/usr/bin/env bash
# Writes the docs/kv-cache.md figure (SVG, by hand) from scripts/kv-cache-table.sh's results.tsv:
# left, perplexity against KV bytes per token for each format; right, decode tokens/s against context depth.
set -euo pipefail
awk -F'\t' '
function x1(b) { return 60 + b / 3200 * 330 }
function y1(p) { return 300 - (p - pmin) / (pmax - pmin) * 250 }
function x2(i) { return 490 + i * 150 }
function y2(t) { return 300 - t / tmax * 250 }
NR > 1 && $1 == "format" { n++; name[n] = $2; b[n] = $3; p[n] = $4; t[n,0] = $6; t[n,1] = $7; t[n,2] = $8
  if (pmin == "" || $4 < pmin) pmin = $4; if (pmax == "" || $4 > pmax) pmax = $4
  for (i = 0; i < 3; i++) if (t[n,i] > tmax) tmax = t[n,i] }
END {
  pad = (pmax - pmin) * 0.15 + 0.01; pmin -= pad; pmax += pad; tmax *= 1.1
  split("#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2", col, " ")
  print "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"360\" font-family=\"sans-serif\" font-size=\"11\">"
  print "<rect width=\"900\" height=\"360\" fill=\"white\"/>"
  # left panel axes
  print "<text x=\"60\" y=\"25\" font-size=\"13\">perplexity (data/valid.txt, ctx 256) vs KV bytes per token</text>"
  print "<line x1=\"60\" y1=\"300\" x2=\"390\" y2=\"300\" stroke=\"black\"/><line x1=\"60\" y1=\"50\" x2=\"60\" y2=\"300\" stroke=\"black\"/>"
  for (v = 0; v <= 3000; v += 500) printf "<text x=\"%.1f\" y=\"315\" text-anchor=\"middle\">%d</text>\n", x1(v), v
  for (k = 0; k <= 4; k++) { v = pmin + (pmax - pmin) * k / 4; printf "<text x=\"55\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", y1(v) + 4, v }
  print "<text x=\"225\" y=\"335\" text-anchor=\"middle\">KV bytes per token (6 layers, K+V)</text>"
  for (i = 1; i <= n; i++) {
    printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", x1(b[i]), y1(p[i]), col[(i - 1) % 7 + 1]
    printf "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n", x1(b[i]) + 6, y1(p[i]) - 4 - (i % 2) * 9, col[(i - 1) % 7 + 1], name[i]
  }
  # right panel: decode speed by depth
  print "<text x=\"490\" y=\"25\" font-size=\"13\">decode tokens/s (tg32) at context depth</text>"
  print "<line x1=\"490\" y1=\"300\" x2=\"800\" y2=\"300\" stroke=\"black\"/><line x1=\"490\" y1=\"50\" x2=\"490\" y2=\"300\" stroke=\"black\"/>"
  split("512 2048 8192", d, " ")
  for (k = 0; k < 3; k++) printf "<text x=\"%.1f\" y=\"315\" text-anchor=\"middle\">%s</text>\n", x2(k), d[k + 1]
  for (k = 0; k <= 4; k++) { v = tmax * k / 4; printf "<text x=\"485\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", y2(v) + 4, v }
  m = 0
  for (i = 1; i <= n; i++) {
    if (t[i,0] == "") continue
    m++
    printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", col[(i - 1) % 7 + 1]
    for (k = 0; k < 3; k++) printf "%.1f,%.1f ", x2(k), y2(t[i,k])
    print "\"/>"
    printf "<text x=\"805\" y=\"%.1f\" fill=\"%s\">%s</text>\n", 60 + m * 14, col[(i - 1) % 7 + 1], name[i]
  }
  print "</svg>"
}' "$1"
