#!/usr/bin/env bash
# Runs the whole test suite: installs missing Debian packages, then
# `bazel test //...` (unit tests, multi-process cluster tests, the benchmark
# smoke test). Ends with one line: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

deploy/install_deps.sh || exit 1

# buf (for tests/grpcurl_test.sh) comes from the npm registry, pinned.
BUF_VERSION=1.75.0
buf_dir=.cache/buf-$BUF_VERSION
buf=$PWD/$buf_dir/node_modules/@bufbuild/buf-linux-x64/bin/buf
if [ ! -x "$buf" ] && command -v npm >/dev/null; then
  mkdir -p "$buf_dir"
  (cd "$buf_dir" && npm install --silent --no-save --no-audit --no-fund \
    "@bufbuild/buf@$BUF_VERSION" >/dev/null 2>&1) ||
    echo "run_tests: could not install buf from npm; grpcurl_test will skip" >&2
fi
buf_env=()
[ -x "$buf" ] && buf_env=(--test_env=PSD_BUF="$buf")
log=$(mktemp /tmp/psd-test.XXXXXX.log)
bazel test --noshow_progress --test_summary=short "${buf_env[@]}" //... "$@" 2>&1 | tee "$log" |
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
