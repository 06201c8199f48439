#!/usr/bin/env bash
# psd.torch (issue 18) under failover: R=2, two torch workers; SIGKILL the
# primary of shard 0 mid-job. The job fails over and finishes with the
# checksum of the same job run undisturbed, and the replicas agree.
source tests/cluster_lib.sh
source tests/replicated_lib.sh
source tests/torch_lib.sh

# 6000 examples, 2 workers, batch 32: 93 steps an epoch, 372 in all.
torch_job 2 6000 4 >"$WORK/job.textproto"

start_replicated ref 3 0 2
start_torch_workers ref 2
id=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
wait_torch_workers "undisturbed"
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || fail "undisturbed job $id did not succeed"
reference=$(export_checksum "$id" "$WORK/ref.safetensors")
stop_cluster
echo "undisturbed (R=2): $reference"

start_replicated k 3 0 2
# Slowed down (20 ms a step) so that the kill lands mid-job.
start_torch_workers k 2 --slow_ms=20
job=$(submit)
hit_primary "$job" KILL
echo "killed $VICTIM, the primary of shard 0 (view epoch $EPOCH)"
failed_over "$job" "torch failover"
wait_torch_workers "failover"
finish "$job" "torch, primary killed"
echo PASS
