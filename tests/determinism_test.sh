#!/usr/bin/env bash
# The oracle of DESIGN invariant 4: a BSP job gives bitwise the same final
# parameters every time, and on a cluster with another number of servers and
# another partition size (so another placement of the partitions).
source tests/cluster_lib.sh

write_short_job "$WORK/short.textproto"
start_cluster a 2 2
first=$(run_job "$WORK/short.textproto" "$WORK/1.safetensors")
second=$(run_job "$WORK/short.textproto" "$WORK/2.safetensors")
stop_cluster
# 3 servers and 4 KiB partitions: another placement, and hundreds of pulls
# waiting on each server at once.
sed 's/^seed: 42$/seed: 42\npartition_bytes: 4096/' "$WORK/short.textproto" >"$WORK/small.textproto"
grep -q 'partition_bytes: 4096' "$WORK/small.textproto" || fail "sed did not add partition_bytes"
start_cluster b 3 2
third=$(run_job "$WORK/small.textproto" "$WORK/3.safetensors")
echo "run 1 $first, run 2 $second, run 3 (3 servers, 4 KiB partitions) $third"
[ "$first" = "$second" ] || fail "two runs on one cluster differ: $first vs $second"
[ "$first" = "$third" ] || fail "2 servers vs 3 servers with small partitions differ: $first vs $third"
echo PASS
