#!/usr/bin/env bash
# Replication (issue 3), measured on a local cluster of 3 servers and 2
# workers:
#  - cost: the quick-start job's steps/s and push+pull GB/s at R = 1, 2 and
#    3 (the coordinator restarted with --replication_factor=R), RUNS runs
#    each, interleaved; medians and ratios against R=1 of the same run;
#  - failover time: KILLS times, the primary of shard 0 is SIGKILLed mid-job
#    (R=2, default heartbeat timeout) once the job reported step 500; the
#    time from the SIGKILL to the
#    first completed step after it: the later of the two workers' log lines
#    "failed over after …", written when a call succeeds on the new primary
#    (log timestamps are UTC wall clock, like `date`). Median and max.
# Usage: tests/bench/replication_bench.sh [RUNS] [KILLS] (RUNS 0: failover
# time only)
# (build first: bazel build //server/... //worker:psd_worker //deploy:psd_ctl)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
KILLS=${2:-5}
source deploy/processes.sh
WORK=$(mktemp -d /tmp/psd-replbench.XXXXXX)
# A private copy of the binaries: a build running meanwhile cannot swap them.
BIN=$WORK/bin
for b in server/coordinator/psd_coordinator server/ps/psd_server worker/psd_worker deploy/psd_ctl; do
  mkdir -p "$BIN/$(dirname $b)" && cp "bazel-bin/$b" "$BIN/$b"
done
PIDS=()
trap 'stop_processes "${PIDS[@]}" 2>/dev/null || true' EXIT

# cluster R: a coordinator with --replication_factor=R, 3 servers, 2 workers.
declare -A SERVER_PID
cluster() {
  stop_processes "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
  rm -f "$WORK"/*.port  # the last cluster's ports
  "$BIN/server/coordinator/psd_coordinator" --insecure --replication_factor="$1" \
    --port_file="$WORK/c.port" 2>>"$WORK/c.log" &
  PIDS+=($!)
  C=127.0.0.1:$(wait_port $! "$WORK/c.port")
  for i in 1 2 3; do
    "$BIN/server/ps/psd_server" --insecure --coordinator="$C" --port_file="$WORK/s$i.port" \
      2>>"$WORK/s$i.log" &
    PIDS+=($!)
    SERVER_PID[$(wait_port $! "$WORK/s$i.port")]=$!
  done
  for i in 1 2; do
    "$BIN/worker/psd_worker" --insecure --coordinator="$C" 2>"$WORK/w$i.log" &
    PIDS+=($!)
  done
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$C")
  "${CTL[@]}" --servers=3 --workers=2 wait-ready >/dev/null
}

JOB=deploy/jobs/fashion_mnist_mlp.textproto
# run -> "seconds steps bytes_per_step"
run() {
  local id
  id=$("${CTL[@]}" submit "$JOB")
  "${CTL[@]}" watch "$id" >/dev/null
  "${CTL[@]}" get "$id" | python3 -c '
import json, sys
j = json.load(sys.stdin)
floats = sum(int(p["numElements"]) for p in j["placement"]["partitions"])
# Per step every worker pushes and pulls every parameter (float32).
print(j["elapsedSeconds"], j["totalSteps"], 2 * 4 * floats * j["config"]["workers"])'
  "${CTL[@]}" delete "$id" >/dev/null
}

declare -A RESULTS
for r in $(seq "$RUNS"); do
  for R in 1 2 3; do
    cluster "$R"
    RESULTS[$R]+="$(run) "
    echo "run $r, R=$R: $(echo "${RESULTS[$R]}" | awk '{print $(NF-2)" s for "$(NF-1)" steps"}')"
  done
done
[ "$RUNS" -gt 0 ] && python3 - "${RESULTS[1]}" "${RESULTS[2]}" "${RESULTS[3]}" <<'PY'
import statistics, sys
base = None
for R, text in enumerate(sys.argv[1:], 1):
    v = [float(x) for x in text.split()]
    runs = [v[i:i + 3] for i in range(0, len(v), 3)]
    sps = statistics.median(s / t for t, s, _ in runs)
    gbs = statistics.median(s * b / t / 1e9 for t, s, b in runs)
    base = base or sps
    print(f"R={R}: median {sps:.1f} steps/s, push+pull {gbs:.3f} GB/s, "
          f"{sps / base:.2f}x of R=1")
PY

# Failover time.
times=()
for k in $(seq "$KILLS"); do
  cluster 2  # fresh worker logs
  id=$("${CTL[@]}" submit "$JOB")
  port=""
  for _ in $(seq 200); do
    port=$("${CTL[@]}" get "$id" | python3 -c '
import json, sys
j = json.load(sys.stdin)
if j.get("state") == "RUNNING" and j.get("shards"):
    a = {s["id"]: s["address"] for s in j["servers"]}
    print(a[j["shards"][0]["primary"]].rsplit(":", 1)[1])' 2>/dev/null || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "job $id did not start" >&2; exit 1; }
  # Mid-job: wait until the slowest rank has reported step 500 (of 3744).
  for _ in $(seq 600); do
    step=$("${CTL[@]}" get "$id" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("step", 0))')
    [ "$step" -ge 500 ] && break
    sleep 0.05
  done
  [ "$step" -ge 500 ] || { echo "job $id did not reach step 500" >&2; exit 1; }
  killed_at=$(date '+%s.%N')
  kill -KILL "${SERVER_PID[$port]}"
  ms=""
  for _ in $(seq 300); do
    # Both workers have logged the call that succeeded on the new primary.
    if [ "$(grep -alc "failed over after" "$WORK/w1.log" "$WORK/w2.log" | wc -l)" -eq 2 ]; then
      ms=$(grep -ah "failed over after" "$WORK/w1.log" "$WORK/w2.log" | python3 -c '
import datetime, sys
killed = float(sys.argv[1])
stamps = [datetime.datetime.strptime(" ".join(l.split()[:2]), "%Y-%m-%d %H:%M:%S.%f")
          .replace(tzinfo=datetime.timezone.utc).timestamp() for l in sys.stdin]
print(round((max(stamps) - killed) * 1000))' "$killed_at")
      break
    fi
    sleep 0.1
  done
  echo "kill $k: the primary of shard 0 (port $port) SIGKILLed; both workers stepping again after ${ms:-?} ms"
  times+=("${ms:-nan}")
  "${CTL[@]}" cancel "$id" >/dev/null || true
done
python3 - "${times[@]}" <<'PY'
import statistics, sys
v = [float(x) for x in sys.argv[1:] if x != "nan"]
print(f"failover: median {statistics.median(v):.0f} ms, max {max(v):.0f} ms over {len(v)} kills")
PY
