#!/bin/sh
# ci-toolchains.sh installs the guest toolchains the examples are built with, on a fresh
# Debian machine: clang + wasi-libc for C, Debian's rustc 1.63 with the wasm32-wasi std for
# Rust, wabt for .wat fixtures, and AssemblyScript 0.28 into a local directory (no global
# npm install), and Debian's chromium for the approval console's browser test. Run as root,
# or with sudo available.
#
# Usage: scripts/ci-toolchains.sh
# Afterwards: examples/build-all.sh rebuilds every example; the Go tests that rebuild from
# source find the tools by these same paths.
set -eu

cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
	SUDO=sudo
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
	clang lld wasi-libc libclang-rt-dev-wasm32 \
	rustc libstd-rust-dev-wasm32 \
	wabt curl openssl ca-certificates \
	chromium
# Node and npm: from Debian only when the machine has none (images often ship their own,
# which conflicts with Debian's nodejs package).
if ! command -v npm >/dev/null 2>&1; then
	$SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi

# AssemblyScript: pinned, local to sdk/assemblyscript so builds never depend on a global tool.
npm install --prefix sdk/assemblyscript --no-audit --no-fund
