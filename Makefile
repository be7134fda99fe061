# Castellan. `make demo` runs the main job end to end; `make test` runs every test.
GO      ?= go
BIN     := bin/castellan
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/castellan-dev/castellan/internal/cli.Version=$(VERSION)

.PHONY: all build demo test test-short check fmt vet fixtures examples bench bench-users fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/castellan

## demo: the main job end to end on the embedded defaults (CRM on loopback, policy, sandboxed task)
demo: build
	./$(BIN) demo

## test: every test, with the race detector (needs only Go; Wasm fixtures are committed)
test:
	$(GO) test -race -count=1 ./...

test-short:
	$(GO) test -short ./...

## check: formatting, vet, and go.mod tidiness
check: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) mod tidy -diff

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## fixtures: rebuild the hostile-module fixtures from their .wat source (needs wabt)
fixtures:
	for f in runtime/testdata/*.wat; do wat2wasm "$$f" -o "$${f%.wat}.wasm"; done

## examples: rebuild the example tasks in every language from source (toolchains: scripts/ci-toolchains.sh)
examples:
	./examples/build-all.sh

## bench: the benchmarks recorded in docs/benchmarks.md (the real-process ones build the binary themselves)
bench: build
	scripts/bench.sh

## bench-users: only the user-facing figures (real processes, the crm-lookup example)
bench-users: build
	BENCH_ONLY=users scripts/bench.sh

## fuzz: every fuzz target in the repository for a short while (FUZZTIME=30s by default)
FUZZTIME ?= 30s
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

clean:
	rm -rf bin
