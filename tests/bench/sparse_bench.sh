#!/bin/bash
# Sparse embedding pull/push benchmark against real psd_server processes on
# 127.0.0.1: starts a psd_coordinator and PSD_BENCH_SERVERS (default 1)
# psd_servers, runs sparse_bench_client with the arguments given, prints
# each server's resident memory (VmRSS) before and after, and stops them.
# Run: bazel run //tests/bench:sparse_bench [-- --batches=1000,100000]
set -euo pipefail
cd "${RUNFILES_DIR:-$0.runfiles}/${TEST_WORKSPACE:-psd}" 2>/dev/null || true
BIN=${BIN:-.}
source deploy/processes.sh
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sparse_bench.XXXXXX")
PIDS=()
trap 'stop_processes "${PIDS[@]}"; rm -rf "$WORK"' EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/coordinator.port" \
  2>"$WORK/coordinator.log" &
PIDS+=($!)
coordinator=127.0.0.1:$(wait_port $! "$WORK/coordinator.port")
servers=""
server_pids=()
for i in $(seq "${PSD_BENCH_SERVERS:-1}"); do
  "$BIN/server/ps/psd_server" --insecure --coordinator="$coordinator" --log_level=warn \
    --port_file="$WORK/server$i.port" 2>"$WORK/server$i.log" &
  PIDS+=($!)
  server_pids+=($!)
  servers="$servers${servers:+,}127.0.0.1:$(wait_port $! "$WORK/server$i.port")"
done
for p in "${server_pids[@]}"; do
  echo "server pid $p: VmRSS before $(rss_kib "$p") KiB"
done
"$BIN/tests/bench/sparse_bench_client" --servers="$servers" \
  --drop_table=false "$@"
for p in "${server_pids[@]}"; do
  echo "server pid $p: VmRSS after $(rss_kib "$p") KiB (table still held)"
done
