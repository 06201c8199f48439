#!/usr/bin/env bash
# Runs tests/bench/cluster_push_pull_bench.sh --quick --tls (every
# configuration on a tiny model, real processes, in plaintext and on mutual
# TLS): it must finish and print the summary tables with a row for every
# configuration. Not a measurement: no timing
# is checked.
set -euo pipefail
out=$(RUNFILES_DIR="$TEST_SRCDIR" tests/bench/cluster_push_pull_bench.sh --quick --tls)
echo "$out"
fail() { echo "FAIL: $*" >&2; exit 1; }
echo "$out" | grep -q '^Cluster push/pull over loopback: medians' ||
  fail "no throughput table"
num='[0-9]+\.[0-9]+'
for cfg in '1x1_R1 +1 +1 +1' '1x1_R2 +2 +1 +2' '2x2_R1 +2 +2 +1' '2x2_R2 +2 +2 +2'; do
  echo "$out" | grep -Eq "^$cfg +65536 +[0-9]+ +$num +$num +$num +$num +3\$" ||
    fail "no complete throughput row for ${cfg%% *}"
done
echo "$out" | grep -q '^1 KiB push+pull round trip' || fail "no latency table"
for cfg in '1x1_R1 +1 +1' '1x1_R2 +2 +2'; do
  echo "$out" | grep -Eq "^$cfg +$num +$num +50\$" ||
    fail "no complete latency row for ${cfg%% *}"
done
echo "$out" | grep -q '^TLS cost, same run' || fail "no TLS table"
for cfg in 1x1_R1 1x1_R2 2x2_R1 2x2_R2; do
  echo "$out" | grep -Eq "^$cfg +65536 +$num +$num +$num\$" ||
    fail "no TLS cost row for $cfg"
done
echo "$out" | grep -Eq "^1x1_R2 +1 KiB round trip p50: plaintext $num us, TLS $num us" ||
  fail "no TLS latency row"
echo PASS
