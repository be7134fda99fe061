#!/bin/sh
# Builds crm-lookup.wasm from crm_lookup.ts and the AssemblyScript SDK (sdk/assemblyscript)
# with AssemblyScript 0.28, installed locally by `npm install --prefix sdk/assemblyscript`
# (scripts/ci-toolchains.sh). The module exports run and memory and imports only
# castellan_v1: --use abort=... routes AssemblyScript's abort to the SDK's, which fails the
# job through the host instead of importing env.abort (refused by the sandbox).
set -eu
cd "$(dirname "$0")"
SDK=../../../sdk/assemblyscript
ASC=${ASC:-$SDK/node_modules/.bin/asc}
if [ ! -x "$ASC" ]; then
	echo "build.sh: $ASC not found; run: npm install --prefix sdk/assemblyscript" >&2
	exit 1
fi
"$ASC" crm_lookup.ts --outFile crm-lookup.wasm --optimize --noAssert \
	--use "abort=$SDK/assembly/index/abort"
