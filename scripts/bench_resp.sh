#!/usr/bin/env bash
# Side-by-side RESP benchmark on this machine, in one run: redis-server with appendfsync always
# (fsync before every reply, like Triarch) against a 3-node Triarch cluster (leaderless, N=3, W=2,
# R=2), both driven by the same redis-benchmark invocation. Prints each round and the medians.
#
# Usage: scripts/bench_resp.sh            (builds the release binary first)
# Knobs: ROUNDS=3 N=200000 CLIENTS=50 SIZE=100 PIPELINE=1
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"; N="${N:-200000}"; CLIENTS="${CLIENTS:-50}"; SIZE="${SIZE:-100}"; PIPELINE="${PIPELINE:-1}"
cargo build --release -p triarch-cli -q
BIN=target/release/triarch
WORK="$(mktemp -d /tmp/triarch-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

bench() { # bench PORT -> "set_rps get_rps set_p50 get_p50"
  redis-benchmark -p "$1" -t set,get -n "$N" -c "$CLIENTS" -d "$SIZE" -P "$PIPELINE" -q 2>&1 | tr '\r' '\n' |
    awk '/^SET:.*per second/ {s=$2; sp=$(NF-1)} /^GET:.*per second/ {g=$2; gp=$(NF-1)} END {print s, g, sp, gp}' | sed 's/p50=//g'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

RPORT=$((30000 + RANDOM % 5000))
redis-server --port "$RPORT" --dir "$WORK" --appendonly yes --appendfsync always --save "" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
TBASE=$((26000 + RANDOM % 6000)) # below 32768: outside the ephemeral ports
"$BIN" up --nodes 3 --dir "$WORK/triarch" --base-port "$TBASE" >"$WORK/up.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do grep -q "Ctrl-C" "$WORK/up.log" 2>/dev/null && redis-cli -p "$RPORT" PING >/dev/null 2>&1 && break; sleep 0.1; done

printf '%-34s %10s %10s %9s %9s\n' system "SET/s" "GET/s" "SET p50" "GET p50"
: >"$WORK/r.txt"; : >"$WORK/t.txt"
for round in $(seq 1 "$ROUNDS"); do
  r=$(bench "$RPORT"); echo "$r" >>"$WORK/r.txt"
  t=$(bench "$TBASE"); echo "$t" >>"$WORK/t.txt"
  printf '%-34s %10s %10s %9s %9s\n' "redis appendfsync=always (r$round)" $r
  printf '%-34s %10s %10s %9s %9s\n' "triarch 3 nodes N3 W2 R2 (r$round)" $t
done
for who in r t; do
  name=$([ $who = r ] && echo "redis appendfsync=always MEDIAN" || echo "triarch 3 nodes MEDIAN")
  printf '%-34s %10s %10s %9s %9s\n' "$name" \
    "$(cut -d' ' -f1 "$WORK/$who.txt" | median)" "$(cut -d' ' -f2 "$WORK/$who.txt" | median)" \
    "$(cut -d' ' -f3 "$WORK/$who.txt" | median)" "$(cut -d' ' -f4 "$WORK/$who.txt" | median)"
done
