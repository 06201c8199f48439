#!/usr/bin/env bash
# Live resharding (issue 16): servers added to and drained from a running
# job (JobService.ReshardJob, `psd_ctl reshard`). An R=2 BSP job on 3
# servers; once it trains, a 4th server is added (replicas move to it by
# state transfer while training goes on), then one of the first three is
# drained (every replica it held moves away, and it drops the job). The
# oracle of DESIGN invariant 4: the job ends with the checksum of the same
# job run undisturbed, and every replica agrees. Bad requests (a server
# that is not registered, a drain that would leave shards short of
# replicas, a job that is not running) get a clear error and change
# nothing.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

undisturbed_reference 12

start_replicated rs 3 2 2
job=$(submit)
wait_step "$job" 20

# id_of NAME: the cluster view's id of server NAME (by its port).
id_of() {
  "${CTL[@]}" view >"$WORK/view.json"
  python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print([s["id"] for s in j["servers"] if s["address"].endswith(":" + sys.argv[2])][0])' \
    "$WORK/view.json" "${SERVER_PORT[$1]}"
}

# Bad requests first: each refused, naming what is wrong, and the job's
# view unchanged.
epoch=$(epoch_of "$job")
refused() {  # refused WHAT PATTERN ARGS...
  local what=$1 pattern=$2
  shift 2
  if "${CTL[@]}" reshard "$job" "$@" >"$WORK/bad.out" 2>"$WORK/bad.err"; then
    fail "$what: accepted"
  fi
  grep -q "$pattern" "$WORK/bad.err" || { cat "$WORK/bad.err"; fail "$what: unclear error"; }
}
refused "an unregistered server" "NOT_FOUND: add_servers: server nosuch is not registered" --add=nosuch
s1=$(id_of rs.s1)
s2=$(id_of rs.s2)
s3=$(id_of rs.s3)
refused "draining every server but one" "FAILED_PRECONDITION: drain_servers: draining would leave shard" \
  --drain="$s1,$s2"
refused "nothing to do" "INVALID_ARGUMENT: add_servers, drain_servers: both empty"
refused "a server in both lists" "INVALID_ARGUMENT: .*named twice" --add="$s3" --drain="$s3"
if "${CTL[@]}" reshard nosuch-1 --add="$s3" 2>"$WORK/bad.err"; then fail "an unknown job was resharded"; fi
grep -q "NOT_FOUND" "$WORK/bad.err" || { cat "$WORK/bad.err"; fail "unknown job: unclear error"; }
[ "$(epoch_of "$job")" = "$epoch" ] || fail "a refused reshard changed the view"
[ "$(q "$job" 'len(j.get("pendingMoves", []))')" = 0 ] || fail "a refused reshard left moves"
echo "bad requests refused, view epoch $epoch unchanged"

# Add a 4th server.
start_server rs.s4
"${CTL[@]}" --servers=4 --workers=0 --timeout_s=30 wait-ready >/dev/null
s4=$(id_of rs.s4)
"${CTL[@]}" reshard "$job" --add="$s4" >"$WORK/add.out" || { cat "$WORK/add.out"; fail "reshard --add"; }
cat "$WORK/add.out"
grep -q "moves planned" "$WORK/add.out" || fail "reshard --add printed no plan"
[ "$(q "$job" "any('$s4' == s['primary'] or '$s4' in s.get('backups', []) for s in j['shards'])")" = True ] ||
  fail "server $s4 holds no shard of the job after reshard --add"
[ "$(q "$job" 'j["state"]')" = RUNNING ] || fail "the job is not running after the add"

# Drain the first server.
"${CTL[@]}" reshard "$job" --drain="$s1" >"$WORK/drain.out" || { cat "$WORK/drain.out"; fail "reshard --drain"; }
cat "$WORK/drain.out"
[ "$(q "$job" "all('$s1' != s['primary'] and '$s1' not in s.get('backups', []) for s in j['shards'])")" = True ] ||
  fail "server $s1 still holds a shard after reshard --drain"
# Every shard keeps 2 replicas (a backup that missed a step as a primary
# changed hands is repaired by state transfer: wait for it, bounded).
wait_until "$job" 'all(1 + len(s.get("backups", [])) == 2 for s in j["shards"]) or j["state"] != "RUNNING"' \
  "every shard back at 2 replicas after the moves"

finish "$job" "resharded (added $s4, drained $s1)"
grep -q "server $s1 holds no shard of the job any more" "$WORK/rs.coordinator.log" ||
  fail "the drained server was not told to drop the job"
# A finished job is not resharded.
if "${CTL[@]}" reshard "$job" --add="$s1" 2>"$WORK/done.err"; then fail "a finished job was resharded"; fi
grep -q "FAILED_PRECONDITION: job $job is SUCCEEDED" "$WORK/done.err" || { cat "$WORK/done.err"; fail "unclear error for a finished job"; }
echo "reshard_test: PASS"
