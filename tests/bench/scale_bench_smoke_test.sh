#!/usr/bin/env bash
# scale_bench with N=50 simulated workers and 2 servers on a small model
# (real coordinator, servers and gRPC on loopback), twice: plain, and with
# the primary of shard 0 SIGKILLed mid-job (R=2, failover). Each time the
# job must SUCCEED and every simulated push must be applied exactly once:
# rank 0's parameters after the last step equal, bit for bit, the replay
# of the servers' BSP sums of the known gradients (scale_bench.cc); without
# the kill the servers must also have counted at least N x partitions x
# steps pushes. Not a measurement: no timing is checked.
set -euo pipefail
out=$TEST_TMPDIR/results.jsonl
run() {
  RUNFILES_DIR="$TEST_SRCDIR" tests/bench/scale_bench.sh --workers 50 --servers 2 \
    --floats 16384 --steps 8 --interval 0 --quiet 1 --deadline 90 --out "$out" "$@"
}
run
run --kill
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(wc -l <"$out")" -eq 2 ] || fail "want two result lines in $out"
python3 - "$out" <<'PY' || fail "result check"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    assert r["workers"] == 50 and r["servers_started"] == 2, r
    assert r["job_state"] == "SUCCEEDED", r["job_state"]
    assert r["exactly_once"] == "yes" and r["exact_mismatches"] == 0, r
    if r["kill"]:
        assert r["replication"] == 2 and r["failover_view_all_s"] > 0, r
    else:
        assert r["server_push_requests"] >= r["expected_push_requests"] > 0, r
    print("job", r["job_id"], "kill" if r["kill"] else "plain", "SUCCEEDED;",
          r["workers"] * r["partitions"] * r["steps"], "pushes applied exactly once")
PY
echo PASS
