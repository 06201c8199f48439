#!/usr/bin/env bash
# Consistency models (issue 7): ASP and SSP jobs on the short Fashion-MNIST
# job reach BSP's accuracy band, and under SSP with one worker slowed down
# (psd_worker --test_slow_ms_per_step, a test-only flag) no worker ever reads
# beyond the staleness bound: every server records the largest staleness
# c - min_clock it answered a pull with (GetServerStatus), and it must be
# <= s. The same slowed cluster under ASP shows a staleness above s, so the
# bound is what holds SSP back, and the coordinator's job status shows the
# same staleness and the ranks' clocks. A BSP job with an SSP parameter
# group (its first layer) reaches the band too. With R=2, ASP and SSP
# replicas end bitwise equal.
source tests/cluster_lib.sh

# ASP/SSP final test accuracy within this of BSP's. ASP's result depends on
# the order pushes arrive in; on a loaded machine (a CI run with other
# cluster tests beside it) one rank runs ahead, and this 2-epoch job has
# measured 0.79-0.85 under ASP against BSP's 0.8425.
BAND=0.06
STALENESS=2
SLOW_MS=30

write_short_job "$WORK/bsp.textproto"
sed 's/^consistency: BSP$/consistency: ASP/' "$WORK/bsp.textproto" >"$WORK/asp.textproto"
sed "s/^consistency: BSP\$/consistency: SSP\nstaleness: $STALENESS/" \
  "$WORK/bsp.textproto" >"$WORK/ssp.textproto"
# Per parameter group: the job is BSP, its first layer SSP.
cat "$WORK/bsp.textproto" - >"$WORK/groups.textproto" <<JOB
parameter_groups { parameters: ["layer0.weight", "layer0.bias"] consistency: SSP staleness: $STALENESS }
JOB
grep -q '^consistency: ASP$' "$WORK/asp.textproto" || fail "sed did not set ASP"
grep -q "^staleness: $STALENESS\$" "$WORK/ssp.textproto" || fail "sed did not set SSP"

# final_accuracy: the job's test accuracy from its watch output.
final_accuracy() {
  local id
  id=$(cat "$WORK/last_job")
  grep -o 'SUCCEEDED.*test accuracy [0-9.]*' "$WORK/$id.watch" | awk '{print $NF}'
}

# server_staleness: "MAX PULLS" over every server's status of the cluster's
# (only) job: the largest max_staleness and the pulls counted.
server_staleness() {
  "${CTL[@]}" servers >"$WORK/servers.json" || fail "psd_ctl servers"
  python3 - "$WORK/servers.json" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
most = max([int(v) for v in re.findall(r'"maxStaleness": "(\d+)"', text)] + [0])
pulls = 0
for block in re.findall(r'"stalenessCounts": \[([^\]]*)\]', text):
    pulls += sum(int(v) for v in re.findall(r'"(\d+)"', block))
print(most, pulls)
PY
}

start_cluster a 2 2
bsp_crc=$(run_job "$WORK/bsp.textproto" "$WORK/bsp.safetensors")
bsp=$(final_accuracy)
run_job "$WORK/asp.textproto" "$WORK/asp.safetensors" >/dev/null
asp=$(final_accuracy)
run_job "$WORK/ssp.textproto" "$WORK/ssp.safetensors" >/dev/null
ssp=$(final_accuracy)
groups_crc=$(run_job "$WORK/groups.textproto" "$WORK/groups.safetensors")
groups=$(final_accuracy)
# The group's updates are applied per push (ASP/SSP rule), not as BSP's
# one averaged step: the trained parameters differ.
[ "$groups_crc" != "$bsp_crc" ] || fail "the SSP group trained exactly as BSP ($bsp_crc)"
"${CTL[@]}" servers >"$WORK/groups.servers.json" || fail "psd_ctl servers"
grep -q "\"consistency\": \"BSP; SSP(s=$STALENESS): layer0.weight, layer0.bias\"" \
  "$WORK/groups.servers.json" ||
  { cat "$WORK/groups.servers.json"; fail "the servers do not show the parameter group"; }
stop_cluster
echo "final test accuracy: BSP $bsp, ASP $asp, SSP(s=$STALENESS) $ssp, BSP + SSP group $groups"
for pair in "ASP $asp" "SSP $ssp" "groups $groups"; do
  set -- $pair
  awk -v a="$2" -v b="$bsp" -v d="$BAND" 'BEGIN { exit !(a >= b - d) }' ||
    fail "$1 accuracy $2 is more than $BAND below BSP's $bsp"
