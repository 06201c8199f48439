#!/usr/bin/env bash
# scale_bench with N=50 simulated workers and 2 servers on a small model
# (real coordinator, servers and gRPC on loopback): the job must SUCCEED,
# and every simulated push must be applied exactly once: rank 0's
# parameters after the last step equal, bit for bit, the replay of the
# servers' BSP sums of the known gradients (scale_bench.cc), and the
# servers counted at least N x partitions x steps pushes. Not a
# measurement: no timing is checked.
set -euo pipefail
out=$TEST_TMPDIR/results.jsonl
RUNFILES_DIR="$TEST_SRCDIR" tests/bench/scale_bench.sh --workers 50 --servers 2 \
  --floats 16384 --steps 8 --interval 0 --quiet 1 --deadline 90 --out "$out"
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(wc -l <"$out")" -eq 1 ] || fail "want one result line in $out"
python3 - "$out" <<'PY' || fail "result check"
import json, sys
r = json.loads(open(sys.argv[1]).read())
assert r["workers"] == 50 and r["servers"] == 2, r
assert r["job_state"] == "SUCCEEDED", r["job_state"]
assert r["exactly_once"] == "yes" and r["exact_mismatches"] == 0, r
assert r["server_push_requests"] >= r["expected_push_requests"] > 0, r
print("job", r["job_id"], "SUCCEEDED;", r["expected_push_requests"],
      "pushes applied exactly once")
PY
echo PASS
