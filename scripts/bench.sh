#!/usr/bin/env bash
# Runs the benchmarks recorded in docs/benchmarks.md and prints benchstat summaries (medians
# with confidence intervals). Pairs that are compared (sandbox vs native, pool vs cold, cache
# warm vs cold, with vs without audit) run in the same process, one after the other, so that
# their ratio is measured on the same machine state. COUNT=6 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-6}
out=${OUT:-$(mktemp -d)}
benchstat=${BENCHSTAT:-$(command -v benchstat || echo "$(go env GOPATH)/bin/benchstat")}
[ -x "$benchstat" ] || go install golang.org/x/perf/cmd/benchstat@latest

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version)"
run() { # name package pattern [benchtime]
  go test -run '^$' -bench "$3" -benchmem -count "$COUNT" ${4:+-benchtime "$4"} "$2" | tee "$out/$1.txt" >/dev/null
  echo "## $1"; "$benchstat" "$out/$1.txt"; echo
}
run job ./runtime/ 'BenchmarkJob$' 2000x
run http ./runtime/ 'BenchmarkHTTPCall$' 5000x
run compile ./runtime/ 'BenchmarkCompile$' 5x
run redact ./redact/ 'Benchmark'
[ -d internal/e2e ] && run e2e ./internal/e2e/ 'BenchmarkEndToEnd' 1x
[ -d examples/crm-lookup/e2e ] && run languages ./examples/crm-lookup/e2e/ 'Benchmark'
[ -d internal/natsq ] && run transports ./internal/natsq/ 'Benchmark' 1x
[ -d internal/tasks ] && run plugins ./internal/tasks/ 'Benchmark' 1x
[ -d audit ] && run audit ./audit/ 'Benchmark'
echo "raw results in $out"
