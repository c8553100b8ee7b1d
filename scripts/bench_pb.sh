#!/usr/bin/env bash
# Primary-backup benchmark, side by side in one run on this machine (issue 5):
#   * Triarch, 3 nodes (release build), a primary-backup keyspace: redis-benchmark SET/GET with
#     50 clients, connected to the keyspace's leader and, separately, to a follower (one
#     forwarding hop). Every SET is fsynced by the leader and a majority before its reply; every
#     GET is linearizable (ReadIndex).
#   * redis-server, one node, appendonly yes + appendfsync always: the same redis-benchmark.
#   * etcd, 3 members (Debian's etcd-server): puts and linearizable gets with 50 clients, driven by
#     the gRPC load generator that ../shared/bench/anchors.sh builds (etcd-load), to the leader.
# Prints one table (system | op | ops/s | p50 ms | p99 ms), medians of ROUNDS rounds; rounds
# interleave the systems so that the machine's drift (shared disk) hits all of them alike.
#
# Usage: scripts/bench_pb.sh
# Knobs: ROUNDS=3 N=100000 (requests per redis-benchmark run) CLIENTS=50 SIZE=100 KEYS=100000
#        ETCD_SECS=8 (measured seconds per etcd run, after 2 s of warm-up) KEEP=1 (keep the work dir)
#        ANCHORS_DIR=../shared/bench (where etcd-load's source is) SKIP_BUILD=1
#        TRIARCH_BIN=path (a prebuilt binary; implies nothing is built)
#        BASELINE_BIN=path (another triarch binary, e.g. a build of an earlier commit: a second
#        3-node cluster measured in the same interleaved rounds, rows "triarch pb BASELINE ...")
# Needs redis-server, redis-benchmark, redis-cli, etcd, etcdctl (apt-get install redis-server
# redis-tools etcd-server etcd-client) and, to build etcd-load once, protobuf-compiler and
# libprotobuf-dev. Every server is a child process on 127.0.0.1, stopped by PID on exit.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
ROUNDS="${ROUNDS:-3}"; N="${N:-100000}"; CLIENTS="${CLIENTS:-50}"; SIZE="${SIZE:-100}"
KEYS="${KEYS:-100000}"; ETCD_SECS="${ETCD_SECS:-8}"
ANCHORS_DIR="${ANCHORS_DIR:-$ROOT/../shared/bench}"
CACHE="${ANCHORS_CACHE:-$HOME/.cache/anchors}"
ETCD_LOAD="$CACHE/etcd-load-target/release/etcd-load"   # where anchors.sh builds it
BIN="${TRIARCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/triarch}"

