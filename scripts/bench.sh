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
# alternate: COUNT separate runs of one test binary, so that the sub-benchmarks compared with
# each other (Wasm and native, the transports) take turns instead of running COUNT times each
# in a row while the machine's load drifts.
alternate() { # name package pattern benchtime
  go test -c -o "$out/$1.test" "$2"
  (cd "$2" && for _ in $(seq "$COUNT"); do "$out/$1.test" -test.run '^$' -test.bench "$3" -test.benchmem -test.benchtime "$4"; done) | tee "$out/$1.txt" >/dev/null
  echo "## $1"; "$benchstat" "$out/$1.txt"; echo
}
# What users meet first (docs/benchmarks.md, top): real processes, then the shipped example's
# per-job CPU. BENCH_ONLY=users stops after these.
alternate processes ./internal/e2e/ 'BenchmarkProcesses' 2000x
alternate crm-job ./examples/crm-lookup/e2e/ 'BenchmarkCRMLookupJob' 300x
alternate mcp ./internal/mcp/ 'BenchmarkToolCallPaired' 300x
alternate approver ./internal/e2e/ 'BenchmarkApproverLatency' 300x
[ "${BENCH_ONLY:-}" = users ] && { echo "raw results in $out"; exit 0; }
# Micro-benchmarks.
run job ./runtime/ 'BenchmarkJob$' 2000x
run http ./runtime/ 'BenchmarkHTTPCall$' 5000x
run http-interleaved ./runtime/ 'BenchmarkHTTPCallInterleaved$' 5000x
run approval ./approval/ 'Verify|Sign' 
run compile ./runtime/ 'BenchmarkCompile$' 5x
run redact ./redact/ 'Benchmark' 
run languages ./examples/crm-lookup/e2e/ 'BenchmarkPerJobOverhead' 200x
alternate e2e ./internal/e2e/ 'BenchmarkEndToEnd' 3000x
alternate transports ./internal/natsq/ 'BenchmarkTransports' 10000x
alternate nats-process ./internal/natsq/ 'BenchmarkNATSServerProcess' 10000x
run plugins ./internal/tasks/ 'BenchmarkPluginAppearToFirstJob' 20x
run observability ./internal/metrics/ 'BenchmarkPerJobObservability' 
alternate control-plane ./internal/server/ 'BenchmarkSubmitLeaseComplete' 2000x
run audit-hash ./internal/server/api/ 'BenchmarkAuditHash' 2000x
run audit-append ./internal/server/ 'BenchmarkAuditAppend' 300x
alternate worker-dispatch ./internal/worker/ 'BenchmarkDispatch' 1000x
run replay-store ./approval/ 'BenchmarkSQLiteReplayStore' 2000x
echo "raw results in $out"
