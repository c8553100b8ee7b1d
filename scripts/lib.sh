# Shared by the benchmark scripts (sourced, not run): the release binary, a work directory, a
# local cluster started by one `triarch up` and stopped on exit whatever happens.
#
#   bench_init NAME TOOL...  checks the tools, builds the release binary unless SKIP_BUILD=1 or
#                            TRIARCH_BIN is set; sets ROOT, BIN, WORK; installs the exit trap
#   bench_up UP-ARGS...      starts `triarch up UP-ARGS --dir $WORK/triarch --base-port $TBASE`
#                            (TBASE random, every port below 32768) and waits until it is up
#   BENCH_ON_EXIT            a command the exit trap runs first (e.g. to stop a sampler)
#
# On exit: `up` is stopped (it stops every node it started, by PID); nodes it did not stop (it
# was killed) are killed by the PIDs it wrote to cluster.json, if they are still triarch; the
# work directory is removed unless KEEP=1.

log() { echo "[$(date +%T)] $*" >&2; }

bench_init() {
  BENCH_NAME="$1"; shift
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
  ROOT="$(pwd)"
  BIN="${TRIARCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/triarch}"
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$BENCH_NAME: $tool missing (apt-get install redis-tools python3)"; exit 1; }
  done
  if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${TRIARCH_BIN:-}" ]; then
    log "cargo build --release -p triarch-cli"
    cargo build --release -p triarch-cli -q || exit 1
  fi
  [ -x "$BIN" ] || { echo "$BENCH_NAME: $BIN missing"; exit 1; }
  WORK="$(mktemp -d "/tmp/triarch-$BENCH_NAME.XXXXXX")"
  UP=""
  BENCH_ON_EXIT="${BENCH_ON_EXIT:-}"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  trap - EXIT INT TERM
  [ -n "$BENCH_ON_EXIT" ] && eval "$BENCH_ON_EXIT"
  if [ -n "$UP" ]; then
    kill -TERM "$UP" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$UP" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$UP" 2>/dev/null && kill -KILL "$UP" 2>/dev/null
    wait "$UP" 2>/dev/null
  fi
  if [ -f "$WORK/triarch/cluster.json" ]; then
    for pid in $(bench_pids); do
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = triarch ]; then kill -KILL "$pid" 2>/dev/null; fi
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}

# The PIDs of the nodes, as `up` recorded them.
bench_pids() {
  python3 -c 'import json,sys; print(" ".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"] if n.get("pid")))' "$WORK/triarch/cluster.json" 2>/dev/null
}

bench_up() {
  TBASE=$((22100 + RANDOM % 4000)) # RESP TBASE.., HTTP +100, peers +200: all below 32768
  "$BIN" up "$@" --dir "$WORK/triarch" --base-port "$TBASE" >"$WORK/up.log" 2>&1 &
  UP=$!
  for _ in $(seq 1 600); do
    grep -q "Ctrl-C" "$WORK/up.log" 2>/dev/null && break
    kill -0 "$UP" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "Ctrl-C" "$WORK/up.log" || { echo "$BENCH_NAME: triarch did not come up"; cat "$WORK/up.log"; exit 1; }
}
