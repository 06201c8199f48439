#!/usr/bin/env bash
# Consistency models (issue 7): training throughput under BSP, ASP,
# SSP(s=2), and BSP with an SSP(s=2) parameter group (the first layer), on
# one local cluster (coordinator, 2 servers, R=1) with 2
# workers, one of them slowed down by SLOW_MS per step
# (psd_worker --test_slow_ms_per_step, a test-only flag). The job is
# tests/cluster_lib.sh's short job (12,000 examples, 2 epochs, 186 steps
# per rank). Each run submits the four modes one after the other on the
# same cluster (interleaved, so machine noise hits them all); RUNS runs;
# medians. Per job, from the workers' "trained N steps in S s" log lines:
#   fast  steps/s of the normal worker (its own training loop),
#   slow  steps/s of the slowed worker,
#   all   both ranks' steps / the slower rank's training time,
#   acc   the job's final test accuracy (rank 0 at its end).
# Usage: tests/bench/consistency_bench.sh [RUNS] [SLOW_MS]
# (build first: bazel build //server/... //worker:psd_worker //deploy:psd_ctl)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
SLOW_MS=${2:-20}
BIN=bazel-bin
source deploy/processes.sh
WORK=$(mktemp -d /tmp/psd-consbench.XXXXXX)
PIDS=()
trap 'stop_processes "${PIDS[@]}" 2>/dev/null || true' EXIT

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/c.port" 2>>"$WORK/c.log" &
PIDS+=($!)
C=127.0.0.1:$(wait_port $! "$WORK/c.port")
for i in 1 2; do
  "$BIN/server/ps/psd_server" --insecure --coordinator="$C" 2>>"$WORK/s$i.log" &
  PIDS+=($!)
done
"$BIN/worker/psd_worker" --insecure --coordinator="$C" 2>"$WORK/fast.log" &
PIDS+=($!)
"$BIN/worker/psd_worker" --insecure --coordinator="$C" --test_slow_ms_per_step="$SLOW_MS" \
  2>"$WORK/slow.log" &
PIDS+=($!)
CTL=("$BIN/deploy/psd_ctl" --coordinator="$C")
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null

job() {  # job MODE -> textproto on stdout
  local consistency=$1 extra=""
  [ "$1" = SSP2 ] && consistency=SSP && extra="staleness: 2"
  # GROUPS: BSP, with the first layer as an SSP(s=2) parameter group.
  [ "$1" = GROUPS ] && consistency=BSP &&
    extra='parameter_groups { parameters: ["layer0.weight", "layer0.bias"] consistency: SSP staleness: 2 }'
  cat <<JOB
name: "bench-$1"
model { kind: MLP input_dim: 784 hidden_sizes: [256, 128] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" train_limit: 12000 test_limit: 2000 }
optimizer { kind: SGD learning_rate: 0.02 momentum: 0.9 weight_decay: 0.0005 }
consistency: $consistency
$extra
batch_size: 64
epochs: 2
workers: 2
seed: 42
JOB
}

# rate LOG ID -> "steps seconds" of the rank that trained job ID in LOG
rate() {
  grep "job $2 rank .*: trained" "$1" | tail -1 |
    sed -E 's/.*trained ([0-9]+) steps in ([0-9.]+) s.*/\1 \2/'
}

MODES=(BSP ASP SSP2 GROUPS)
echo "mode run fast_steps_s slow_steps_s all_steps_s accuracy" >"$WORK/results"
for run in $(seq "$RUNS"); do
  for mode in "${MODES[@]}"; do
    job "$mode" >"$WORK/$mode.textproto"
    id=$("${CTL[@]}" submit "$WORK/$mode.textproto")
    "${CTL[@]}" watch "$id" >"$WORK/$id.watch"
    acc=$(grep -o 'test accuracy [0-9.]*$' "$WORK/$id.watch" | awk '{print $3}')
    read -r fs fsec < <(rate "$WORK/fast.log" "$id")
    read -r ss ssec < <(rate "$WORK/slow.log" "$id")
    awk -v m="$mode" -v r="$run" -v fs="$fs" -v ft="$fsec" -v ss="$ss" \
      -v st="$ssec" -v a="$acc" 'BEGIN {
        t = ft > st ? ft : st
        printf "%s %d %.1f %.1f %.1f %s\n", m, r, fs / ft, ss / st, (fs + ss) / t, a
      }' | tee -a "$WORK/results"
    "${CTL[@]}" delete "$id" >/dev/null 2>&1 || true
  done
done

echo
echo "medians over $RUNS runs (one worker +${SLOW_MS} ms/step; steps/s):"
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
print(f"{'mode':16} {'fast':>7} {'slow':>7} {'all':>7} {'accuracy':>9}")
names = {"SSP2": "SSP s=2", "GROUPS": "BSP+SSP2 layer0"}
for mode in ["BSP", "ASP", "SSP2", "GROUPS"]:
    r = [x for x in rows if x[0] == mode]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    name = names.get(mode, mode)
    print(f"{name:16} {med(2):7.1f} {med(3):7.1f} {med(4):7.1f} {med(5):9.4f}")
PY