done

# start_slow_cluster NAME: coordinator, 2 servers, 1 normal worker and 1
# worker slowed by SLOW_MS per step.
start_slow_cluster() {
  local name=$1
  "$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/$name.coordinator.port" \
    2>"$WORK/$name.coordinator.log" &
  PIDS+=($!)
  COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/$name.coordinator.port") ||
    fail "coordinator $name did not start"
  for i in 1 2; do
    "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" \
      2>"$WORK/$name.server$i.log" &
    PIDS+=($!)
  done
  "$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" \
    2>"$WORK/$name.worker1.log" &
  PIDS+=($!)
  "$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" \
    --test_slow_ms_per_step="$SLOW_MS" 2>"$WORK/$name.worker2-slow.log" &
  PIDS+=($!)
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR")
  "${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
}

# job_staleness: "MAX CLOCKS" from the last job's status at the coordinator
# (JobStatus.max_staleness and worker_clocks, reported by the servers).
job_staleness() {
  "${CTL[@]}" get "$(cat "$WORK/last_job")" >"$WORK/job.json" || fail "psd_ctl get"
  python3 - "$WORK/job.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
print(int(job.get("maxStaleness", "0")),
      ",".join(job.get("workerClocks", [])) or "none")
PY
}

start_slow_cluster ssp_slow
run_job "$WORK/ssp.textproto" "$WORK/ssp_slow.safetensors" >/dev/null
read -r ssp_max ssp_pulls < <(server_staleness)
read -r job_max job_clocks < <(job_staleness)
stop_cluster
echo "SSP job status: max staleness $job_max, worker clocks $job_clocks"
[ "$job_clocks" != none ] || fail "the job status has no worker clocks"
[ "$job_max" -eq "$ssp_max" ] ||
  fail "the job status says max staleness $job_max, the servers $ssp_max"
echo "SSP(s=$STALENESS), one worker +${SLOW_MS} ms/step: max staleness $ssp_max over $ssp_pulls pulls"
[ "$ssp_pulls" -gt 0 ] || fail "the servers recorded no SSP pulls"
[ "$ssp_max" -le "$STALENESS" ] || fail "SSP read beyond the bound: staleness $ssp_max > $STALENESS"
# The slow worker held the fast one at the bound.
[ "$ssp_max" -eq "$STALENESS" ] || fail "the slowed run never reached the bound (max $ssp_max)"

start_slow_cluster asp_slow
run_job "$WORK/asp.textproto" "$WORK/asp_slow.safetensors" >/dev/null
read -r asp_max asp_pulls < <(server_staleness)
stop_cluster
echo "ASP, one worker +${SLOW_MS} ms/step: max staleness $asp_max over $asp_pulls pulls"
[ "$asp_max" -gt "$STALENESS" ] || fail "ASP with a slow worker stayed within $STALENESS (max $asp_max)"

# Replication (R=2): every ASP/SSP update reaches the backup before it is
# visible, pushes arriving meanwhile are aggregated, and the backups end
# bitwise equal to their primaries (psd_ctl replicas compares checksums).
"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/r2.coordinator.port" \
  --replication_factor=2 2>"$WORK/r2.coordinator.log" &
PIDS+=($!)
COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/r2.coordinator.port") ||
  fail "coordinator r2 did not start"
for i in 1 2; do
  "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" 2>"$WORK/r2.server$i.log" &
  PIDS+=($!)
done
for i in 1 2; do
  "$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" 2>"$WORK/r2.worker$i.log" &
  PIDS+=($!)
done
CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR")
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
for mode in asp ssp; do
  run_job "$WORK/$mode.textproto" "$WORK/$mode.r2.safetensors" >/dev/null
  id=$(cat "$WORK/last_job")
  acc=$(final_accuracy)
  "${CTL[@]}" replicas "$id" >"$WORK/$id.replicas" ||
    { cat "$WORK/$id.replicas"; fail "$mode R=2: replicas differ"; }
  echo "$mode R=2: test accuracy $acc, $(tail -1 "$WORK/$id.replicas")"
  awk -v a="$acc" -v b="$bsp" -v d="$BAND" 'BEGIN { exit !(a >= b - d) }' ||
    fail "$mode R=2 accuracy $acc is more than $BAND below BSP's $bsp"
done
stop_cluster
echo PASS
