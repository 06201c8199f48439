#!/usr/bin/env bash
# Snapshots and recovery (DESIGN invariant 6), asserting the oracle of
# invariant 4: the final parameters equal those of an undisturbed run.
#  A. SIGKILL every process mid-job, restart them on the same data
#     directories: the job resumes from the newest common snapshot.
#  B. The same, after damaging the newest snapshot of one shard: the
#     restart falls back to an older common step.
#  C. SIGKILL the coordinator alone and restart it: the job goes on.
#  E. (after D) A job with no snapshot policy, snapshotted on demand, then
#     everything killed: it resumes exactly at the on-demand step.
#  F. (after E) A time-based policy gives snapshots at common steps.
#  D. A server whose disk is "full" (a 1 MiB file size limit, with SIGXFSZ
#     ignored, so writes fail with EFBIG): its snapshots fail, training goes
#     on, and the failures show in the job's status.
# Retention: each server keeps at most keep_last snapshots of the job.
source tests/cluster_lib.sh
source tests/persistent_lib.sh

undisturbed_reference 3 'snapshot { every_steps: 20 keep_last: 3 }'

# start_persistent S: coordinator, 2 servers and 2 workers of scenario S,
# with data directories under $WORK/S; the coordinator keeps its port.
start_persistent() {
  local s=$1
  if [ -z "${PORT[$s]:-}" ]; then
    start_node "$s.coordinator" coordinator --data_dir="$WORK/$s/coordinator" \
      --port_file="$WORK/$s.port"
    PORT[$s]=$(wait_port "${PIDS[-1]}" "$WORK/$s.port") || fail "coordinator $s did not start"
  else
    start_node "$s.coordinator" coordinator --data_dir="$WORK/$s/coordinator" \
      --listen="127.0.0.1:${PORT[$s]}"
  fi
  COORDINATOR=127.0.0.1:${PORT[$s]}
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "${TLS_DIR:-}" user-alice))
  start_node "$s.server1" server --data_dir="$WORK/$s/server1"
  start_node "$s.server2" server --data_dir="$WORK/$s/server2"
  start_node "$s.worker1" worker
  start_node "$s.worker2" worker
}

# finish JOB: waits for SUCCEEDED and prints the exported checksum.
finish() {
  "${CTL[@]}" --servers=2 --workers=0 --timeout_s=30 wait-ready >/dev/null ||
    fail "the restarted cluster did not come up"
  "${CTL[@]}" watch "$1" >"$WORK/$1.watch" || { cat "$WORK/$1.watch"; fail "job $1 did not succeed"; }
  "${CTL[@]}" export "$1" "$WORK/$1.safetensors" | grep -o 'crc32:[0-9a-f]*'
}

declare -A PORT

# A. Kill everything mid-job; restart on the same data directories.
start_persistent A
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null
job=$("${CTL[@]}" submit "$WORK/job.textproto")
wait_step "$job" 130
kill_all
start_persistent A
after=$(finish "$job")
resumed=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("resumedFromSteps", []))')
echo "A: resumed from $resumed, checksum $after"
[ "$resumed" != "[]" ] || fail "A: the job did not resume from a snapshot"
[ "$after" = "$reference" ] || fail "A: checksum $after differs from the undisturbed $reference"
# Retention: keep_last 3 on each server.
counts=$("${CTL[@]}" snapshots "$job" | python3 -c '
import json, re, sys
for chunk in re.split(r"^server-\S+ \(\S+\): ", sys.stdin.read(), flags=re.M)[1:]:
    print(len(json.loads(chunk).get("snapshots", [])))')
echo "A: snapshots kept per server: $(echo $counts)"
for c in $counts; do [ "$c" -ge 1 ] && [ "$c" -le 3 ] || fail "A: $c snapshots kept, want 1..3"; done
kill_all

# B. Damage the newest snapshot of one shard before restarting.
start_persistent B
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null
job=$("${CTL[@]}" submit "$WORK/job.textproto")
wait_step "$job" 130
kill_all
damaged=$("$BIN/tests/corrupt_snapshot" "$WORK/B/server1/snapshots" "$job") || fail "B: could not damage"
start_persistent B
after=$(finish "$job")
resumed=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["resumedFromSteps"][0])')
echo "B: damaged step $damaged, resumed from $resumed, checksum $after"
[ "$resumed" -lt "$damaged" ] || fail "B: resumed from $resumed, not before the damaged $damaged"
[ "$after" = "$reference" ] || fail "B: checksum $after differs from the undisturbed $reference"
grep -q "checksum" "$WORK"/B.server1.log || fail "B: the server did not report the damaged snapshot"
kill_all

