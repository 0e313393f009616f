#!/usr/bin/env bash
# The whole test suite from a fresh clone: lint, build the binaries the CLI tests drive,
# run every test (unit tests, then end-to-end tests over real QUIC on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs), then run this again" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
