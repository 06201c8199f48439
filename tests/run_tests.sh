#!/usr/bin/env bash
# Runs the whole test suite: installs missing Debian packages, then
# `bazel test //...` (unit tests, multi-process cluster tests, the benchmark
# smoke test). Ends with one line: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

deploy/install_deps.sh || exit 1
log=$(mktemp /tmp/psd-test.XXXXXX.log)
bazel test --noshow_progress --test_summary=short //... "$@" 2>&1 | tee "$log" |
  grep -E '(PASSED|FAILED|TIMEOUT|NO STATUS|FLAKY|SKIPPED) in|NO STATUS|^ERROR|^FAIL' || true
bazel_rc=${PIPESTATUS[0]}
passed=$(grep -cE '^//\S+\s+(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//\S+\s+(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE)' "$log")
if [ "$bazel_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # The build itself failed: count that as a failure, and show why.
  grep -E '^ERROR' "$log" | head -20
  failed=1
fi
rm -f "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
