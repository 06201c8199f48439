#!/usr/bin/env bash
# Whole-cluster restarts where one server's data directory did not survive
# (issue 20, "Failures under faults" items 2 and 3), with the oracle of
# DESIGN invariant 4: the final checksum equals the undisturbed run's.
#  L. R=2, 3 servers: every process SIGKILLed mid-job, one server's data
#     directory replaced by an empty one (a lost disk), all restarted. The
#     job resumes from the snapshots the other replicas hold, the lost
#     replica is rebuilt by state transfer, and every replica agrees.
#  Q. R=2, 2 servers: every process SIGKILLed, one server's RocksDB MANIFEST
#     damaged. Started as before it exits with DATA_LOSS naming the store;
#     with --on_corrupt_data_dir=quarantine it moves the store aside, starts
#     empty, rejoins as a backup, and the job ends with the checksum.
#  F. R=1, 2 servers: the same lost disk leaves a shard with no replica: the
#     job FAILS once --recovery_timeout_ms (set small) has passed, naming
#     the shard and the missing server, instead of staying RECOVERING.
# LOST_DISK_SCENARIOS (e.g. "Q F") runs only those; default all.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

undisturbed_reference 8 'snapshot { every_steps: 20 keep_last: 3 }'

declare -A COORD_PORT

# start_coordinator S ARGS...: scenario S's coordinator on $WORK/S/coordinator,
# on the same port each time; sets COORDINATOR and CTL.
start_coordinator() {
  local s=$1
  shift
  if [ -z "${COORD_PORT[$s]:-}" ]; then
    "$BIN/server/coordinator/psd_coordinator" --insecure --data_dir="$WORK/$s/coordinator" \
      --port_file="$WORK/$s.coordinator.port" "$@" 2>>"$WORK/$s.coordinator.log" &
    PIDS+=($!)
    COORD_PORT[$s]=$(wait_port $! "$WORK/$s.coordinator.port") || fail "coordinator $s did not start"
  else
    "$BIN/server/coordinator/psd_coordinator" --insecure --data_dir="$WORK/$s/coordinator" \
      --listen="127.0.0.1:${COORD_PORT[$s]}" "$@" 2>>"$WORK/$s.coordinator.log" &
    PIDS+=($!)
  fi
  COORDINATOR=127.0.0.1:${COORD_PORT[$s]}
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR")
}

# wait_ended JOB: until the job is SUCCEEDED, FAILED or CANCELLED (bounded:
# a job left RECOVERING fails the test here).
wait_ended() {
  local give_up=$((SECONDS + 150))
  while [ $SECONDS -lt $give_up ]; do
    case $(q "$1" "j.get('state')" 2>/dev/null) in
      SUCCEEDED | FAILED | CANCELLED) return 0 ;;
    esac
    sleep 0.2
  done
  q "$1" 'j.get("state"), j.get("step"), j.get("pendingReason"), j.get("error")' >&2 || true
  fail "job $1 did not end (still $(q "$1" "j.get('state')" 2>/dev/null))"
}

# snapshotted JOB N: until every server of the job lists a snapshot.
snapshotted() {
  local give_up=$((SECONDS + 60))
  while [ $SECONDS -lt $give_up ]; do
    "${CTL[@]}" snapshots "$1" >"$WORK/snapshots.txt" 2>/dev/null &&
      [ "$(grep -c '"step"' "$WORK/snapshots.txt" || true)" -ge "$2" ] && return 0
    sleep 0.1
  done
  cat "$WORK/snapshots.txt" >&2
  fail "job $1: no snapshot on its servers"
}

# run_until_snapshotted S R SERVERS: scenario S's cluster (R replicas,
# SERVERS servers with data directories, 2 workers); submits the job and
# lets it take snapshots on every server. Sets JOB.
run_until_snapshotted() {
  local s=$1 r=$2 n=$3
  shift 3
  start_coordinator "$s" --replication_factor="$r" "$@"
  for i in $(seq "$n"); do start_server "$s.s$i" --data_dir="$WORK/$s/s$i"; done
  start_worker "$s.w1"
  start_worker "$s.w2"
  "${CTL[@]}" --servers="$n" --workers=2 --timeout_s=30 wait-ready >/dev/null
  JOB=$(submit)
  wait_step "$JOB" 100
  snapshotted "$JOB" "$n"
}

# restart S R SERVERS [server ARGS...]: scenario S's processes again on the
# same data directories (each server's ARGS, if any, for every server).
restart() {
  local s=$1 r=$2 n=$3
  shift 3
  start_coordinator "$s" --replication_factor="$r" "${COORD_EXTRA[@]}"
  for i in $(seq "$n"); do start_server "$s.s$i" --data_dir="$WORK/$s/s$i" "$@"; done
  start_worker "$s.w1"
  start_worker "$s.w2"
}

