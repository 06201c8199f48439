#!/usr/bin/env bash
# Training slowdown with snapshots on: runs the quick-start job on a local
# cluster (1 coordinator, 2 servers with --data_dir, 2 workers) RUNS times
# without snapshots and RUNS times with `snapshot { every_steps: EVERY }`,
# alternating, and prints each run's training time, the medians and their
# ratio. Usage: tests/bench/snapshot_overhead.sh [RUNS] [EVERY]
# (build first: bazel build //server/... //worker:psd_worker //deploy:psd_ctl)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
EVERY=${2:-100}
BIN=bazel-bin
source deploy/processes.sh
WORK=$(mktemp -d /tmp/psd-snapbench.XXXXXX)
PIDS=()
trap 'stop_processes "${PIDS[@]}"' EXIT

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/c.port" 2>"$WORK/c.log" &
PIDS+=($!)
C=127.0.0.1:$(wait_port $! "$WORK/c.port")
for i in 1 2; do
  "$BIN/server/ps/psd_server" --insecure --coordinator="$C" --data_dir="$WORK/s$i" 2>"$WORK/s$i.log" &
  PIDS+=($!)
  "$BIN/worker/psd_worker" --insecure --coordinator="$C" 2>"$WORK/w$i.log" &
  PIDS+=($!)
done
CTL=("$BIN/deploy/psd_ctl" --coordinator="$C")
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null
cp deploy/jobs/fashion_mnist_mlp.textproto "$WORK/off.textproto"
cp deploy/jobs/fashion_mnist_mlp.textproto "$WORK/on.textproto"
echo "snapshot { every_steps: $EVERY keep_last: 3 }" >>"$WORK/on.textproto"

run() {  # run off|on -> training seconds
  local id
  id=$("${CTL[@]}" submit "$WORK/$1.textproto")
  "${CTL[@]}" watch "$id" >/dev/null
  "${CTL[@]}" get "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["elapsedSeconds"])'
  "${CTL[@]}" delete "$id" >/dev/null
}
off=(); on=()
for r in $(seq "$RUNS"); do
  off+=("$(run off)"); on+=("$(run on)")
  echo "run $r: without snapshots ${off[-1]} s, with snapshots every $EVERY steps ${on[-1]} s"
done
python3 - "${off[*]}" "${on[*]}" "$EVERY" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(off), statistics.median(on)
print(f"median without {mo:.2f} s, with (every {sys.argv[3]} steps) {mn:.2f} s, "
      f"slowdown {100 * (mn / mo - 1):+.1f}% of training time")
PY
