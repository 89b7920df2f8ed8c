#!/usr/bin/env bash
# Installs the public-domain King James Bible from Debian (bible-kjv-text: "The copyright for the King James Version
# text of the Bible is expired"; the `bible` reader comes with bible-kjv) and writes the training corpus:
#   data/train.txt  every chapter except every 20th
#   data/valid.txt  every 20th chapter (held out, about 5 %)
# One verse per line without its number; chapters separated by a blank line.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bible >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y bible-kjv bible-kjv-text
fi
mkdir -p data
bible -l0 'Gen1:1-Rev22:21' | awk '
  /^[A-Za-z0-9 ]+ [0-9]+$/ && !/^  / { chapter++; next }      # "Genesis 1" headers start a chapter
  /^ *$/ { next }
  {
    sub(/^ +[0-9]+ /, "")
    out = (chapter % 20 == 0) ? "data/valid.txt.tmp" : "data/train.txt.tmp"
    if (chapter != last[out]) { if (last[out] != "") print "" > out; last[out] = chapter }
    print > out
  }'
mv data/train.txt.tmp data/train.txt
mv data/valid.txt.tmp data/valid.txt
wc -c data/train.txt data/valid.txt