# rebuilt JOB LABEL NAME: every shard has its 2 replicas again, server NAME
# (the one that lost its disk) among them.
rebuilt() {
  wait_until "$1" "all(len(s.get('backups', [])) == 1 for s in j['shards']) and '${SERVER_PORT[$3]}' in [port(s['primary']) for s in j['shards']] + [port(b) for s in j['shards'] for b in s['backups']]" \
    "$2: the lost replica on $3 was not rebuilt"
}

COORD_EXTRA=()
wants() { [[ " ${LOST_DISK_SCENARIOS:-L Q F} " == *" $1 "* ]]; }

# L. A lost disk at R=2.
if wants L; then
run_until_snapshotted L 2 3
lost_uid=$(q "$JOB" "[s['uid'] for s in j['servers'] if port(s['id']) == '${SERVER_PORT[L.s2]}'][0]")
kill_all
rm -rf "$WORK/L/s2"
mkdir -p "$WORK/L/s2"
restart L 2 3
wait_ended "$JOB"
[ "$(q "$JOB" "j['state']")" = SUCCEEDED ] ||
  fail "L: job $JOB $(q "$JOB" "j['state'], j.get('error')")"
resumed=$(q "$JOB" "j.get('resumedFromSteps', [])")
echo "L: lost the disk of server uid $lost_uid; resumed from $resumed"
[ "$resumed" != "[]" ] || fail "L: the job did not resume from a snapshot"
rebuilt "$JOB" L L.s2
finish "$JOB" "L (lost disk, R=2)"
grep -q "is a backup of shard" "$WORK/L.coordinator.log" ||
  fail "L: no state transfer in the coordinator's log"
kill_all
fi

# Q. A damaged MANIFEST at R=2: without the flag the server refuses to
# start; with it, it quarantines the store.
if wants Q; then
run_until_snapshotted Q 2 2
kill_all
damaged=$("$BIN/tests/corrupt_snapshot" --manifest "$WORK/Q/s1/snapshots") ||
  fail "Q: could not damage the MANIFEST"
echo "Q: damaged $damaged"
start_coordinator Q --replication_factor=2
start_server Q.s2 --data_dir="$WORK/Q/s2"
if "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" \
  --data_dir="$WORK/Q/s1" 2>"$WORK/Q.s1.refused.log"; then
  fail "Q: a server with a damaged MANIFEST started"
fi
grep -q "DATA_LOSS" "$WORK/Q.s1.refused.log" || fail "Q: no DATA_LOSS in: $(cat "$WORK/Q.s1.refused.log")"
grep -qF "$WORK/Q/s1/snapshots" "$WORK/Q.s1.refused.log" ||
  fail "Q: the error does not name the store: $(cat "$WORK/Q.s1.refused.log")"
grep -q "on_corrupt_data_dir=quarantine" "$WORK/Q.s1.refused.log" ||
  fail "Q: the error does not name the way out"
start_server Q.s1 --data_dir="$WORK/Q/s1" --on_corrupt_data_dir=quarantine
start_worker Q.w1
start_worker Q.w2
wait_ended "$JOB"
[ "$(q "$JOB" "j['state']")" = SUCCEEDED ] ||
  fail "Q: job $JOB $(q "$JOB" "j['state'], j.get('error')")"
ls -d "$WORK"/Q/s1/snapshots.corrupt-* >/dev/null 2>&1 ||
  fail "Q: the damaged store was not moved aside: $(ls "$WORK/Q/s1")"
grep -q "MOVED TO" "$WORK/Q.s1.log" || fail "Q: the move is not in the server's log"
echo "Q: quarantined to $(ls -d "$WORK"/Q/s1/snapshots.corrupt-*); resumed from $(q "$JOB" "j.get('resumedFromSteps', [])")"
rebuilt "$JOB" Q Q.s1
finish "$JOB" "Q (damaged MANIFEST, quarantined, R=2)"
kill_all
fi

# F. A lost disk at R=1: its shard has no replica left.
if wants F; then
run_until_snapshotted F 1 2
lost_shard=$(q "$JOB" "[s['shard'] if 'shard' in s else 0 for s in j['shards'] if port(s['primary']) == '${SERVER_PORT[F.s2]}'][0]")
lost_uid=$(q "$JOB" "[s['uid'] for s in j['servers'] if port(s['id']) == '${SERVER_PORT[F.s2]}'][0]")
kill_all
rm -rf "$WORK/F/s2"
mkdir -p "$WORK/F/s2"
COORD_EXTRA=(--recovery_timeout_ms=2000)
restart F 1 2
wait_ended "$JOB"
error=$(q "$JOB" "j.get('error', '')")
echo "F: $(q "$JOB" "j['state']"): $error"
[ "$(q "$JOB" "j['state']")" = FAILED ] || fail "F: job $JOB did not fail"
case $error in
  *"shard $lost_shard "*) ;;
  *) fail "F: the error does not name shard $lost_shard" ;;
esac
case $error in
  *"$lost_uid"*) ;;
  *) fail "F: the error does not name the missing server uid $lost_uid" ;;
esac
fi
echo "lost_disk_test: all scenarios passed"
