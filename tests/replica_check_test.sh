#!/usr/bin/env bash
# Replicas that drift apart are noticed and repaired (issue 23 item 6), with
# the checksum oracle of DESIGN invariant 4. An R=2 BSP job on 2 servers
# (so every server holds every shard, as a primary or a backup); server s2
# runs with the test-only hook --test_corrupt_backup_at_step=25: as a
# backup it changes its partitions' weights at step 25, behind its
# primaries' backs. The replica check (every 10 steps here) must find the
# drift, log it, count it in psd_server_replica_mismatches_total, and the
# coordinator must repair the backup by state transfer: the job ends with
# the undisturbed checksum, every replica agrees (psd_ctl replicas), and
# GetJob reports a verified step after the drift.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

undisturbed_reference 12

CHECK=(--replica_check_every_steps=10)
start_replicated rc 0 0 2
start_server rc.s1 "${CHECK[@]}"
start_server rc.s2 "${CHECK[@]}" --test_corrupt_backup_at_step=25 \
  --metrics_listen=127.0.0.1:0 --metrics_port_file="$WORK/rc.s2.mport"
start_worker rc.w1
start_worker rc.w2
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready
job=$(submit)
epoch0=$(epoch_of "$job")

finish "$job" "drifted backup repaired"
[ "$(q "$job" 'all(len(s.get("backups", [])) == 1 for s in j["shards"])')" = True ] ||
  fail "the job ended with a shard short of its backup (no repair)"
# The drift was found: s2 refused the replication of a check step, the
# coordinator took it out of the shard's view and brought it back by state
# transfer (a newer view in which every shard has its backup again).
grep -q 'replica check' "$WORK/rc.s2.log" ||
  fail "s2 did not log a replica mismatch"
grep 'replica check' "$WORK/rc.s2.log" | head -1
grep -q 'refuses replication.*replica check' "$WORK/rc.coordinator.log" ||
  fail "the coordinator did not take the drifted backup out of the view"
[ "$(epoch_of "$job")" -gt "$epoch0" ] || fail "the view never changed"
mismatches=$(python3 -c '
import sys, urllib.request
for line in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines():
  if line.startswith("psd_server_replica_mismatches_total "):
    print(int(float(line.split()[1])))' \
  "http://127.0.0.1:$(cat "$WORK/rc.s2.mport")/metrics")
[ "${mismatches:-0}" -ge 1 ] || fail "psd_server_replica_mismatches_total is ${mismatches:-absent} on s2"
echo "s2 counted $mismatches replica mismatch(es)"
# A check passed after the repair.
verified=$(q "$job" "int(j.get('replicasVerifiedStep', 0))")
[ "$verified" -gt 30 ] || fail "replicas last verified at step $verified"
echo "replicas last verified at step $verified of $(q "$job" "int(j.get('step', 0))")"
stop_cluster
echo PASS
