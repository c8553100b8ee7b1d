#!/usr/bin/env bash
# Real clients against a real local cluster: redis-cli, redis-py and redis-benchmark, unmodified.
# Usage: scripts/compat.sh [path/to/triarch]   (default: target/debug/triarch)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/debug/triarch}"
[ -x "$BIN" ] || { echo "compat: $BIN not built (run the tests first)"; exit 1; }
for tool in redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null || { echo "compat: $tool missing (.ci/run installs it)"; exit 1; }
done
python3 -c 'import redis' 2>/dev/null || { echo "compat: python package redis missing"; exit 1; }

DIR="$(mktemp -d /tmp/triarch-compat.XXXXXX)"
BASE=$((21000 + RANDOM % 11000)) # below 32768: outside the ephemeral ports
"$BIN" up --nodes 3 --dir "$DIR" --base-port "$BASE" >"$DIR/up.log" 2>&1 &
UP=$!
cleanup() {
  kill -INT "$UP" 2>/dev/null || true
  wait "$UP" 2>/dev/null || true
  if pgrep -f "serve --config $DIR" >/dev/null; then
    echo "compat: node processes left behind"; pkill -9 -f "serve --config $DIR" || true; exit 1
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
# `up` prints "Ctrl-C" once every node answers and every link is up.
for _ in $(seq 1 300); do
  grep -q "Ctrl-C" "$DIR/up.log" 2>/dev/null && break
  kill -0 "$UP" 2>/dev/null || { cat "$DIR/up.log"; exit 1; }
  sleep 0.1
done
grep -q "Ctrl-C" "$DIR/up.log" || { echo "compat: cluster did not come up"; cat "$DIR/up.log"; exit 1; }
P1=$BASE; P3=$((BASE + 2))

echo "== redis-cli"
[ "$(redis-cli -p "$P1" SET cli:k v)" = "OK" ]
[ "$(redis-cli -p "$P3" GET cli:k)" = "v" ]
redis-cli -p "$P1" NOSUCH 2>&1 | grep -q "unknown command"
echo "redis-cli: ok"

echo "== redis-py"
python3 tests/compat/redis_py_smoke.py "$P1" "$P3"

echo "== redis-benchmark"
OUT="$(redis-benchmark -p "$P1" -t set,get -n "${BENCH_N:-20000}" -c 50 -d 100 -q 2>&1 | tr '\r' '\n' | grep -E '^(SET|GET):.*requests per second' || true)"
echo "$OUT"
[ "$(echo "$OUT" | grep -c 'requests per second')" = 2 ] || { echo "compat: redis-benchmark did not finish both tests"; exit 1; }
ERRORS="$(redis-cli -p "$P1" INFO | grep -c 'quorum_failures=[1-9]' || true)"
[ "$ERRORS" = 0 ] || { echo "compat: quorum failures during the benchmark"; exit 1; }

echo "== redis-benchmark on a primary-backup keyspace"
# redis-benchmark's SET/GET keys are `key:__rand_int__` (with -r: key:000000000042), so a
# primary-backup keyspace named `key` takes the whole benchmark; INCR of one balance key through
# a follower must end exactly at the number of requests (each applied once).
[ "$(redis-cli -p "$P1" TRIARCH.KEYSPACE CREATE key MODEL primary-backup)" = "OK" ]
for _ in $(seq 1 100); do  # until node 3 knows the new group's leader (INFO: leader=nK)
  redis-cli -p "$P3" INFO | grep -q '^keyspace_key:.*leader=n[0-9]' && break
  sleep 0.1
done
OUT="$(redis-benchmark -p "$P3" -t set,get -r 1000 -n "${BENCH_N:-20000}" -c 50 -d 100 -q 2>&1 | tr '\r' '\n' | grep -E '^(SET|GET):.*requests per second' || true)"
echo "$OUT"
[ "$(echo "$OUT" | grep -c 'requests per second')" = 2 ] || { echo "compat: redis-benchmark on a primary-backup keyspace did not finish"; exit 1; }
redis-benchmark -p "$P3" -n 5000 -c 50 -q INCR balance:bench 2>&1 | tr '\r' '\n' | grep 'requests per second'
[ "$(redis-cli -p "$P1" GET balance:bench)" = "5000" ] || { echo "compat: INCR count $(redis-cli -p "$P1" GET balance:bench), expected 5000"; exit 1; }
echo "compat: all clients ok"
