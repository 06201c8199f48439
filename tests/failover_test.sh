#!/usr/bin/env bash
# Replicated shards, failover and worker replacement (issue 3), asserting the
# oracle of DESIGN invariant 4 after every disturbance: the final parameters'
# checksum equals that of the same job run undisturbed, and every replica of
# every shard holds the same parameters (psd_ctl replicas).
#  1. SIGKILL the primary of a shard mid-job.
#  2. SIGKILL a backup; a server started again rejoins by state transfer.
#  3. SIGSTOP a primary past the heartbeat timeout, then SIGCONT it: it is
#     fenced (no role in the job any more) and rejoins as a backup.
#  4. SIGKILL a worker; a new worker takes its rank.
#  5. R=3: SIGKILL a primary, wait for the shard to have 3 replicas again,
#     then SIGKILL the newly promoted primary.
#  6. ASP (issue 7), R=2: SIGKILL a primary. ASP results depend on arrival
#     order, so the oracle is exactly-once instead of a checksum: every
#     surviving replica has applied every rank's every push (its clocks),
#     and the replicas agree bitwise.
#  7. R=1: SIGKILL a server. No replica is left, so the job FAILS within
#     the heartbeat timeout (2 s here) with a reason naming the server and
#     the shard that lost every replica.
# Every wait is on observable state (view epoch, roles, steps), bounded.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

# The short job, over 16 epochs (1488 steps): long enough for failovers to
# happen mid-job; the undisturbed reference, without replication.
undisturbed_reference 16

# --- R=2 undisturbed: replication does not change the math.
start_replicated r2 3 2 2
job=$(submit)
finish "$job" "R=2 undisturbed"
[ "$(q "$job" 'all(len(s.get("backups", [])) == 1 for s in j["shards"])')" = True ] ||
  fail "R=2: a shard without its backup"
stop_cluster

# --- 1. SIGKILL a primary.
start_replicated k1 3 2 2
job=$(submit)
hit_primary "$job" KILL
echo "scenario 1: killed $VICTIM, the primary of shard 0 (view epoch $EPOCH)"
failed_over "$job" "scenario 1"
finish "$job" "scenario 1 (primary killed)"
stop_cluster

# --- 2. SIGKILL a backup; a server started again joins. With two servers
# and R=2 every server holds every shard, so the killed one (a backup of
# shard 0, the primary of shard 1) leaves both shards one replica short
# until the restarted server rejoins by state transfer.
start_replicated k2 2 2 2
job=$(submit)
victim=$(backup_of "$job" 0)
wait_step "$job" 20
kill -KILL "${SERVER_PID[$victim]}"
echo "scenario 2: killed $victim, a backup of shard 0"
wait_until "$job" "len(shards[0].get('backups', [])) == 0 or port(shards[0]['backups'][0]) != '${SERVER_PORT[$victim]}'" \
  "scenario 2: the dead backup stayed in the view"
start_server k2.s3
wait_until "$job" "all(len(s.get('backups', [])) == 1 for s in j['shards']) and '${SERVER_PORT[k2.s3]}' in [port(b) for s in j['shards'] for b in s.get('backups', [])]" \
  "scenario 2: the new server never became a backup"
finish "$job" "scenario 2 (backup killed, new server joined)"
stop_cluster

