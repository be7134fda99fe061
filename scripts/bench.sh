#!/usr/bin/env bash
# Runs the benchmarks recorded in docs/benchmarks.md and prints benchstat summaries (medians
# with confidence intervals). Pairs that are compared (sandbox vs native, pool vs cold, cache
# warm vs cold, with vs without audit) run in the same process, one after the other, so that
# their ratio is measured on the same machine state. COUNT=6 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-6}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
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
run languages ./examples/crm-lookup/e2e/ 'BenchmarkPerJobOverhead' 200x
run e2e ./internal/e2e/ 'BenchmarkEndToEnd' 3000x
run transports ./internal/natsq/ 'BenchmarkTransports' 5000x
run plugins ./internal/tasks/ 'BenchmarkPluginAppearToFirstJob' 20x
run observability ./internal/metrics/ 'BenchmarkPerJobObservability' 
echo "raw results in $out"
