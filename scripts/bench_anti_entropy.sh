#!/usr/bin/env bash
# What anti-entropy costs on an idle cluster (issue 4's acceptance): a 3-node Triarch cluster
# (`triarch up --nodes 3 --no-keyspaces`, release build), one leaderless keyspace `ae` (N=3,
# W=2, R=2) filled with KEYS distinct keys (1,000,000 by default, SIZE-byte values, pipelined
# SETs from redis-py), then left idle for IDLE seconds. Every node keeps a Merkle tree per replica
# range and compares each (range, peer) once per exchange interval (10 s), so an idle cluster
# keeps exchanging root hashes. Printed per node: CPU seconds used while idle (from
# /proc/<pid>/stat) as a share of one core, resident memory, and the anti-entropy counters from
# /metrics over the idle window (ranges compared and found in sync, keys repaired, bytes sent).
#
# Usage: scripts/bench_anti_entropy.sh
# Knobs: KEYS=1000000 SIZE=100 IDLE=60 KEEP=1 SKIP_BUILD=1 TRIARCH_BIN=path
# Needs redis-cli (redis-tools), python3 with redis-py. Nodes are children of one `triarch up`,
# stopped by its PID on exit. Ports stay below 32768.
set -uo pipefail
KEYS="${KEYS:-1000000}"; SIZE="${SIZE:-100}"; IDLE="${IDLE:-60}"
source "$(dirname "$0")/lib.sh"
bench_init bench-ae redis-cli python3
python3 -c 'import redis' 2>/dev/null || { echo "bench_anti_entropy: python3 redis missing (pip install redis)"; exit 1; }
bench_up --nodes 3 --no-keyspaces
out=$(redis-cli -p "$TBASE" TRIARCH.KEYSPACE CREATE ae MODEL leaderless N 3 W 2 R 2)
[ "$out" = OK ] || { echo "bench_anti_entropy: creating ae answered: $out"; exit 1; }
for i in 1 2 3; do
  for _ in $(seq 1 200); do
    redis-cli -p $((TBASE + i - 1)) INFO | tr -d '\r' | grep -q "^keyspace_ae:" && break
    sleep 0.05
  done
done

log "loading $KEYS keys of $SIZE bytes"
python3 - "$TBASE" "$KEYS" "$SIZE" <<'PY' || exit 1
import sys, time, redis
base, keys, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
clients = [redis.Redis(port=base + i) for i in range(3)]
value = b"v" * size
start, batch, retried = time.time(), 500, 0
for first in range(0, keys, batch):
    todo = list(range(first, min(first + batch, keys)))
    for attempt in range(20):
        p = clients[(first // batch + attempt) % 3].pipeline(transaction=False)
        for k in todo:
            p.set(f"ae:{k}", value)
        # A write may fail under load (quorum timeout): it is sent again until acknowledged.
        todo = [k for k, r in zip(todo, p.execute(raise_on_error=False)) if r is not True]
        if not todo:
            break
        retried += len(todo)
        time.sleep(0.2)
    else:
        sys.exit(f"bench_anti_entropy: {len(todo)} SETs never acknowledged")
print(f"loaded {keys} keys in {time.time() - start:.1f} s ({retried} SETs sent again)", file=sys.stderr)
PY

PIDS=$(bench_pids)
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ae() { # ae PORT_OFFSET: ranges_compared ranges_in_sync keys_repaired bytes_sent
  local http=$((TBASE + 100 + $1))
  python3 - "$http" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
want = ["ranges_compared_total", "ranges_in_sync_total", "keys_repaired_total", "bytes_sent_total"]
vals = {w: 0.0 for w in want}
for line in text.splitlines():
    for w in want:
        if line.startswith(f"triarch_anti_entropy_{w}{{keyspace=\"ae\"}}"):
            vals[w] += float(line.split()[-1])
print(" ".join(str(int(vals[w])) for w in want))
PY
}
log "settling 15 s (trees built, first exchanges), then $IDLE s idle"
sleep 15
declare -A T0 A0
i=0
for pid in $PIDS; do T0[$pid]=$(ticks "$pid"); A0[$pid]=$(ae $i); i=$((i + 1)); done
sleep "$IDLE"
echo "anti-entropy on an idle cluster: $KEYS keys x $SIZE B, N=3 on 3 nodes, $IDLE s idle"
printf "%-4s %10s %9s %10s %9s %9s %9s %12s\n" node cpu_s cpu_% rss_MiB compared in_sync repaired bytes_sent
i=0
for pid in $PIDS; do
  t1=$(ticks "$pid"); a1=$(ae $i)
  read -r c0 s0 r0 b0 <<<"${A0[$pid]}"; read -r c1 s1 r1 b1 <<<"$a1"
  rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  python3 -c "
t=($t1-${T0[$pid]})/$HZ
print(f'n{$i+1:<3} {t:10.2f} {100*t/$IDLE:9.2f} {$rss:10} {$c1-$c0:9} {$s1-$s0:9} {$r1-$r0:9} {$b1-$b0:12}')"
  i=$((i + 1))
done