# --- 3. SIGSTOP a primary, then SIGCONT it. Two servers (R=2), so the
# stopped one is the only server that can bring the shards back to R.
start_replicated k3 2 2 2
job=$(submit)
hit_primary "$job" STOP
victim=$VICTIM
echo "scenario 3: stopped $victim, the primary of shard 0"
failed_over "$job" "scenario 3"
step_at_failover=$(q "$job" 'int(j.get("step", 0))')
kill -CONT "${SERVER_PID[$victim]}"
# Fenced: once it has heard from the coordinator again it holds no role for
# shard 0 other than a backup's.
give_up=$((SECONDS + 60))
while [ $SECONDS -lt $give_up ]; do
  "${CTL[@]}" servers >"$WORK/servers.json" 2>/dev/null || true
  # psd_ctl servers prints "ID (ADDRESS): JSON" per server.
  role=$(python3 -c '
import json, re, sys
text, port, job = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
starts = list(re.finditer(r"^\S+ \(([^)]*)\): ", text, re.M))
for k, m in enumerate(starts):
  if not m.group(1).endswith(":" + port): continue
  end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
  for jj in json.loads(text[m.end():end]).get("jobs", []):
    if jj["jobId"] != job: continue
    for sh in jj.get("shards", []):
      if sh.get("shard", 0) == 0: print(sh.get("role", "?"))
' "$WORK/servers.json" "${SERVER_PORT[$victim]}" "$job" 2>/dev/null | head -1)
  [ -n "$role" ] && [ "$role" != PRIMARY ] && break
  [ -z "$role" ] && grep -q "registering again" "$WORK/$victim.log" && break
  sleep 0.1
done
[ "${role:-}" != PRIMARY ] || fail "scenario 3: the stopped primary still leads shard 0"
grep -q "registering again" "$WORK/$victim.log" || fail "scenario 3: $victim never registered again"
echo "scenario 3: $victim resumed (step $step_at_failover at failover), role for shard 0 now: ${role:-none}"
wait_until "$job" "'${SERVER_PORT[$victim]}' in [port(b) for s in j['shards'] for b in s.get('backups', [])]" \
  "scenario 3: the fenced server never rejoined as a backup"
finish "$job" "scenario 3 (primary stopped, fenced, rejoined)"
stop_cluster

# --- 4. SIGKILL a worker; a new one takes its rank.
start_replicated k4 3 2 2
job=$(submit)
wait_step "$job" 20
kill -KILL "${WORKER_PID[k4.w2]}"
echo "scenario 4: killed worker k4.w2"
start_worker k4.w3
finish "$job" "scenario 4 (worker killed, replaced)"
grep -q "replacing a worker, resuming at step" "$WORK/k4.w3.log" || fail "scenario 4: the new worker did not take over a rank"
stop_cluster

# --- 5. R=3: kill a primary, then the newly promoted one.
start_replicated k5 4 2 3
job=$(submit)
hit_primary "$job" KILL
first=$VICTIM
echo "scenario 5: killed $first, the primary of shard 0"
failed_over "$job" "scenario 5" "len(shards[0].get('backups', [])) == 2"
hit_primary "$job" KILL
echo "scenario 5: killed $VICTIM, the promoted primary of shard 0"
failed_over "$job" "scenario 5 (second)" "port(shards[0]['primary']) != '${SERVER_PORT[$first]}'"
finish "$job" "scenario 5 (two primaries killed, R=3)"
stop_cluster

# --- 6. ASP, R=2: kill a primary.
sed 's/^consistency: BSP$/consistency: ASP/' "$WORK/job.textproto" >"$WORK/asp.textproto"
grep -q '^consistency: ASP$' "$WORK/asp.textproto" || fail "sed did not set ASP"
start_replicated k6 3 2 2
job=$(submit "$WORK/asp.textproto")
hit_primary "$job" KILL
echo "scenario 6: killed $VICTIM, the primary of shard 0 of an ASP job"
failed_over "$job" "scenario 6"
"${CTL[@]}" watch "$job" >"$WORK/$job.watch" || { tail -5 "$WORK/$job.watch"; fail "scenario 6: job $job did not succeed"; }
"${CTL[@]}" replicas "$job" >"$WORK/$job.replicas" || { cat "$WORK/$job.replicas"; fail "scenario 6: replicas differ"; }
total=$(q "$job" 'int(j["totalSteps"])')
checked=$(servers_with_all_pushes "$job" "$total") || fail "scenario 6: a push was lost: $checked"
[ "$checked" -ge 2 ] || fail "scenario 6: only $checked servers hold the job"
echo "scenario 6 (ASP, primary killed): $(grep -o 'test accuracy [0-9.]*' "$WORK/$job.watch" | tail -1), every rank's $total pushes applied on $checked servers, $(tail -1 "$WORK/$job.replicas")"
stop_cluster

# --- 7. R=1: kill a server; the job fails, naming what was lost.
start_replicated k7 2 2 1 --heartbeat_timeout_ms=2000
job=$(submit)
hit_primary "$job" KILL
echo "scenario 7: killed $VICTIM, the only replica of shard 0"
wait_until "$job" "j.get('state') == 'FAILED'" "scenario 7: the job did not fail after its only replica died"
reason=$(q "$job" 'j.get("error", "")')
for want in "lost every replica" "heartbeat"; do
  grep -q "$want" <<<"$reason" || fail "scenario 7: the reason does not say '$want': $reason"
done
grep -q "shard 0" <<<"$reason" || fail "scenario 7: the reason does not name shard 0: $reason"
echo "scenario 7 (R=1, server killed): FAILED: $reason"
stop_cluster

echo "failover_test: all scenarios passed"
