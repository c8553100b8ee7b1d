#!/usr/bin/env bash
# The fault-injection suite: every workload (every model) under every fault, and each checker's
# planted bug, which must be caught. Needs root and a build:
#   cargo build -p triarch-cli -p triarch-nemesis
#   bash crates/nemesis/scripts/suite.sh           # CI's short mode (about 9 minutes)
#   bash crates/nemesis/scripts/suite.sh 10        # a longer run: every time limit times 10
# Runs go to target/nemesis/<prefix>-<name> (prefix: $NEMESIS_PREFIX, default suite-x<scale>);
# each has a summary.txt. Stops at the first run that does not meet its expectation, after
# printing where its report is. Ends with a check that no namespace, process or rule of any run
# is left, and the suite's total time.
set -euo pipefail
cd "$(dirname "$0")/../../.."
scale=${1:-1}
prefix=${NEMESIS_PREFIX:-suite-x$scale}
bin=target/debug/triarch-nemesis
started=$SECONDS
results=()

nem() { # <name> <seed> <time-limit-s at scale 1> [flags...]
  local name=$1 seed=$2 limit=$(($3 * scale)) dir="target/nemesis/$prefix-$1"; shift 3
  rm -rf "$dir"
  local t=$SECONDS
  if ! "$bin" run --seed "$seed" --time-limit-s "$limit" --dir "$dir" "$@" >/dev/null; then
    echo "FAILED: $name (see $dir/summary.txt)" >&2
    [ -f "$dir/summary.txt" ] && sed -n '1,3p;/^checkers:/,/=>/p' "$dir/summary.txt" >&2
    exit 1
  fi
  results+=("$(printf '%-22s %4s s  %s' "$name" $((SECONDS - t)) "$(head -1 "$dir/summary.txt")")")
  echo "${results[-1]}"
}

# Planted bugs run under partitions only (their default); the planted-bug modes:
#   single-writer, set: nodes acknowledge a write once one replica holds it (bug_ack_before_quorum)
#   registers: voters serve reads without ReadIndex (bug_local_reads)
#   cart: adds recorded as acknowledged, never sent; bank: transfers without WATCH
#   counter, ml-counter: increments recorded as acknowledged but never sent, or sent twice
#   ml-lww: registers read through any region, as if multi-leader reads were linearizable
nem single-writer          1 60
nem single-writer-planted  2 30 --planted-bug --expect-failure
nem registers              3 60 --workload registers
nem registers-planted      4 30 --workload registers --planted-bug --expect-failure
nem cart                   5 30 --workload cart
nem cart-planted           6 20 --workload cart --planted-bug --expect-failure
nem bank                   7 30 --workload bank --keys 5
nem bank-planted           8 15 --workload bank --keys 5 --planted-bug --expect-failure
nem counter                9 30 --workload counter
nem counter-planted       10 15 --workload counter --planted-bug --expect-failure
nem ml-counter            11 30 --workload ml-counter
nem ml-counter-planted    12 15 --workload ml-counter --planted-bug --expect-failure
nem set                   13 30 --workload set
nem set-planted           14 20 --workload set --planted-bug --expect-failure
nem ml-lww                15 30 --workload ml-lww
nem ml-lww-planted        16 15 --workload ml-lww --planted-bug --expect-failure

# Nothing of any run is left: each run checked its own; check again for all of them.
left=""
for ns in $(ip netns list | awk '{print $1}' | grep -E '^tn[0-9]+(sw|c|n[0-9]+)$' || true); do
  owner=${ns#tn}; owner=${owner%%[!0-9]*}
  # A namespace of a harness still running (another run on this machine) is not a leftover.
  tr '\0' ' ' <"/proc/$owner/cmdline" 2>/dev/null | grep -q triarch-nemesis || left+="$ns "
done
procs=$(pgrep -af "target/nemesis/$prefix-" || true)
if [ -n "$left$procs" ]; then
  echo "left behind: $left $procs" >&2
  exit 1
fi
echo "nothing left behind: no namespace of a finished run, no process of this suite"
echo "nemesis suite (scale $scale): ${#results[@]} runs, all as expected, $((SECONDS - started)) s"
