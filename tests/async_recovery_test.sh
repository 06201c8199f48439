#!/usr/bin/env bash
# Snapshots and whole-cluster recovery of an ASP job (issue 7; DESIGN
# invariant 6). Snapshot step k means, for every consistency model, that
# every rank's pushes of steps < k are applied; an ASP partition is captured
# when its slowest rank's clock reaches k, with its per-rank clocks, so the
# ranks restarted at k have the pushes a partition holds already
# acknowledged as duplicates (docs/ARCHITECTURE.md, "Snapshots and
# recovery"). With R=2 on 2 servers (every shard on both):
#  1. the BSP short job, for the reference accuracy (BSP is deterministic);
#  2. an ASP job with snapshot.every_steps, and one snapshot on demand (the
#     coordinator picks its step from the slowest rank's clock): SIGKILL
#     every process mid-job once both servers hold that one,
#     restart them on the same data directories; the job resumes from a
#     snapshot and SUCCEEDs within consistency_test.sh's band of BSP's
#     accuracy, every rank's clock on every server is the job's total steps
#     (each push applied exactly once: a push applied twice cannot show, but
#     one lost leaves a clock behind and the rank's next push is refused as
#     a gap), and the replicas agree bitwise.
source tests/cluster_lib.sh
source tests/persistent_lib.sh

BAND=0.06  # as tests/consistency_test.sh
# One worker is slowed down (a test-only flag): the job then lasts long
# enough to be killed mid-way however fast the machine, and under ASP the
# other rank runs far ahead, so a snapshot (taken at the slow rank's clock)
# holds many pushes of the fast rank past its step, which the restarted
# fast rank sends again and must see acknowledged as duplicates.
SLOW_MS=40

write_short_job "$WORK/bsp.textproto"
sed 's/^consistency: BSP$/consistency: ASP/' "$WORK/bsp.textproto" >"$WORK/asp.textproto"
grep -q '^consistency: ASP$' "$WORK/asp.textproto" || fail "sed did not set ASP"
echo 'snapshot { every_steps: 20 keep_last: 3 }' >>"$WORK/asp.textproto"

# start_persistent: coordinator (R=2), 2 servers and 2 workers, with data
# directories under $WORK (worker2 slowed by SLOW_MS per step); the
# coordinator keeps its port across restarts.
PORT=
start_persistent() {
  if [ -z "$PORT" ]; then
    start_node coordinator coordinator --data_dir="$WORK/coordinator" \
      --replication_factor=2 --port_file="$WORK/coordinator.port"
    PORT=$(wait_port "${PIDS[-1]}" "$WORK/coordinator.port") || fail "coordinator did not start"
  else
    start_node coordinator coordinator --data_dir="$WORK/coordinator" \
      --replication_factor=2 --listen="127.0.0.1:$PORT"
  fi
  COORDINATOR=127.0.0.1:$PORT
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR")
  start_node server1 server --data_dir="$WORK/server1"
  start_node server2 server --data_dir="$WORK/server2"
  start_node worker1 worker
  start_node worker2 worker --test_slow_ms_per_step="$SLOW_MS"
}

# snapshot_steps JOB: the steps of the job's snapshots on every server, one
# line per server.
snapshot_steps() {
  "${CTL[@]}" snapshots "$1" 2>/dev/null | python3 -c '
import json, re, sys
for chunk in re.split(r"^server-\S+ \(\S+\): ", sys.stdin.read(), flags=re.M)[1:]:
    print(" ".join(s["step"] for s in json.loads(chunk).get("snapshots", [])))'
}

start_persistent
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready >/dev/null

# 1. BSP reference.
id=$("${CTL[@]}" submit "$WORK/bsp.textproto") || fail "submit BSP"
"${CTL[@]}" watch "$id" >"$WORK/bsp.watch" || { cat "$WORK/bsp.watch"; fail "BSP job failed"; }
bsp=$(grep -o 'SUCCEEDED.*test accuracy [0-9.]*' "$WORK/bsp.watch" | awk '{print $NF}')

# common_step JOB: the newest step both servers hold a snapshot of, or 0.
common_step() {
  snapshot_steps "$1" | python3 -c '
import sys
sets = [set(int(s) for s in l.split()) for l in sys.stdin if l.strip()]
common = set.intersection(*sets) if len(sets) == 2 else set()
print(max(common) if common else 0)'
}

# 2. ASP with snapshots: once both servers hold one (every_steps), ask for
#    one on demand (the coordinator picks a step ahead of the slowest
#    rank's clock), and kill everything once both servers hold it.
job=$("${CTL[@]}" submit "$WORK/asp.textproto") || fail "submit ASP"
common=0
for _ in $(seq 600); do
  common=$(common_step "$job")
  [ "$common" -ge 20 ] && break
  sleep 0.05
done
[ "$common" -ge 20 ] || fail "no common snapshot: $(snapshot_steps "$job" | tr '\n' '|')"
on_demand=$("${CTL[@]}" snapshot "$job" | grep -o 'step [0-9]*' | grep -o '[0-9]*') ||
  fail "the on-demand snapshot of the ASP job was refused"
for _ in $(seq 600); do
  common=$(common_step "$job")
  [ "$common" -ge "$on_demand" ] && break
  sleep 0.05
done
[ "$common" -ge "$on_demand" ] ||
  fail "the on-demand snapshot at step $on_demand is not on both servers: $(snapshot_steps "$job" | tr '\n' '|')"
kill_all
start_persistent
"${CTL[@]}" --servers=2 --workers=0 --timeout_s=30 wait-ready >/dev/null ||
  fail "the restarted cluster did not come up"
"${CTL[@]}" watch "$job" >"$WORK/asp.watch" || { tail -5 "$WORK/asp.watch"; fail "ASP job $job did not succeed"; }
"${CTL[@]}" get "$job" >"$WORK/asp.json" || fail "psd_ctl get"
read -r resumed total < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print((j.get("resumedFromSteps") or ["none"])[0], j["totalSteps"])' "$WORK/asp.json")
asp=$(grep -o 'SUCCEEDED.*test accuracy [0-9.]*' "$WORK/asp.watch" | awk '{print $NF}')
echo "ASP: on-demand snapshot at step $on_demand, snapshots at a common step $common before the kill, resumed from step $resumed of $total, accuracy $asp (BSP $bsp)"
[ "$resumed" != none ] && [ "$resumed" -ge "$on_demand" ] ||
  fail "the ASP job did not resume from a snapshot at or after step $on_demand ($resumed)"
awk -v a="$asp" -v b="$bsp" -v d="$BAND" 'BEGIN { exit !(a >= b - d) }' ||
  fail "ASP accuracy $asp is more than $BAND below BSP's $bsp"
"${CTL[@]}" replicas "$job" >"$WORK/asp.replicas" || { cat "$WORK/asp.replicas"; fail "replicas differ"; }
checked=$(servers_with_all_pushes "$job" "$total") || fail "a push was lost or applied twice: $checked"
[ "$checked" -eq 2 ] || fail "only $checked servers hold the job"
echo "ASP: every rank's $total pushes applied on $checked servers, $(tail -1 "$WORK/asp.replicas")"
echo PASS
