#!/bin/bash
# Smoke test of push_pull_bench: runs the 1 MiB cases with a tiny time
# budget and checks the exit status and the ratio table.
set -u
bench="$1"
out="${TEST_TMPDIR:-/tmp}/push_pull_bench.out"
"$bench" --benchmark_filter='/1/' --benchmark_min_time=0.01 >"$out" 2>&1
rc=$?
cat "$out"
if [[ $rc -ne 0 ]]; then
  echo "FAIL: push_pull_bench exited with status $rc" >&2
  exit 1
fi
if ! grep -q '^Push/pull over loopback: medians' "$out"; then
  echo "FAIL: no ratio table in the output" >&2
  exit 1
fi
if ! grep -Eq '^ +1 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ *$' "$out"; then
  echo "FAIL: the ratio table has no complete row for 1 MiB" >&2
  exit 1
fi
echo PASS
