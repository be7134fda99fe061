#!/bin/sh
# Builds crm-lookup.wasm, a WASI reactor that exports `run` (from the Castellan Go SDK),
# `_initialize` and `memory`, and imports only castellan_v1 and the allowed WASI subset.
set -eu
cd "$(dirname "$0")"
GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags=-s -o crm-lookup.wasm .
