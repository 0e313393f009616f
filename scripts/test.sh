#!/usr/bin/env bash
# The whole test suite from a fresh clone: lint, build the binaries and the test plugins
# the end-to-end tests drive, run every test (unit, plugin SDK, end-to-end over real QUIC).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs), then run this again" >&2
    exit 1
fi
# Plugins are wasm32-wasip2 components; a rust-toolchain.toml does not install targets here.
if ! rustc --print target-libdir --target wasm32-wasip2 2>/dev/null | xargs test -d; then
    rustup target add wasm32-wasip2
fi

# The Redis store's tests start redis-server processes of their own on free ports.
if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq redis-server
    else
        echo "redis-server not found: install it (e.g. apt-get install redis-server), then run this again" >&2
        exit 1
    fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
test_plugins=()
for dir in tests/plugins/*/; do
    test_plugins+=(-p "test-plugin-$(basename "$dir")")
done
cargo build --release --locked --target wasm32-wasip2 "${test_plugins[@]}"
cargo test --workspace --locked "$@"