# C. Kill the coordinator alone; the job goes on.
start_persistent C
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null
job=$("${CTL[@]}" submit "$WORK/job.textproto")
wait_step "$job" 60
kill -KILL "${PIDS[0]}"
wait "${PIDS[0]}" 2>/dev/null || true
start_node C.coordinator2 coordinator --data_dir="$WORK/C/coordinator" --listen="127.0.0.1:${PORT[C]}"
after=$(finish "$job")
echo "C: checksum $after"
[ "$after" = "$reference" ] || fail "C: checksum $after differs from the undisturbed $reference"
kill_all

# D. A full disk on one server.
start_node D.coordinator coordinator --port_file="$WORK/D.port"
COORDINATOR=127.0.0.1:$(wait_port "${PIDS[-1]}" "$WORK/D.port") || fail "D: no coordinator"
CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "${TLS_DIR:-}" user-alice))
start_node D.server1 server --data_dir="$WORK/D/server1"
(trap '' XFSZ; ulimit -f 1024; exec "$BIN/server/ps/psd_server" $(tls_flags "${TLS_DIR:-}" server) --coordinator="$COORDINATOR" \
  --data_dir="$WORK/D/server2" 2>>"$WORK/D.server2.log") &
PIDS+=($!)
start_node D.worker1 worker
start_node D.worker2 worker
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null
job=$("${CTL[@]}" submit "$WORK/job.textproto")
after=$(finish "$job")
errors=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("snapshotErrors", [])))')
echo "D: checksum $after, $errors snapshot errors in the job status"
[ "$after" = "$reference" ] || fail "D: checksum $after differs from the undisturbed $reference"
[ "$errors" -ge 1 ] || fail "D: the failed snapshots are not in the job status"
kill_all

# E. On demand.
grep -v '^snapshot' "$WORK/job.textproto" >"$WORK/nopolicy.textproto"
start_persistent E
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null
job=$("${CTL[@]}" submit "$WORK/nopolicy.textproto")
wait_step "$job" 30
on_demand=$("${CTL[@]}" snapshot "$job" | grep -o 'step [0-9]*' | grep -o '[0-9]*') ||
  fail "E: snapshot request failed"
for _ in $(seq 200); do
  [ "$("${CTL[@]}" snapshots "$job" | grep -c "\"step\": \"$on_demand\"")" -eq 2 ] && break
  sleep 0.05
done
[ "$("${CTL[@]}" snapshots "$job" | grep -c "\"step\": \"$on_demand\"")" -eq 2 ] ||
  fail "E: the on-demand snapshot at step $on_demand is not on both servers"
kill_all
start_persistent E
after=$(finish "$job")
resumed=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["resumedFromSteps"][0])')
echo "E: on-demand snapshot at step $on_demand, resumed from $resumed, checksum $after"
[ "$resumed" = "$on_demand" ] || fail "E: resumed from $resumed, not the on-demand $on_demand"
[ "$after" = "$reference" ] || fail "E: checksum $after differs from the undisturbed $reference"

# F. A time-based policy: the coordinator asks for a snapshot every second,
# at one common step on both servers.
sed 's/^epochs: 3$/epochs: 6/' "$WORK/nopolicy.textproto" >"$WORK/timed.textproto"
echo 'snapshot { every_seconds: 1 }' >>"$WORK/timed.textproto"
job=$("${CTL[@]}" submit "$WORK/timed.textproto")
"${CTL[@]}" watch "$job" >/dev/null || fail "F: job $job failed"
common=$("${CTL[@]}" snapshots "$job" | python3 -c '
import json, re, sys
sets = [set(s["step"] for s in json.loads(c).get("snapshots", []))
        for c in re.split(r"^server-\S+ \(\S+\): ", sys.stdin.read(), flags=re.M)[1:]]
print(len(set.intersection(*sets)) if sets else 0)')
echo "F: $common timed snapshots common to both servers"
[ "$common" -ge 1 ] || fail "F: no timed snapshot at a common step"
echo PASS
