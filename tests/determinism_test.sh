#!/usr/bin/env bash
# The oracle of DESIGN invariant 4: a BSP job gives bitwise the same final
# parameters every time, and on a cluster with another number of servers
# (so another placement of the partitions).
source tests/cluster_lib.sh

write_short_job "$WORK/short.textproto"
start_cluster a 2 2
first=$(run_job "$WORK/short.textproto" "$WORK/1.safetensors")
second=$(run_job "$WORK/short.textproto" "$WORK/2.safetensors")
stop_cluster
start_cluster b 3 2
third=$(run_job "$WORK/short.textproto" "$WORK/3.safetensors")
echo "run 1 $first, run 2 $second, run 3 (3 servers) $third"
[ "$first" = "$second" ] || fail "two runs on one cluster differ: $first vs $second"
[ "$first" = "$third" ] || fail "2 servers vs 3 servers differ: $first vs $third"
echo PASS
