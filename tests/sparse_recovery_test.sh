#!/usr/bin/env bash
# Snapshots and whole-cluster recovery of a sparse job (issue 25): a BSP
# DLRM job on 2 servers at R=2 (every table shard on both), with
# snapshot.every_steps = 20 and every server on a --data_dir. The servers
# snapshot their table shards at the same steps as the dense part
# (CreateTableRequest.snapshot_every_steps).
#  1. An undisturbed run: its dense export checksum and table checksums.
#  2. The same job; mid-job the coordinator, both servers and both workers
#     are SIGKILLed and restarted on the same data directories (new server
#     ports): the coordinator restores the dense part and the tables at
#     one common step, on the new replica sets, and the job finishes with
#     bitwise the undisturbed run's dense checksum and table checksums.
#  2b. The same, after damaging the two newest snapshots of table "users"
#     on one server: that table shard lacks the dense part's newest step,
#     so the whole job restores again at an older common step, and still
#     finishes with the undisturbed checksums.
#  3. The same with one server's table snapshots lost (its embeddings
#     database removed before the restart): no older common step has them
#     either, so the job FAILS, naming the table, the server and the step.
#  4. An ASP sparse job (its tables have no step boundary, so no step
#     snapshots): after the same restart the job FAILS saying so.
source tests/cluster_lib.sh
source tests/persistent_lib.sh
source tests/sparse_lib.sh

write_dlrm_job "$WORK/job.textproto" dlrm-snap 20000 2000 100 3 \
  "snapshot { every_steps: 20 keep_last: 3 }"

# start_persistent S: coordinator (R=2), 2 servers and 2 workers of
# scenario S, with data directories under $WORK/S; the coordinator keeps
# its port, the servers get new ones.
declare -A PORT
start_persistent() {
  local s=$1
  if [ -z "${PORT[$s]:-}" ]; then
    start_node "$s.coordinator" coordinator --data_dir="$WORK/$s/coordinator" \
      --replication_factor=2 --port_file="$WORK/$s.port"
    PORT[$s]=$(wait_port "${PIDS[-1]}" "$WORK/$s.port") || fail "coordinator $s did not start"
  else
    start_node "$s.coordinator" coordinator --data_dir="$WORK/$s/coordinator" \
      --replication_factor=2 --listen="127.0.0.1:${PORT[$s]}"
  fi
  COORDINATOR=127.0.0.1:${PORT[$s]}
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "${TLS_DIR:-}" user-alice))
  start_node "$s.server1" server --data_dir="$WORK/$s/server1"
  start_node "$s.server2" server --data_dir="$WORK/$s/server2"
  start_node "$s.worker1" worker
  start_node "$s.worker2" worker
  "${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready >/dev/null ||
    fail "cluster $s did not come up"
}

# 1. Undisturbed.
start_persistent U
job=$("${CTL[@]}" submit "$WORK/job.textproto")
reference=$(sums "$job")
echo "undisturbed: $reference"
[ "$(echo "$reference" | wc -w)" = 3 ] || fail "want a dense and two table checksums, got: $reference"
ls "$WORK/U/server1/embeddings" >/dev/null || fail "no table snapshots on server 1"
grep -q "step snapshot of step 20 written" "$WORK/U.server1.log" ||
  fail "server 1 wrote no step snapshot of its tables"
kill_all

# 2. Everything SIGKILLed mid-job, restarted on the same data directories.
start_persistent K
job=$("${CTL[@]}" submit "$WORK/job.textproto")
steps=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("stepsPerEpoch", 0))')
wait_step "$job" $((steps * 3 / 2 + 5))
kill_all
start_persistent K
after=$(sums "$job")
resumed=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("resumedFromSteps", []))')
echo "killed at step >= $((steps * 3 / 2 + 5)) of $((steps * 3)); resumed from $resumed: $after"
[ "$resumed" != "[]" ] && [ "$resumed" != "[0]" ] ||
  fail "the job did not resume from a snapshot (resumed from $resumed)"
grep -q "restored at step" "$WORK"/K.coordinator.log ||
  fail "the coordinator restored no table"
cat "$WORK/$job.tables"
[ "$after" = "$reference" ] || fail "resumed run $after differs from the undisturbed $reference"
kill_all

# 2b. Damaged newest table snapshots on one server.
start_persistent D
job=$("${CTL[@]}" submit "$WORK/job.textproto")
wait_step "$job" $((steps * 3 / 2 + 5))
kill_all
damaged=$("$BIN/tests/corrupt_table_snapshot" "$WORK/D/server1/embeddings" "$job" users 2) ||
  fail "could not damage the table snapshots"
start_persistent D
after=$(sums "$job")
resumed=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("resumedFromSteps", []))')
echo "D: damaged generations $(echo $damaged) of users on server 1; resumed from $resumed: $after"
grep -q "restoring at an older step" "$WORK"/D.coordinator.log ||
  fail "D: the coordinator did not fall back to an older step"
[ "$resumed" != "[]" ] && [ "$resumed" != "[0]" ] ||
  fail "D: the job did not resume from a snapshot (resumed from $resumed)"
[ "$after" = "$reference" ] || fail "D: resumed run $after differs from the undisturbed $reference"
kill_all

# fails_after_restart S JOB_FILE WANT: submits, kills everything mid-job
# (after RUN_BEFORE_RESTART, if set), restarts; the job must FAIL with a
# message matching WANT.
fails_after_restart() {
  local s=$1 file=$2 want=$3
  start_persistent "$s"
  local job
  job=$("${CTL[@]}" submit "$file")
  wait_step "$job" 70
  kill_all
  ${RUN_BEFORE_RESTART:-true}
  start_persistent "$s"
  "${CTL[@]}" watch "$job" >"$WORK/$job.watch" 2>&1 && fail "$s: job $job succeeded"
  local state message
  state=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  message=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("error", ""))')
  echo "$s: $state: $message"
  [ "$state" = FAILED ] || fail "$s: job $job is $state, want FAILED"
  echo "$message" | grep_all "$want" || fail "$s: the message does not say \"$want\""
  kill_all
}

# 3. Lost table snapshots.
RUN_BEFORE_RESTART="rm -rf $WORK/L/server2/embeddings" \
  fails_after_restart L "$WORK/job.textproto" 'restoring table "[a-z]*" on server .* at step [0-9]* failed: restore_step: no snapshot'

# 4. ASP.
sed 's/^consistency: BSP$/consistency: ASP/' "$WORK/job.textproto" >"$WORK/asp.textproto"
fails_after_restart A "$WORK/asp.textproto" 'sparse job under ASP: its embedding tables have no step snapshots'
echo PASS
