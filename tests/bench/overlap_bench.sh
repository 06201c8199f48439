#!/usr/bin/env bash
# Overlap of the push with the backward pass (issue 5), measured on a local
# cluster: 1 coordinator, 2 parameter servers (R=1), 2 workers, all on
# 127.0.0.1. The same job runs with the workers' --overlap_push=true and
# =false, RUNS times each, interleaved (on, off, on, off, ...), each run on
# a fresh cluster. Per run: steps/s (the job's steps over its elapsed
# seconds, from the coordinator) and the share of step time spent waiting
# on the network: both workers' sums of (pull time + push time after the
# backward pass) over their sums of step time, from the line each worker
# logs at the end ("network wait X s of Y s of steps"). Prints each run,
# the medians and the ratios on/off, and checks that every run exported the
# same parameters (BSP: the pushed bytes are the same either way).
#
# Usage: tests/bench/overlap_bench.sh [RUNS] [JOB_FILE]
#   RUNS: runs per setting, default 3. JOB_FILE: default the quick-start job
#   deploy/jobs/fashion_mnist_mlp.textproto.
# From the repository root, after
#   bazel build //server/... //worker:psd_worker //deploy:psd_ctl
# or through Bazel: bazel run //tests/bench:overlap_bench -- [RUNS] [JOB_FILE]
# (a relative JOB_FILE is then read from the runfiles tree).
set -euo pipefail
if [ -d "${RUNFILES_DIR:-$0.runfiles}/psd" ]; then
  cd "${RUNFILES_DIR:-$0.runfiles}/psd"
  SRC=.
else
  cd "$(dirname "$0")/../.."
  SRC=bazel-bin
fi
RUNS=${1:-3}
JOB=${2:-deploy/jobs/fashion_mnist_mlp.textproto}
source deploy/processes.sh
WORK=$(mktemp -d "${TMPDIR:-/tmp}/psd-overlapbench.XXXXXX")
# A private copy of the binaries: a build running meanwhile cannot swap them.
BIN=$WORK/bin
for b in server/coordinator/psd_coordinator server/ps/psd_server worker/psd_worker deploy/psd_ctl; do
  mkdir -p "$BIN/$(dirname $b)" && cp "$SRC/$b" "$BIN/$b"
done
PIDS=()
trap 'stop_processes "${PIDS[@]}" 2>/dev/null || true' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "job: $JOB; $RUNS runs per setting"

# cluster OVERLAP: a fresh coordinator, 2 servers and 2 workers with
# --overlap_push=OVERLAP; logs under $WORK/OVERLAP.RUN.*.
cluster() {
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  local tag=$1.$2
  "$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/$tag.c.port" \
    2>"$WORK/$tag.c.log" &
  PIDS+=($!)
  C=127.0.0.1:$(wait_port $! "$WORK/$tag.c.port")
  for i in 1 2; do
    "$BIN/server/ps/psd_server" --insecure --coordinator="$C" 2>"$WORK/$tag.s$i.log" &
    PIDS+=($!)
  done
  for i in 1 2; do
    "$BIN/worker/psd_worker" --insecure --coordinator="$C" --overlap_push="$1" \
      2>"$WORK/$tag.w$i.log" &
    PIDS+=($!)
  done
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$C")
  "${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready >/dev/null
}

# run OVERLAP RUN: writes "steps_per_s network_wait_share checksum" to
# $WORK/OVERLAP.RUN.result (not to stdout: called in $(...), the cluster's
# processes would hold the pipe open).
run() {
  cluster "$1" "$2"
  local id sps share sum
  id=$("${CTL[@]}" submit "$JOB")
  "${CTL[@]}" watch "$id" >/dev/null
  sps=$("${CTL[@]}" get "$id" | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["state"] == "SUCCEEDED", j["state"]
print(int(j["totalSteps"]) / float(j["elapsedSeconds"]))')
  sum=$("${CTL[@]}" export "$id" "$WORK/$1.$2.safetensors" | grep -o 'crc32:[0-9a-f]*')
  # "network wait 1.234 s of 5.678 s of steps (21.7%)", one per worker.
  share=$(cat "$WORK/$1.$2".w*.log | python3 -c '
import re, sys
rows = re.findall(r"network wait ([0-9.]+) s of ([0-9.]+) s of steps", sys.stdin.read())
assert len(rows) == 2, rows
print(sum(float(w) for w, _ in rows) / sum(float(s) for _, s in rows))')
  echo "$sps $share $sum" >"$WORK/$1.$2.result"
}

declare -A RESULTS
for r in $(seq "$RUNS"); do
  for overlap in true false; do
    run "$overlap" "$r"
    line=$(cat "$WORK/$overlap.$r.result")
    RESULTS[$overlap]+="$line "
    echo "run $r, --overlap_push=$overlap: $(echo "$line" | awk '{printf "%.1f steps/s, network wait %.1f%% of step time, %s", $1, 100 * $2, $3}')"
  done
done
stop_processes "${PIDS[@]}" 2>/dev/null || true
PIDS=()
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "${RESULTS[true]}" "${RESULTS[false]}" <<'PY'
import statistics, sys
def parse(text):
    v = text.split()
    return [(float(v[i]), float(v[i + 1]), v[i + 2]) for i in range(0, len(v), 3)]
on, off = parse(sys.argv[1]), parse(sys.argv[2])
med = lambda rows, k: statistics.median(r[k] for r in rows)
for name, rows in (("overlap on ", on), ("overlap off", off)):
    print(f"{name}: median {med(rows, 0):.1f} steps/s, network wait "
          f"{100 * med(rows, 1):.1f}% of step time")
print(f"on/off: steps/s x{med(on, 0) / med(off, 0):.3f}, network-wait share "
      f"x{med(on, 1) / med(off, 1):.3f}")
sums = {r[2] for r in on + off}
print("checksums:", " ".join(sorted(sums)))
if len(sums) != 1:
    sys.exit("FAIL: the runs exported different parameters")
PY
