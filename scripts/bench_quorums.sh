#!/usr/bin/env bash
# What quorum sizes cost, on one machine: a 3-node Triarch cluster (`triarch up --nodes 3
# --no-keyspaces`, release build) with three leaderless last-writer-wins keyspaces, q1, q2 and
# q3, all N=3, with W=R=1, 2 and 3. redis-benchmark drives one node (n1, which, with N=3 on three
# nodes, is a replica of every key and coordinates every request) with SET and GET of random keys
# of each keyspace, through its arbitrary-command form:
#   redis-benchmark -p PORT -n N -c 50 -r KEYS SET q1:__rand_int__ <SIZE-byte value>
#   redis-benchmark -p PORT -n N -c 50 -r KEYS GET q1:__rand_int__
# (`-t set,get` would use redis-benchmark's own `key:` prefix, i.e. the `default` keyspace). A
# SET is acknowledged once W replicas have it on disk; a GET asks all three replicas and answers
# after R replies. Rounds are interleaved (round 1: q1 SET, q1 GET, q2 SET, ..., q3 GET; then
# round 2 ...), so that the machine's drifting fsync latency spreads over every configuration.
# GETs follow the SETs of their round, so most keys they ask for exist (a GET of a missing key
# costs the same quorum read and answers nil).
# Prints ops/s, p50 and p99 latency per round and (W, op), then the medians over the rounds,
# and the quorum failures each keyspace counted (any would mean some requests answered errors,
# which redis-benchmark does not tell apart from values).
#
# Usage: scripts/bench_quorums.sh
# Knobs: ROUNDS=3 N=100000 (requests per run) CLIENTS=50 SIZE=100 KEYS=100000 KEEP=1
#        SKIP_BUILD=1 TRIARCH_BIN=path (a prebuilt binary; implies nothing is built)
# Needs redis-benchmark, redis-cli (apt-get install redis-tools) and python3. Every node is a
# child of one `triarch up`, stopped by its PID on exit (and, should `up` not stop them, by the
# PIDs it wrote to cluster.json). Ports stay below 32768.
set -uo pipefail
ROUNDS="${ROUNDS:-3}"; N="${N:-100000}"; CLIENTS="${CLIENTS:-50}"; SIZE="${SIZE:-100}"
KEYS="${KEYS:-100000}"
source "$(dirname "$0")/lib.sh"
bench_init bench-quorums redis-benchmark redis-cli python3
bench_up --nodes 3 --no-keyspaces

for q in 1 2 3; do
  out=$(redis-cli -p "$TBASE" TRIARCH.KEYSPACE CREATE "q$q" MODEL leaderless N 3 W "$q" R "$q")
  [ "$out" = OK ] || { echo "bench_quorums: creating q$q answered: $out"; exit 1; }
done
# Every node must know every keyspace before the load (a node that does not know q1 yet would
# take q1:... for a key of `default`).
for i in 1 2 3; do
  for q in 1 2 3; do
    ok=""
    for _ in $(seq 1 200); do
      if redis-cli -p $((TBASE + i - 1)) INFO | tr -d '\r' | grep -q "^keyspace_q$q:model=leaderless,n=3,r=$q,w=$q,"; then
        ok=1; break
      fi
      sleep 0.05
    done
    [ -n "$ok" ] || { echo "bench_quorums: n$i does not know q$q"; exit 1; }
  done
done

VALUE=$(head -c "$SIZE" /dev/zero | tr '\0' v)
RESULTS="$WORK/results.csv"
: >"$RESULTS"
# run ROUND Q OP: one redis-benchmark run; appends "round,w,op,rps,p50,p99" to $RESULTS.
run() {
  local round="$1" q="$2" op="$3" csv="$WORK/r$1-q$2-$3.csv"
  local cmd=(GET "q$q:__rand_int__")
  [ "$op" = SET ] && cmd=(SET "q$q:__rand_int__" "$VALUE")
  redis-benchmark -h 127.0.0.1 -p "$TBASE" -n "$N" -c "$CLIENTS" -r "$KEYS" --csv "${cmd[@]}" \
    >"$csv" 2>"$csv.err"
  python3 - "$round" "$q" "$op" "$csv" >>"$RESULTS" <<'PY'
import csv, sys
round_, q, op, path = sys.argv[1:]
rows = [r for r in csv.reader(open(path)) if r and r[0] != "test"]
if not rows:
    sys.stderr.write(f"bench_quorums: redis-benchmark failed: {open(path + '.err').read()[-300:]}\n")
    sys.exit(0)
test, rps, avg, mn, p50, p95, p99, mx = rows[0][:8]
print(f"{round_},{q},{op},{float(rps):.0f},{float(p50):.3f},{float(p99):.3f}")
PY
  tail -1 "$RESULTS" | awk -F, -v r="$round" -v q="$q" -v op="$op" \
    '$1 == r && $2 == q && $3 == op { printf "round %s  W=R=%s  %-3s %10s ops/s  p50 %6s ms  p99 %6s ms\n", r, q, op, $4, $5, $6 }'
}

# counter FIELD Q: keyspace qQ's FIELD (reads, writes, quorum_failures...) summed over the nodes.
counter() {
  for i in 1 2 3; do
    redis-cli -p $((TBASE + i - 1)) INFO | tr -d '\r' |
      sed -n "s/^keyspace_q$2:.*,$1=\([0-9]*\),.*/\1/p"
  done | awk '{ s += $1 } END { print s + 0 }'
}

echo "# bench_quorums.sh $(date -u +%FT%TZ): $(nproc) cores; 3 nodes, leaderless N=3; $CLIENTS clients, $N requests per run, $SIZE B values, $KEYS keys, $ROUNDS rounds, all through n1"
for round in $(seq 1 "$ROUNDS"); do
  for q in 1 2 3; do
    for op in SET GET; do
      run "$round" "$q" "$op"
    done
  done
done

echo
echo "| keyspace | W = R | op | ops/s (median) | p50 ms | p99 ms | ops/s per round |"
echo "|---|---|---|---|---|---|---|"
python3 - "$RESULTS" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
for q in "123":
    for op in ("SET", "GET"):
        rs = [r for r in rows if r[1] == q and r[2] == op]
        if not rs:
            print(f"| q{q} | {q} | {op} | (no result) | | | |")
            continue
        med = lambda i: statistics.median(float(r[i]) for r in rs)
        per_round = ", ".join(f"{int(r[3]):,}" for r in rs)
        print(f"| q{q} | {q} | {op} | {med(3):,.0f} | {med(4):.3f} | {med(5):.3f} | {per_round} |")
PY
echo
# Every request must have been a real read or write of the keyspace (ROUNDS x N each), none
# failed: redis-benchmark counts error replies as answers.
for q in 1 2 3; do
  echo "# q$q: reads $(counter reads "$q"), writes $(counter writes "$q"), quorum failures $(counter quorum_failures "$q") (expected $((ROUNDS * N)) reads and writes, 0 failures)"
done
