#!/usr/bin/env bash
# The control plane under load and under one slow answer (issue 23 items 3
# and 4), each with the checksum oracle of DESIGN invariant 4 on an R=1
# job, where no failover can mask a false eviction or a lost start.
#  1. A burst of job-API calls: an R=1 job runs while 200
# callers hammer JobService (SubmitJob refused + ListJobs, back to back);
# the heartbeat timeout is set small (900 ms) so a few refused or late
# heartbeats would evict a member, and the coordinator's job-API threads
# few (4), so the burst exhausts them (RESOURCE_EXHAUSTED answers).
#  2. One slow control call: a server is SIGSTOPped for 1.5 s while the job
#     starts, so the coordinator's CreateJob to it (300 ms deadline) times
#     out; retried with backoff, the job starts and succeeds. The job must succeed with the checksum of
# the same job run undisturbed, with no member removed.
source tests/cluster_lib.sh

undisturbed_reference 8

# 4 job-API threads: the burst exhausts them for sure.
COORDINATOR_ARGS=(--heartbeat_timeout_ms=900 --max_api_threads=4)
start_cluster burst 2 2
id=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
# Wait until it trains, then burst.
give_up=$((SECONDS + 60))
until "${CTL[@]}" get "$id" 2>/dev/null | grep_all '"step": "[1-9]'; do
  [ $SECONDS -lt $give_up ] || fail "job $id never started training"
  sleep 0.1
done
"$BIN/tests/api_burst" --coordinator="$COORDINATOR" --threads=200 --seconds=6 \
  >"$WORK/burst.out" || fail "api_burst failed"
echo "burst: status code -> calls: $(tr '\n' ' ' <"$WORK/burst.out")"
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { tail -5 "$WORK/$id.watch"; fail "job $id did not succeed under the burst"; }
"${CTL[@]}" export "$id" "$WORK/burst.safetensors" >"$WORK/$id.export" || fail "export"
sum=$(grep -o 'crc32:[0-9a-f]*' "$WORK/$id.export")
[ "$sum" = "$reference" ] || fail "checksum $sum under the burst, undisturbed $reference"
if grep -q "missed heartbeats" "$WORK/burst.coordinator.log"; then
  grep "missed heartbeats" "$WORK/burst.coordinator.log" >&2
  fail "a member was evicted during the burst"
fi
# The burst was real: thousands of calls, and the job-API threads ran out
# (RESOURCE_EXHAUSTED, code 8) while membership calls went on.
total=$(awk '{n += $2} END {print n + 0}' "$WORK/burst.out")
[ "$total" -ge 1000 ] || fail "only $total calls in the burst"
grep -q '^8 ' "$WORK/burst.out" || fail "the burst never exhausted the job-API threads"
echo "scenario 1: the job succeeded under the burst ($sum), no member evicted"
stop_cluster

COORDINATOR_ARGS=(--heartbeat_timeout_ms=8000 --server_call_timeout_ms=300)
start_cluster slow 2 2
server_pid=${PIDS[1]}  # start_cluster: the coordinator, then the servers
kill -STOP "$server_pid"
id=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
sleep 1.5
kill -CONT "$server_pid"
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { tail -5 "$WORK/$id.watch"; fail "scenario 2: job $id did not succeed after one slow CreateJob"; }
"${CTL[@]}" export "$id" "$WORK/slow.safetensors" >"$WORK/$id.export" || fail "export"
sum=$(grep -o 'crc32:[0-9a-f]*' "$WORK/$id.export")
[ "$sum" = "$reference" ] || fail "scenario 2: checksum $sum, undisturbed $reference"
grep -q "control call failed" "$WORK/slow.coordinator.log" ||
  fail "scenario 2: no control call was retried (the server was not slow?)"
echo "scenario 2: a CreateJob timed out and was retried; the job succeeded ($sum)"
echo "control_plane_test: all scenarios passed"
