#!/bin/sh
# Builds crm-lookup.wasm from crm_lookup.c and the C SDK (sdk/c): a WASI reactor exporting
# run, _initialize and memory, importing only castellan_v1 and the allowed WASI subset.
# Needs Debian's clang, lld, wasi-libc and libclang-rt-dev-wasm32 (scripts/ci-toolchains.sh).
set -eu
cd "$(dirname "$0")"
SDK=../../../sdk/c
${CC:-clang} --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
	-I "$SDK" crm_lookup.c "$SDK/castellan.c" \
	-Wl,--strip-all -o crm-lookup.wasm
