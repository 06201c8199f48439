#!/usr/bin/env bash
# A backup that is alive but applies no replication never holds a step
# (issue 23 item 5, the replica half). An R=2 BSP job on 2 servers (so every
# server holds every shard, as a primary or a backup); server s2 runs with
# the test-only hook --test_stall_replicate_at_step=30: as a backup it holds
# every replication of step 30 unanswered for 4 s, while its heartbeats go
# on (SIGSTOP would stop those too: an ordinary failover, not this case).
# The primaries run with a small --backup_stall_ms, so s1 reports s2 in its
# next heartbeat once a call of step 30 has failed past that bound; the
# coordinator takes s2 out of the shard's view (not a failover: s2 stays a
# member), step 30 completes without it, JobStatus.stalls names s2 and for
# how long, and a state transfer brings s2 back as the shard's backup. The
# job ends with the checksum of the same job run undisturbed, and every
# replica agrees. Without the report (--backup_stall_ms=0) the job would
# wait for s2 as long as the stall lasts.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

undisturbed_reference 2

STALL=(--backup_stall_ms=500)
start_replicated bs 0 0 2
start_server bs.s1 "${STALL[@]}"
start_server bs.s2 "${STALL[@]}" --test_stall_replicate_at_step=30 \
  --test_stall_replicate_ms=4000
start_worker bs.w1
start_worker bs.w2
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
job=$(submit)
epoch0=$(epoch_of "$job")
[ "$(q "$job" "any(port(b) == '${SERVER_PORT[bs.s2]}' for s in j['shards'] for b in s.get('backups', []))")" = True ] ||
  fail "s2 backs up no shard (nothing to stall)"

finish "$job" "stalled backup dropped and re-synced"

# s2 stalled: it held step 30's replication.
grep -q 'TEST HOOK --test_stall_replicate_at_step' "$WORK/bs.s2.log" ||
  fail "s2 never held a replication of step 30"
# The coordinator took it out of the view for it, while it stayed a member.
grep -q 'refuses replication (has not applied step 30 for [0-9]* ms .*out of the view' \
  "$WORK/bs.coordinator.log" ||
  fail "the coordinator did not take the stalled backup out of the view"
grep 'has not applied step 30' "$WORK/bs.coordinator.log" | head -1
# The job status names the stalled replica and for how long.
stall=$(q "$job" "[s for s in j.get('stalls', []) if ':${SERVER_PORT[bs.s2]}) has not applied step 30 for' in s]")
[ "$stall" != "[]" ] && [ -n "$stall" ] || {
  q "$job" "j.get('stalls')" >&2 || true
  fail "JobStatus.stalls does not name the stalled backup s2"
}
q "$job" "[s for s in j['stalls'] if 'has not applied step 30' in s][0]"
q "$job" "all(' out of the view until a state transfer' in s for s in j['stalls'])" | grep_all True ||
  fail "a stalls line does not say what became of the backup"
# Re-synced: a state transfer brought s2 back after it was dropped, and the
# job ended with every shard's backup in the view.
dropped=$(grep -n 'has not applied step 30' "$WORK/bs.coordinator.log" | head -1 | cut -d: -f1)
back=$(awk -v d="$dropped" 'NR > d && /is a backup of shard/ { print NR; exit }' "$WORK/bs.coordinator.log")
[ -n "$back" ] || fail "no state transfer brought the backup back after the stall"
sed -n "${back}p" "$WORK/bs.coordinator.log"
[ "$(q "$job" 'all(len(s.get("backups", [])) == 1 for s in j["shards"])')" = True ] ||
  fail "the job ended with a shard short of its backup (no re-sync)"
[ "$(q "$job" "all(port(s['backups'][0]) == '${SERVER_PORT[bs.s2]}' or port(s['primary']) == '${SERVER_PORT[bs.s2]}' for s in j['shards'])")" = True ] ||
  fail "s2 is not back in the view"
[ "$(epoch_of "$job")" -gt "$epoch0" ] || fail "the view never changed"
# Not a failover: the member named as stalled is s2's member in the final
# view (a server expelled for missed heartbeats registers under a new id).
[ "$(q "$job" "[i for i in addr if port(i) == '${SERVER_PORT[bs.s2]}'][0] in [s for s in j['stalls'] if 'has not applied step 30' in s][0]")" = True ] ||
  fail "s2 was expelled as a dead member after its stall: a failover, not a stalled backup"
stop_cluster
echo PASS
