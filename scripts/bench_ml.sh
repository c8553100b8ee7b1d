#!/usr/bin/env bash
# Multi-leader replication lag under load, on one machine:
#   a 6-node Triarch cluster in 3 regions (`triarch up --nodes 6 --regions 3`: r1 = n1,n4;
#   r2 = n2,n5; r3 = n3,n6), a multi-leader last-writer-wins keyspace `key` (N=2 voters per
#   region; redis-benchmark's keys are key:NNNNNNNNNNNN), and redis-benchmark SET against the
#   leader of r1's group. Every SET is acknowledged once a majority of r1's group has it on disk;
#   r1's leader ships the changes to r2 and r3 asynchronously. Meanwhile INFO on that leader is
#   sampled every SAMPLE_MS for `multileader_key_to_r2/r3` (lag_entries, lag_ms).
#   A second run does SADD on the canonical `cart` (multi-leader add-wins set) the same way:
#   `SADD cart:__rand_int__ item:__rand_int__` over CARTS carts (-r), so carts stay small; one
#   hot set that grows without bound would measure its record's rewrite (every SADD re-encodes
#   the whole set) rather than replication.
# Prints, per run: ops/s and latency percentiles (redis-benchmark's), then the lag toward each
# destination region during the load (median and max of the samples) and how long the lag took to
# drain after the load stopped.
#
# Usage: scripts/bench_ml.sh
# Knobs: N=100000 (requests per run) CLIENTS=50 SIZE=100 KEYS=100000 CARTS=10000 SAMPLE_MS=100 KEEP=1
#        SKIP_BUILD=1 TRIARCH_BIN=path (a prebuilt binary; implies nothing is built)
# Needs redis-benchmark, redis-cli (apt-get install redis-tools) and python3. Every node is a
# child of one `triarch up`, stopped by its PID on exit. Ports stay below 32768.
set -uo pipefail
N="${N:-100000}"; CLIENTS="${CLIENTS:-50}"; SIZE="${SIZE:-100}"; KEYS="${KEYS:-100000}"
SAMPLE_MS="${SAMPLE_MS:-100}"; CARTS="${CARTS:-10000}"
SAMPLER=""
BENCH_ON_EXIT='[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null'
source "$(dirname "$0")/lib.sh"
bench_init bench-ml redis-benchmark redis-cli python3
bench_up --nodes 6 --regions 3
[ "$(redis-cli -p "$TBASE" TRIARCH.KEYSPACE CREATE key MODEL multi-leader N 2 MERGE lww)" = OK ] || exit 1

# leader_of KEYSPACE: sets LEADER to r1's leader of KEYSPACE's group once both r1 nodes (n1, n4)
# name the same one, and every node of the other regions names some leader.
leader_of() {
  local seen i
  LEADER=""
  for _ in $(seq 1 300); do
    seen=$(for i in 1 4; do redis-cli -p $((TBASE + i - 1)) INFO | tr -d '\r' |
      sed -n "s/^keyspace_$1:.*region=r1,role=[a-z]*,leader=n\([0-9][0-9]*\).*/\1/p"; done)
    others=$(for i in 2 3 5 6; do redis-cli -p $((TBASE + i - 1)) INFO | tr -d '\r' |
      grep -c "^keyspace_$1:.*leader=n[0-9]"; done | grep -c 1)
    if [ "$(echo $seen | wc -w)" = 2 ] && [ "$(echo "$seen" | sort -u | wc -l)" = 1 ] && [ "$others" = 4 ]; then
      LEADER=$(echo "$seen" | head -1); return 0
    fi
    sleep 0.1
  done
  echo "bench_ml: keyspace $1 has no leader in every region"; exit 1
}

# run NAME KEYSPACE redis-benchmark-args...: one measured run with lag sampling.
run() {
  local name="$1" ks="$2"; shift 2
  leader_of "$ks"
  local port=$((TBASE + LEADER - 1)) samples="$WORK/$name.lag" csv="$WORK/$name.csv"
  log "$name: redis-benchmark against r1's leader n$LEADER (RESP $port)"
  : >"$samples"
  (
    trap - EXIT   # the sampler must never run the script's cleanup
    while :; do
      redis-cli -p "$port" INFO 2>/dev/null | tr -d '\r' |
        sed -n "s/^multileader_${ks}_to_\(r[0-9]*\):.*lag_entries=\([0-9]*\),lag_ms=\([0-9]*\).*/\1 \2 \3/p" |
        while read -r to e ms; do echo "$(date +%s.%N) $to $e $ms"; done >>"$samples"
      sleep "$(awk -v ms="$SAMPLE_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    done
  ) &
  SAMPLER=$!
  local started ended
  started=$(date +%s.%N)
  redis-benchmark -h 127.0.0.1 -p "$port" -n "$N" -c "$CLIENTS" -r "$KEYS" -d "$SIZE" --csv "$@" \
    >"$csv" 2>"$csv.err"
  ended=$(date +%s.%N)
  # Keep sampling until every destination has caught up (lag 0), at most 60 s.
  local drained=""
  for _ in $(seq 1 600); do
    if [ "$(redis-cli -p "$port" INFO | tr -d '\r' | grep "^multileader_${ks}_to_" | grep -vc 'lag_entries=0,')" = 0 ]; then
      drained=$(date +%s.%N); break
    fi
    sleep 0.1
  done
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=""
  python3 - "$name" "$csv" "$samples" "$started" "$ended" "${drained:-}" "$LEADER" <<'PY'
import csv, statistics, sys
name, csv_path, samples_path, started, ended, drained, leader = sys.argv[1:]
started, ended = float(started), float(ended)
rows = [r for r in csv.reader(open(csv_path)) if r and r[0] != "test"]
if not rows:
    print(f"{name}: redis-benchmark failed: " + open(csv_path + ".err").read()[-300:])
    sys.exit(0)
test, rps, avg, mn, p50, p95, p99, mx = rows[0][:8]
print(f"{name}: {test} to r1's leader n{leader}: {float(rps):,.0f} ops/s; latency ms avg {avg} p50 {p50} p95 {p95} p99 {p99} max {mx}")
by = {}
for line in open(samples_path):
    t, to, e, ms = line.split()
    if started <= float(t) <= ended:
        by.setdefault(to, []).append((int(e), int(ms)))
for to, s in sorted(by.items()):
    es, mss = [x[0] for x in s], [x[1] for x in s]
    print(f"  lag r1 -> {to} during the load ({len(s)} samples): entries median {statistics.median(es):.0f} max {max(es)}; "
          f"ms median {statistics.median(mss):.0f} max {max(mss)}")
if drained:
    print(f"  every destination held every change {float(drained) - ended:.2f} s after the load stopped")
else:
    print("  the lag had not drained 60 s after the load stopped")
PY
}

echo "# bench_ml.sh $(date -u +%FT%TZ): $(nproc) cores; 6 nodes, 3 regions, N=2 per region; $CLIENTS clients, $N requests, $SIZE B values"
run set-lww key -t set
KEYS="$CARTS" run sadd-cart cart SADD cart:__rand_int__ item:__rand_int__
echo "# the region counters afterwards:"
for i in 1 2 3 4 5 6; do
  redis-cli -p $((TBASE + i - 1)) INFO | tr -d '\r' | grep -E '^multileader_(key|cart):' | sed "s/^/# n$i /"
done
