#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang 14 + ASan
# (--config=fuzz) and runs each for a bounded time over a copy of its corpus
# (the tree is not written to). Prints one line per harness,
#   //tests/fuzz:NAME (fuzz 30 s) PASSED
# (or FAILED, with the crash's summary and where its input was kept), or one
# SKIPPED line when clang or libFuzzer is missing; exits 1 when one failed.
# Called by tests/run_tests.sh. Usage (from anywhere in the tree):
#   tests/fuzz/run_fuzzers.sh [seconds per harness, default 60] [harness...]
# Environment: PSD_FUZZ_OUTPUT_BASE, the Bazel output base of the clang
# build (default ~/.cache/psd-fuzz-ob: kept apart from the gcc build's).
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-60}
shift || true
fuzzers=("$@")
[ ${#fuzzers[@]} -eq 0 ] && fuzzers=(job_config_fuzzer ps_request_fuzzer
  snapshot_fuzzer embedding_snapshot_fuzzer idx_reader_fuzzer
  safetensors_fuzzer)

if ! command -v clang >/dev/null ||
  ! compgen -G "/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null; then
  echo "//tests/fuzz SKIPPED: clang or libFuzzer (libclang-rt-14-dev) not installed"
  exit 0
fi
bazel=(bazel "--output_base=${PSD_FUZZ_OUTPUT_BASE:-$HOME/.cache/psd-fuzz-ob}")
tmp=$(mktemp -d /tmp/psd-fuzz.XXXXXX)
# --symlink_prefix=/: no bazel-* links into this output base, which would
# replace the workspace's (and make a later `bazel test //...` in the same
# tree load packages under bazel-<dir>/external).
if ! "${bazel[@]}" build --config=fuzz --noshow_progress --symlink_prefix=/ \
  "${fuzzers[@]/#///tests/fuzz:}" >"$tmp/build.log" 2>&1; then
  grep -E '^ERROR|error:' "$tmp/build.log" | head -20
  echo "//tests/fuzz (clang build, --config=fuzz) FAILED; log in $tmp/build.log"
  exit 1
fi
bin=$("${bazel[@]}" info --config=fuzz bazel-bin 2>/dev/null)/tests/fuzz
# Databases and temporary files of the harnesses: on tmpfs when there is
# one (embedding_snapshot_fuzzer opens a RocksDB database per input).
scratch=$tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && scratch=$(mktemp -d /dev/shm/psd-fuzz.XXXXXX)
failed=0
for f in "${fuzzers[@]}"; do
  mkdir -p "$tmp/$f/corpus" "$tmp/$f/artifacts" "$scratch/$f"
  cp tests/fuzz/corpus/$f/* "$tmp/$f/corpus/"
  dict=()
  [ -f tests/fuzz/$f.dict ] && dict=(-dict="$PWD/tests/fuzz/$f.dict")
  if TMPDIR="$scratch/$f" "$bin/$f" -max_total_time="$seconds" -timeout=25 \
    -rss_limit_mb=2048 -artifact_prefix="$tmp/$f/artifacts/" \
    -print_final_stats=1 "${dict[@]}" "$tmp/$f/corpus" >"$tmp/$f/log" 2>&1; then
    echo "//tests/fuzz:$f (fuzz $seconds s) PASSED"
  else
    grep -E 'ERROR: |FUZZ_REQUIRE|SUMMARY: |what\(\)' "$tmp/$f/log" | head -10
    echo "//tests/fuzz:$f (fuzz $seconds s) FAILED; input in $tmp/$f/artifacts," \
      "log in $tmp/$f/log (tests/fuzz/README.md: adding a regression)"
    failed=1
  fi
done
[ "$scratch" != "$tmp" ] && rm -rf "$scratch"
# Kept when something failed: the crash inputs and the logs.
[ "$failed" -eq 0 ] && rm -rf "$tmp"
exit "$failed"
