#!/usr/bin/env bash
# The fan-out benchmark beside the peers (docs/BENCHMARKS.md): builds the gateway and
# chat-bench in release mode, then runs `chat-bench compare` with these arguments
# (none: every scenario once, on the default variants, with the peers in ../shared/peers).
#
#   scripts/bench.sh                          # the default set, a few minutes on 2 cores
#   scripts/bench.sh --runs 3 --jsonl results.jsonl
#   scripts/bench.sh saturate-10k --variants embedded --no-peers
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustc --print target-libdir --target wasm32-wasip2 2>/dev/null | xargs test -d; then
    rustup target add wasm32-wasip2
fi
command -v redis-server >/dev/null || echo "note: redis-server not found: the redis variants will fail" >&2
cargo build --release --locked -p chat-gateway -p chat-bench
exec target/release/chat-bench compare "$@"