log() { echo "[$(date +%T)] $*" >&2; }
for tool in redis-server redis-benchmark redis-cli etcd etcdctl python3; do
  command -v "$tool" >/dev/null || { echo "bench_pb: $tool missing (see the header for packages)"; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${TRIARCH_BIN:-}" ]; then
  log "cargo build --release -p triarch-cli"
  cargo build --release -p triarch-cli -q || exit 1
fi
[ -x "$BIN" ] || { echo "bench_pb: $BIN missing"; exit 1; }
if [ ! -x "$ETCD_LOAD" ]; then
  log "building etcd-load from $ANCHORS_DIR/etcd-load (once, as anchors.sh does)"
  (cd "$ANCHORS_DIR/etcd-load" && CARGO_TARGET_DIR="$CACHE/etcd-load-target" cargo build --release -q) ||
    { echo "bench_pb: etcd-load build failed (protobuf-compiler and libprotobuf-dev installed?)"; exit 1; }
fi

WORK="$(mktemp -d /tmp/triarch-bench-pb.XXXXXX)"
RESULTS="$WORK/results.tsv"; : >"$RESULTS"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ "${KEEP:-0}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() { # wait_port PORT TIMEOUT_S
  local deadline=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench_pb: port $1 did not open"; return 1
}
# row SYSTEM OP OPS P50 P99
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }
# The disk's fsync latency right now (it drifts from minute to minute on this machine).
fsync_probe() {
  python3 - "$WORK" <<'PY'
import os, sys, time
fd = os.open(os.path.join(sys.argv[1], "fsync-probe"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
lat = []
for _ in range(300):
    t = time.perf_counter(); os.write(fd, b"x" * 4096); os.fsync(fd); lat.append(time.perf_counter() - t)
lat.sort(); os.close(fd)
print("4 KiB append+fsync p50 %.3f ms, p99 %.3f ms" % (lat[150] * 1e3, lat[297] * 1e3))
PY
}
FSYNC_BEFORE=$(fsync_probe)

# redis-benchmark PORT SYSTEM: SET and GET rows from its CSV (rps, p50, p99).
rb() {
  local out="$WORK/rb.csv"
  redis-benchmark -h 127.0.0.1 -p "$1" -t set,get -n "$N" -c "$CLIENTS" -r "$KEYS" -d "$SIZE" --csv \
    >"$out" 2>"$out.err"
  tr -d '"' <"$out" | awk -F, -v s="$2" 'NR>1 && $2+0>0 { printf "%s\t%s\t%.0f\t%.3f\t%.3f\n", s, $1, $2, $5, $7 }' >>"$RESULTS"
  grep -q '^"GET"' "$out" || { row "$2" "SET/GET" FAILED - -; log "redis-benchmark on $1 failed: $(tail -2 "$out.err")"; }
}

# ---- redis-server, appendfsync always
# Ports stay below 32768, outside Linux's ephemeral range.
RPORT=$((20000 + RANDOM % 2000))
mkdir -p "$WORK/redis"
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes --appendfsync always \
  --save "" --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$RPORT" 20 || exit 1

# ---- Triarch: 3 nodes; keyspace `key` is primary-backup because redis-benchmark's keys are
# key:NNNNNNNNNNNN (with -r).
start_triarch() { # start_triarch BIN NAME BASE_PORT
  "$1" up --nodes 3 --dir "$WORK/$2" --base-port "$3" >"$WORK/$2-up.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do grep -q "Ctrl-C" "$WORK/$2-up.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "Ctrl-C" "$WORK/$2-up.log" || { echo "bench_pb: $2 did not come up"; cat "$WORK/$2-up.log"; exit 1; }
  [ "$(redis-cli -p "$3" TRIARCH.KEYSPACE CREATE key MODEL primary-backup)" = OK ] || exit 1
}
TBASE=$((22100 + RANDOM % 4000))
start_triarch "$BIN" triarch "$TBASE"
if [ -n "${BASELINE_BIN:-}" ]; then
  [ -x "$BASELINE_BIN" ] || { echo "bench_pb: $BASELINE_BIN missing"; exit 1; }
  BBASE=$((TBASE + 300))   # a cluster's ports span base..base+202
  start_triarch "$BASELINE_BIN" baseline "$BBASE"
fi
find_leader() { # find_leader [BASE_PORT]: sets LPORT (the leader of keyspace key, as all three
  # nodes agree), FPORT and LEADER
  local seen base="${1:-$TBASE}"
  LEADER=""
  for _ in $(seq 1 200); do
    seen=$(for i in 0 1 2; do redis-cli -p $((base + i)) INFO | tr -d '\r' |
      sed -n 's/^keyspace_key:.*leader=n\([0-9][0-9]*\).*/\1/p'; done)
    # all three nodes name the same leader
    if [ "$(echo $seen | wc -w)" = 3 ] && [ "$(echo "$seen" | sort -u | wc -l)" = 1 ]; then
      LEADER=$(echo "$seen" | head -1); break
    fi
    sleep 0.1
  done
  [ -n "$LEADER" ] || { echo "bench_pb: keyspace key has no leader"; exit 1; }
  LPORT=$((base + LEADER - 1))
  FPORT=$((base + LEADER % 3))   # the next node: a follower
}
find_leader
log "triarch: keyspace key led by n$LEADER (RESP $LPORT); follower on $FPORT"

# ---- etcd: 3 members, as anchors.sh starts them (fsync of the WAL before every ack)
E=$((27000 + RANDOM % 5000))
IC="e1=http://127.0.0.1:$((E + 11)),e2=http://127.0.0.1:$((E + 12)),e3=http://127.0.0.1:$((E + 13))"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd-e$i" \
    --listen-client-urls "http://127.0.0.1:$((E + i))" --advertise-client-urls "http://127.0.0.1:$((E + i))" \
    --listen-peer-urls "http://127.0.0.1:$((E + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((E + 10 + i))" \
    --initial-cluster "$IC" --initial-cluster-state new --initial-cluster-token "bench-pb-$$" \
    --logger zap --log-level warn >"$WORK/etcd-e$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do wait_port $((E + i)) 30 || { tail -5 "$WORK/etcd-e$i.log"; exit 1; }; done
EPS="http://127.0.0.1:$((E + 1)),http://127.0.0.1:$((E + 2)),http://127.0.0.1:$((E + 3))"
ELEADER=""
for _ in $(seq 1 100); do
  ELEADER=$(etcdctl --endpoints "$EPS" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
try:
    st = json.load(sys.stdin)
    print(next(e["Endpoint"] for e in st if e["Status"]["leader"] == e["Status"]["header"]["member_id"]))
except Exception:
    print("")')
  [ -n "$ELEADER" ] && break
  sleep 0.3
done
[ -n "$ELEADER" ] || { echo "bench_pb: etcd elected no leader"; exit 1; }
log "etcd $(etcd --version | awk '/etcd Version/ {print $3}') leader $ELEADER"

etcd_run() { # etcd_run MODE OP
  local line
  line=$("$ETCD_LOAD" --endpoints "$ELEADER" --mode "$1" --clients "$CLIENTS" --conns "$CLIENTS" \
    --secs "$ETCD_SECS" --warmup 2 --keys "$KEYS" --vsize "$SIZE" 2>>"$WORK/etcd-load.log" | grep '^RESULT')
  set -- "$2" $line
  if [ "${2:-}" = RESULT ]; then row "etcd 3 members" "$1" "$(printf %.0f "$3")" "$4" "$5"
  else row "etcd 3 members" "$1" FAILED - -; fi
}

for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: redis"
  rb "$RPORT" "redis appendfsync always"
  find_leader   # a leader change between rounds would otherwise turn "to leader" into a forward
  log "round $round/$ROUNDS: triarch (leader n$LEADER)"
  rb "$LPORT" "triarch pb, to leader"
  log "round $round/$ROUNDS: triarch (follower)"
  rb "$FPORT" "triarch pb, via follower"
  if [ -n "${BASELINE_BIN:-}" ]; then
    find_leader "$BBASE"
    log "round $round/$ROUNDS: triarch BASELINE (leader n$LEADER)"
    rb "$LPORT" "triarch pb BASELINE, to leader"
    rb "$FPORT" "triarch pb BASELINE, via follower"
  fi
  log "round $round/$ROUNDS: etcd"
  etcd_run put SET
  etcd_run get GET
done
cp "$RESULTS" /tmp/bench_pb-last.tsv
FSYNC_AFTER=$(fsync_probe)
# Leader changes or request timeouts during the run would explain outliers: show each node's view.
GROUPS_SEEN=$(for i in 0 1 2; do redis-cli -p $((TBASE + i)) INFO | tr -d '\r' |
  sed -n 's/^keyspace_key:.*role=\([a-z]*\),leader=\(n[0-9]*\),term=\([0-9]*\),commit_index=\([0-9]*\).*/n'$((i + 1))' \1 of term \3, leader \2, commit \4/p;
         s/^primary_timeouts:\(.*\)/  request timeouts \1;/p' | tr '\n' ' '; echo; done)

echo
echo "# bench_pb.sh $(date -u +%FT%TZ): $(nproc) cores, $CLIENTS clients, $SIZE B values, $KEYS keys, medians of $ROUNDS rounds"
echo "# redis-benchmark -n $N; etcd-load ${ETCD_SECS} s per run; triarch: keyspace 'key' primary-backup, N=3"
echo "# triarch binary: $BIN${BASELINE_BIN:+; baseline binary: $BASELINE_BIN}"
echo "# disk before: $FSYNC_BEFORE; after: $FSYNC_AFTER"
python3 - "$RESULTS" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    system, op, *vals = line.rstrip("\n").split("\t")
    rows.setdefault((system, op), []).append(vals)
def med(xs):
    xs = [float(x) for x in xs if x not in ("FAILED", "-")]
    return statistics.median(xs) if xs else None
print(f"{'system':<34} {'op':<4} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}  rounds")
for (system, op), runs in rows.items():
    ops, p50, p99 = (med([r[i] for r in runs]) for i in range(3))
    f = lambda v, fmt: (fmt % v) if v is not None else "FAILED"
    print(f"{system:<34} {op:<4} {f(ops, '%.0f'):>9} {f(p50, '%.3f'):>8} {f(p99, '%.3f'):>8}  "
          + " ".join(r[0] for r in runs))
EOF
echo "# triarch after the run:"
echo "$GROUPS_SEEN" | sed 's/^/#   /'
echo "# per-round rows in /tmp/bench_pb-last.tsv"
