#!/bin/sh
# build-all.sh rebuilds every example task from source: crm-lookup in Go, Rust, C and
# AssemblyScript. The Makefile's `examples` target calls it. Toolchains:
# scripts/ci-toolchains.sh. A missing toolchain is an error here (CI must build them all);
# set SKIP_MISSING=1 to skip a language whose toolchain is absent instead.
set -eu
cd "$(dirname "$0")"

have() {
	if "$@" >/dev/null 2>&1; then return 0; fi
	if [ "${SKIP_MISSING:-0}" = 1 ]; then
		echo "build-all.sh: skipping: '$*' failed (toolchain missing)" >&2
		return 1
	fi
	echo "build-all.sh: '$*' failed: install the toolchains with scripts/ci-toolchains.sh" >&2
	exit 1
}

echo "crm-lookup (Go)"
crm-lookup/build.sh
if have "${RUSTC:-/usr/bin/rustc}" --print target-libdir --target wasm32-wasi; then
	echo "crm-lookup (Rust)"
	crm-lookup/rust/build.sh
fi
if have "${CC:-clang}" --target=wasm32-wasi --version; then
	echo "crm-lookup (C)"
	crm-lookup/c/build.sh
fi
if have test -x ../sdk/assemblyscript/node_modules/.bin/asc; then
	echo "crm-lookup (AssemblyScript)"
	crm-lookup/assemblyscript/build.sh
fi
