#!/usr/bin/env bash
# The quinn ceiling's load against this server; prints the load's JSON line.
#   bench/sans-io-ceiling/run.sh --members 5000 --messages 200 --rate 10 [--batch 16]
# Needs ../shared/peers/quinn-ceiling (its load and its build).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CEILING=${CEILING:-$HERE/../../../shared/peers/quinn-ceiling}
N=1000 M=2000 R=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --members) N=$2; shift 2 ;;
    --messages) M=$2; shift 2 ;;
    --rate) R=$2; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
# The project's target directory: the gateway it builds on is compiled there already.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/../../target}
cargo build --release --quiet --manifest-path "$HERE/Cargo.toml"
SERVER="$CARGO_TARGET_DIR/release/sans-io-ceiling"
LOAD_TARGET=${XDG_CACHE_HOME:-$HOME/.cache}/quinn-ceiling-target
CARGO_TARGET_DIR=$LOAD_TARGET cargo build --release --quiet --manifest-path "$CEILING/Cargo.toml"
LOAD="$LOAD_TARGET/release/quinn-ceiling"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d)
"$SERVER" --members "$N" --messages "$M" --rate "$R" --cert-out "$TMP/cert.der" ${EXTRA[@]+"${EXTRA[@]}"} \
  >"$TMP/server.out" 2>"$TMP/server.err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; sed "s/^/  /" "$TMP/server.err" >&2; rm -rf "$TMP"' EXIT
ADDR=""
for _ in $(seq 1 200); do
  ADDR=$(sed -n 's/^READY //p' "$TMP/server.out")
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "run.sh: server did not report READY" >&2; exit 1; }
"$LOAD" load --server "$ADDR" --members "$N" --messages "$M" --rate "$R" --cert "$TMP/cert.der" --server-pid "$PID" \
  | sed 's/"peer":"quinn-raw"/"peer":"sans-io"/'
for _ in $(seq 1 100); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
