#!/usr/bin/env bash
# Runs the whole test suite: installs missing Debian packages, then
# `bazel test //...` (unit tests, multi-process cluster tests, the benchmark
# smoke test), the CUDA build, //tests:sanitizer_tests under ASan+UBSan, and
# the libFuzzer harnesses of tests/fuzz for a bounded time each.
# Ends with one line: "N passed, M failed", followed by ", K skipped" when K
# tests skipped (a test that cannot run here prints a line "SKIP: REASON"
# and exits 0; Bazel shows it PASSED, this script counts it as skipped).
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
# kubernetes-models (the Kubernetes schemas, and cert-manager's, for
# k8s_manifest_test's offline validation of the rendered manifests) from the
# npm registry, pinned.
K8S_MODELS_VERSION=5.1.0
CERT_MANAGER_MODELS_VERSION=6.0.0
k8s_models=$PWD/.cache/kubernetes-models-$K8S_MODELS_VERSION-cert-manager-$CERT_MANAGER_MODELS_VERSION
if [ ! -d "$k8s_models/node_modules/@kubernetes-models/cert-manager" ] &&
  command -v npm >/dev/null; then
  mkdir -p "$k8s_models"
  (cd "$k8s_models" && npm install --silent --no-save --no-audit --no-fund \
    "kubernetes-models@$K8S_MODELS_VERSION" \
    "@kubernetes-models/cert-manager@$CERT_MANAGER_MODELS_VERSION" >/dev/null 2>&1) ||
    echo "run_tests: could not install kubernetes-models from npm; k8s_manifest_test skips schema validation" >&2
fi
[ -d "$k8s_models/node_modules/kubernetes-models" ] &&
  buf_env+=(--test_env=PSD_KUBERNETES_MODELS="$k8s_models")
log=$(mktemp /tmp/psd-test.XXXXXX.log)
bazel test --noshow_progress --test_summary=short "${buf_env[@]}" //... "$@" 2>&1 | tee "$log" |
  grep -E '(PASSED|FAILED|TIMEOUT|NO STATUS|FLAKY|SKIPPED) in|NO STATUS|^ERROR|^FAIL'
# Bazel's status, read right after the pipeline (an `|| true` after it
# would replace PIPESTATUS with true's, and a build that failed would count
# as nothing failed).
bazel_rc=${PIPESTATUS[0]}
passed=$(grep -cE '^//\S+\s+(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//\S+\s+(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE)' "$log")
# The end of each failed test's log, printed again just before the last
# line, where a CI report that keeps only the head and tail still shows it.
failed_tails=$(mktemp /tmp/psd-failed.XXXXXX)
for target in $(grep -oE '^//\S+\s+(\(cached\) )?(FAILED|TIMEOUT|FLAKY)' "$log" | awk '{print $1}'); do
  test_log=bazel-testlogs/$(echo "${target#//}" | tr : /)/test.log
  echo "--- $target: the last lines of $test_log" >>"$failed_tails"
  tail -n 25 "$test_log" 2>/dev/null | sed 's/^/  | /' >>"$failed_tails"
done
# Tests that passed by skipping (a "SKIP: " line in their log) count as
# skipped, not passed.
skipped=0
for target in $(grep -oE '^//\S+\s+(\(cached\) )?PASSED' "$log" | awk '{print $1}'); do
  test_log=bazel-testlogs/$(echo "${target#//}" | tr : /)/test.log
  reason=$(grep -m1 '^SKIP: ' "$test_log" 2>/dev/null) || continue
  echo "$target SKIPPED (${reason#SKIP: })"
  passed=$((passed - 1))
  skipped=$((skipped + 1))
done
if [ "$bazel_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # The build itself failed: count that as a failure, and show why.
  grep -E '^ERROR' "$log" | head -20
  failed=1
fi
# The CUDA build (issue 5), counted as one test: compile and link the CUDA
# targets with nvcc and run the kernels' tests from that build (on a machine
# with no GPU they check the no-GPU path and skip the parity checks).
if [ -x /usr/local/cuda/bin/nvcc ]; then
  if bazel test --config=cuda --noshow_progress --test_summary=short \
    //kernels/... //worker:psd_worker //tests/bench:gemm_bench >"$log" 2>&1; then
    echo "//:cuda_build (bazel test --config=cuda //kernels/... + binaries) PASSED"
    passed=$((passed + 1))
  else
    grep -E '^ERROR|FAILED' "$log" | head -20
    echo "//:cuda_build (bazel test --config=cuda //kernels/... + binaries) FAILED"
    failed=$((failed + 1))
  fi
else
  echo "//:cuda_build SKIPPED: /usr/local/cuda/bin/nvcc not found, CUDA targets not compiled"
fi
# AddressSanitizer + UndefinedBehaviorSanitizer (docs/OPERATIONS.md
# "Sanitizers") over //tests:sanitizer_tests: the C++ unit tests and a few
# multi-process tests, built into their own output tree; each target counts
# as one test, shown with "(asan)".
bazel test --config=asan --noshow_progress --test_summary=short \
  //tests:sanitizer_tests >"$log" 2>&1
asan_rc=$?
asan_passed=$(grep -cE '^//\S+\s+(\(cached\) )?PASSED' "$log")
asan_failed=$(grep -cE '^//\S+\s+(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE)' "$log")
grep -E '^//\S+\s+(\(cached\) )?(PASSED|FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE)' "$log" |
  sed -E 's|^(//\S+)|\1 (asan)|'
# The reports themselves (the test logs hold the whole of them).
grep -E 'SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error: |^FAIL: sanitizer' \
  "$log" | head -20
if [ "$asan_rc" -ne 0 ] && [ "$asan_failed" -eq 0 ]; then
  grep -E '^ERROR' "$log" | head -20
  echo "//tests:sanitizer_tests (asan) build FAILED"
  asan_failed=1
fi
passed=$((passed + asan_passed))
failed=$((failed + asan_failed))
# libFuzzer (tests/fuzz/README.md): each harness built with clang 14 + ASan
# in an output base of its own and run for PSD_FUZZ_SECONDS (default 60)
# over a copy of its corpus; each counts as one test. (Their corpora,
# crashes once found included, are also replayed under gcc by
# //tests/fuzz:*_corpus_test in `bazel test //...` above.)
tests/fuzz/run_fuzzers.sh "${PSD_FUZZ_SECONDS:-60}" >"$log" 2>&1
cat "$log"
passed=$((passed + $(grep -cE '^//tests/fuzz\S* \(fuzz .*\) PASSED' "$log")))
failed=$((failed + $(grep -cE '^//tests/fuzz\S* .*FAILED' "$log")))
rm -f "$log"
cat "$failed_tails"
rm -f "$failed_tails"
echo "$passed passed, $failed failed$([ "$skipped" -eq 0 ] || echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
