#!/usr/bin/env bash
# Runs every fuzz target in the repository for FUZZTIME each (30s by default). Targets are found
# from the source, so a new `func FuzzX` in any *_test.go is run without editing this script.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
n=0
while IFS=: read -r file name; do
  pkg="./$(dirname "$file")/"
  echo "== $name ($pkg)"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg"
  n=$((n + 1))
done < <(git ls-files '*_test.go' | xargs grep -Ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/func //' | sort -u)
echo "ran $n fuzz targets for $FUZZTIME each"
