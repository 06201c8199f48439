#!/usr/bin/env bash
# Live resharding (issue 16), measured: the time to move a job of about
# 100 MB of weights to a new server, and the job's steps/s before, during
# and after the move.
#
# Each round: a coordinator (R=1), one server s1, one worker; a BSP job
# MLP 784-H-10 with H = 31,446 (25.0 M float32 weights, 100 MB; SGD with
# momentum, so the server holds 200 MB of state), on 1,024 training images
# so that it runs for as long as the round needs. Once it has trained 10
# steps, steps/s over --window seconds; then a second server s2 starts and
# `psd_ctl reshard JOB --add=s2 --drain=s1` moves the job's one shard (all
# its partitions, weights and momentum) from s1 to s2 by state transfer
# while training goes on; the move's time is that command's wall time (it
# returns once the view with s2 as the shard's primary is published), and
# steps/s during it counts the steps the job took meanwhile; then steps/s
# over --window seconds on s2. Prints a row per round and the medians.
#
# Usage: tests/bench/reshard_bench.sh [--rounds N] [--window S]
# (build first: bazel build //server/... //worker:psd_worker //deploy:psd_ctl)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3
WINDOW=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "reshard_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
source deploy/processes.sh
WORK=$(mktemp -d /tmp/psd-reshardbench.XXXXXX)
BIN=$WORK/bin
for b in server/coordinator/psd_coordinator server/ps/psd_server worker/psd_worker deploy/psd_ctl; do
  mkdir -p "$BIN/$(dirname $b)" && cp "bazel-bin/$b" "$BIN/$b"
done
PIDS=()
trap 'stop_processes "${PIDS[@]}" 2>/dev/null || true' EXIT

cat >"$WORK/job.textproto" <<'JOB'
name: "reshard-bench"
model { kind: MLP input_dim: 784 hidden_sizes: [31446] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" train_limit: 1024 test_limit: 100 }
optimizer { kind: SGD learning_rate: 0.001 momentum: 0.9 }
consistency: BSP
batch_size: 64
epochs: 10000
workers: 1
seed: 1
JOB

# step: the steps the worker has trained (its psd_worker_steps_total: the
# job's step reports come every 20 steps, too coarse for a move of seconds).
step() {
  curl -s "http://127.0.0.1:$WORKER_METRICS/metrics" |
    awk '$1 ~ /^psd_worker_steps_total/ { s += $2 } END { print s + 0 }'
}
# id_at PORT: the id of the server listening on PORT.
id_at() {
  "${CTL[@]}" view | python3 -c '
import json, sys
print([s["id"] for s in json.load(sys.stdin)["servers"] if s["address"].endswith(":" + sys.argv[1])][0])' "$1"
}
now() { date +%s.%N; }
rate() { python3 -c "print(f'{($2 - $1) / ($4 - $3):.2f}')" ; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-6s %-10s %-14s %-14s %-14s\n' round "move s" "steps/s before" "steps/s during" "steps/s after"
ROWS=()
for round in $(seq "$ROUNDS"); do
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  rm -f "$WORK"/*.port
  "$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/c.port" 2>>"$WORK/c.log" &
  PIDS+=($!)
  C=127.0.0.1:$(wait_port $! "$WORK/c.port")
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$C")
  "$BIN/server/ps/psd_server" --insecure --coordinator="$C" --port_file="$WORK/s1.port" 2>>"$WORK/s1.log" &
  PIDS+=($!)
  s1_port=$(wait_port $! "$WORK/s1.port")
  rm -f "$WORK/w1.mport"
  "$BIN/worker/psd_worker" --insecure --coordinator="$C" --metrics_listen=127.0.0.1:0 \
    --metrics_port_file="$WORK/w1.mport" 2>>"$WORK/w1.log" &
  PIDS+=($!)
  WORKER_METRICS=$(wait_port $! "$WORK/w1.mport")
  "${CTL[@]}" --servers=1 --workers=1 wait-ready >/dev/null
  job=$("${CTL[@]}" submit "$WORK/job.textproto")
  until [ "$(step "$job")" -ge 10 ]; do sleep 0.5; done
  t0=$(now); k0=$(step "$job"); sleep "$WINDOW"; t1=$(now); k1=$(step "$job")
  "$BIN/server/ps/psd_server" --insecure --coordinator="$C" --port_file="$WORK/s2.port" 2>>"$WORK/s2.log" &
  PIDS+=($!)
  s2_port=$(wait_port $! "$WORK/s2.port")
  "${CTL[@]}" --servers=2 --workers=0 wait-ready >/dev/null
  s1=$(id_at "$s1_port"); s2=$(id_at "$s2_port")
  t2=$(now); k2=$(step "$job")
  "${CTL[@]}" --timeout_s=120 reshard "$job" --add="$s2" --drain="$s1" >"$WORK/reshard.$round.out"
  t3=$(now); k3=$(step "$job")
  sleep "$WINDOW"; t4=$(now); k4=$(step "$job")
  move=$(python3 -c "print(f'{$t3 - $t2:.2f}')")
  row="$(rate "$k0" "$k1" "$t0" "$t1") $(rate "$k2" "$k3" "$t2" "$t3") $(rate "$k3" "$k4" "$t3" "$t4")"
  printf '%-6s %-10s %-14s %-14s %-14s\n' "$round" "$move" $row
  ROWS+=("$move $row")
  grep -q "1 of 1 moves done" "$WORK/reshard.$round.out" || { cat "$WORK/reshard.$round.out"; echo "reshard_bench: the move did not land" >&2; exit 1; }
  "${CTL[@]}" cancel "$job" >/dev/null
done
printf '%s\n' "${ROWS[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
m = [statistics.median(c) for c in zip(*rows)]
print(f"median  {m[0]:<10.2f} {m[1]:<14.2f} {m[2]:<14.2f} {m[3]:<14.2f}")'
grep -h "bytes transferred" "$WORK/c.log" | sed 's/^/coordinator: /' | tail -"$ROUNDS"
