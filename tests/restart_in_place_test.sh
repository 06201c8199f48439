#!/usr/bin/env bash
# A parameter server SIGKILLed and started again at once on its own
# --data_dir and port (what a container restart on Kubernetes does), with
# the checksum oracle of DESIGN invariant 4 (issue 20 item 1, issue 23 item
# 2). The server comes back with the same data directory, so the same
# server uid, before, during or after the coordinator's heartbeat timeout.
# Each time the coordinator must treat it as a failure followed by a
# rejoin: the shards it led fail over to their backups, and it comes back
# as a backup by state transfer. R=2 on 2 servers, so the restarted server
# is the only one that can bring the shards back to 2 replicas.
#  1. Restarted before the heartbeat timeout (4 s) could expire it.
#  2. Restarted half-way through the heartbeat timeout.
#  3. Restarted after the timeout expired it and its shards failed over.
#  4. Restarted twice in a row: the second registration comes while the
#     view change of the first is under way.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

undisturbed_reference 12

SERVER_DATA=1

# restart NAME: SIGKILLs server NAME and starts it again on its data
# directory and port.
restart() {
  kill -KILL "${SERVER_PID[$1]}"
  wait "${SERVER_PID[$1]}" 2>/dev/null || true
  start_server "$1" --data_dir="$WORK/$1.data" \
    --listen="127.0.0.1:${SERVER_PORT[$1]}"
}

# scenario N TIMEOUT_MS DELAY: a fresh cluster; at step 20 the primary of
# shard 0 is SIGKILLed; DELAY is "now", a number of seconds to wait, or
# "failover" (wait for the coordinator to fail the shard over); then it is
# started again; the job must end with the reference checksum, its shard 0
# led by the other server, and both servers replicas again.
scenario() {
  local n=$1 timeout_ms=$2 delay=$3 old
  start_replicated "r$n" 2 2 2 --heartbeat_timeout_ms="$timeout_ms"
  local job
  job=$(submit)
  VICTIM=$(primary_of "$job" 0)
  old=$(q "$job" "shards[0]['primary']")
  EPOCH=$(epoch_of "$job")
  wait_step "$job" 20
  case $delay in
    now) restart "$VICTIM" ;;
    failover)
      kill -KILL "${SERVER_PID[$VICTIM]}"
      wait_until "$job" "shards[0].get('primary', '') not in ('', '$old')" \
        "scenario $n: no failover of shard 0"
      start_server "$VICTIM" --data_dir="$WORK/$VICTIM.data" \
        --listen="127.0.0.1:${SERVER_PORT[$VICTIM]}" ;;
    twice)
      restart "$VICTIM"
      restart "$VICTIM" ;;
    *) kill -KILL "${SERVER_PID[$VICTIM]}"; sleep "$delay"
      start_server "$VICTIM" --data_dir="$WORK/$VICTIM.data" \
        --listen="127.0.0.1:${SERVER_PORT[$VICTIM]}" ;;
  esac
  echo "scenario $n: restarted $VICTIM ($delay), the primary of shard 0 ($old)"
  wait_until "$job" "shards[0].get('primary', '') not in ('', '$old') and int(j['viewEpoch']) > $EPOCH" \
    "scenario $n: shard 0 still names the dead primary $old"
  wait_until "$job" "all(len(s.get('backups', [])) == 1 for s in j['shards'])" \
    "scenario $n: the restarted server never rejoined as a backup"
  finish "$job" "scenario $n (restarted in place: $delay)"
  grep -q "registered again from the same data directory\|missed heartbeats" \
    "$WORK/r$n.coordinator.log" || fail "scenario $n: the old member was never removed"
  stop_cluster
}

scenario 1 4000 now
scenario 2 4000 2
scenario 3 1500 failover
scenario 4 4000 twice
echo "restart_in_place_test: all scenarios passed"
