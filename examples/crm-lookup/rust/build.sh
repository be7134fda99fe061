#!/bin/sh
# Builds crm-lookup.wasm from crm_lookup.rs and the Rust SDK (sdk/rust) with Debian's rustc
# 1.63 and its wasm32-wasi std (scripts/ci-toolchains.sh), no cargo registry needed: a WASI
# reactor (cdylib) exporting run, _initialize and memory, importing only castellan_v1 and
# the allowed WASI subset. RUSTC overrides the compiler; the default is Debian's, by full
# path, because a rustup rustc earlier on PATH usually has no wasm targets.
set -eu
cd "$(dirname "$0")"
RUSTC=${RUSTC:-/usr/bin/rustc}
SDK=../../../sdk/rust
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$RUSTC" --edition 2021 --crate-type rlib --crate-name castellan --target wasm32-wasi \
	-C opt-level=s -C panic=abort -o "$OUT/libcastellan.rlib" "$SDK/src/lib.rs"
"$RUSTC" --edition 2021 --crate-type cdylib --crate-name crm_lookup --target wasm32-wasi \
	-C opt-level=s -C panic=abort -C strip=symbols -C link-arg=--strip-all \
	--extern castellan="$OUT/libcastellan.rlib" -L "$OUT" \
	-o crm-lookup.wasm crm_lookup.rs
