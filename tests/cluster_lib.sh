# Shared by the multi-process tests: starts real psd binaries on 127.0.0.1
# with OS-chosen ports, in the test's own temporary folder, and stops them
# all when the test exits (pass or fail). Source it from a sh_test whose
# data includes the four binaries.
set -euo pipefail

BIN=${BIN:-.}
WORK=$(mktemp -d "${TEST_TMPDIR:-/tmp}/cluster.XXXXXX")
PIDS=()

source deploy/processes.sh

# PSD_TEST_TLS=1 in a test's env (e.g. failover_tls_test): every process
# the test starts through these helpers talks mutual TLS (TLS_DIR below).
if [ "${PSD_TEST_TLS:-0}" = 1 ] && [ -z "${TLS_DIR:-}" ]; then
  TLS_DIR=$WORK/certs
  deploy/make_certs.sh "$TLS_DIR"
fi

stop_cluster() {
  [ ${#PIDS[@]} -eq 0 ] && return 0
  stop_processes "${PIDS[@]}"
  PIDS=()
}

# kill_all: SIGKILLs every process started so far (a crash of them all).
kill_all() {
  kill -KILL "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  PIDS=()
}

# Sanitizer builds (--config=asan, --config=tsan; docs/OPERATIONS.md
# "Sanitizers"): a child process that reported may not fail the test by its
# exit code alone (a report at exit after SIGTERM, or in a process that the
# test kills anyway), so any report in a log under $WORK fails the test.
SANITIZER_REPORT='ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|runtime error: '
sanitizer_reports() {
  grep -rlE --include='*.log' --include='*.err' --include='*.out' \
    "$SANITIZER_REPORT" "$WORK" 2>/dev/null || true
}

on_exit() {
  local code=$? command=$BASH_COMMAND
  # A command that ended the test through set -e says so (else the log
  # ends with no reason, as a failed wait-ready or GetJob under load did).
  case $code:$command in
    0:* | *:exit\ *) ;;
    *) echo "FAIL: exit status $code from: $command" >&2 ;;
  esac
  stop_cluster
  if [ $code -ne 0 ]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 15 "$f"; }
    done
  fi
  local f
  # A TLS variant must not have run anything in plaintext.
  if [ "${PSD_TEST_TLS:-0}" = 1 ] && [ $code -eq 0 ]; then
    if ! grep -rqs --include='*.log' "mutual TLS: certificate" "$WORK" ||
      grep -rqs --include='*.log' -- "--insecure: plaintext" "$WORK"; then
      echo "FAIL: PSD_TEST_TLS=1, but a process ran without mutual TLS" >&2
      code=1
    fi
  fi
  for f in $(sanitizer_reports); do
    echo "FAIL: sanitizer report in $f:" >&2
    grep -E -A 60 "$SANITIZER_REPORT" "$f" | head -n 120 >&2
    code=1
  done
  exit $code
}
trap on_exit EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# grep_all ARGS...: `grep -q ARGS` that reads all of its input. grep -q
# exits at the first match, and the command writing into the pipe then
# dies of SIGPIPE, which set -o pipefail counts as the pipeline failing (a
# ListJobs answer failed grpcurl_test that way).
grep_all() { grep "$@" >/dev/null; }

# start_cluster NAME SERVERS WORKERS: starts a coordinator (with the flags
# in the array COORDINATOR_ARGS, if set), servers (SERVER_ARGS) and workers; sets
# COORDINATOR and CTL (psd_ctl with --coordinator). With TLS_DIR set
# (certificates from deploy/make_certs.sh) every process, and psd_ctl as
# user alice, talks mutual TLS; otherwise --insecure.
start_cluster() {
  local name=$1 servers=$2 workers=$3
  "$BIN/server/coordinator/psd_coordinator" --port_file="$WORK/$name.coordinator.port" \
    ${COORDINATOR_ARGS[@]+"${COORDINATOR_ARGS[@]}"} $(tls_flags "${TLS_DIR:-}" coordinator) \
    2>"$WORK/$name.coordinator.log" &
  PIDS+=($!)
  COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/$name.coordinator.port") ||
    fail "coordinator $name did not start"
  for i in $(seq "$servers"); do
    "$BIN/server/ps/psd_server" --coordinator="$COORDINATOR" \
      ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} \
      $(tls_flags "${TLS_DIR:-}" server) 2>"$WORK/$name.server$i.log" &
    PIDS+=($!)
  done
  for i in $(seq "$workers"); do
    "$BIN/worker/psd_worker" --coordinator="$COORDINATOR" \
      $(tls_flags "${TLS_DIR:-}" worker) 2>"$WORK/$name.worker$i.log" &
    PIDS+=($!)
  done
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR"
    $(tls_flags "${TLS_DIR:-}" user-alice))
  "${CTL[@]}" --servers="$servers" --workers="$workers" --timeout_s=30 wait-ready ||
    fail "cluster $name: not ready in 30 s"
}

# run_job CONFIG_FILE EXPORT_FILE: submits, waits for SUCCEEDED, exports;
# prints the checksum "crc32:XXXXXXXX"; the job id goes to $WORK/last_job.
run_job() {
  local id
  id=$("${CTL[@]}" submit "$1") || fail "submit $1"
  "${CTL[@]}" watch "$id" >"$WORK/$id.watch" || { cat "$WORK/$id.watch"; fail "job $id did not succeed"; }
  "${CTL[@]}" export "$id" "$2" >"$WORK/$id.export" || fail "export $id"
  echo "$id" >"$WORK/last_job"
  grep -o 'crc32:[0-9a-f]*' "$WORK/$id.export"
}

# A short job on a subset of Fashion-MNIST: 12,000 training and 2,000 test
# examples, 2 epochs, 2 workers.
write_short_job() {
  cat >"$1" <<'JOB'
name: "short"
model { kind: MLP input_dim: 784 hidden_sizes: [256, 128] num_classes: 10 init_seed: 1 }
dataset { name: "fashion-mnist" train_limit: 12000 test_limit: 2000 }
optimizer { kind: SGD learning_rate: 0.02 momentum: 0.9 weight_decay: 0.0005 }
consistency: BSP
batch_size: 64
epochs: 2
workers: 2
seed: 42
JOB
}

# undisturbed_reference EPOCHS [LINE]: writes the short job over EPOCHS
# epochs (plus the config LINE, e.g. a snapshot policy) to
# $WORK/job.textproto, runs it undisturbed (R=1, 2 servers, 2 workers) and
# sets `reference` to its checksum.
undisturbed_reference() {
  write_short_job "$WORK/short.textproto"
  sed "s/^epochs: 2\$/epochs: $1/" "$WORK/short.textproto" >"$WORK/job.textproto"
  [ -z "${2:-}" ] || echo "$2" >>"$WORK/job.textproto"
  grep -q "^epochs: $1\$" "$WORK/job.textproto" || fail "sed did not set epochs"
  start_cluster ref 2 2
  reference=$(run_job "$WORK/job.textproto" "$WORK/ref.safetensors")
  stop_cluster
  echo "undisturbed run (R=1, $1 epochs): $reference"
}

# servers_with_all_pushes JOB TOTAL: checks, over `psd_ctl servers`, that on
# every live server holding JOB each of its 2 ranks' clocks (pushes
# applied) is TOTAL; prints the number of servers checked, or exits
# non-zero naming the first server that falls short.
servers_with_all_pushes() {
  "${CTL[@]}" servers >"$WORK/clocks.servers.json" || { echo "psd_ctl servers failed"; return 1; }
  python3 -c '
import json, re, sys
text, job, total = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
starts = list(re.finditer(r"^\S+ \(([^)]*)\): ", text, re.M))
n = 0
for k, m in enumerate(starts):
  end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
  for jj in json.loads(text[m.end():end]).get("jobs", []):
    if jj["jobId"] != job: continue
    clocks = jj.get("workerClocks", [])
    if clocks != [total] * 2:
      sys.exit("server %s: worker clocks %s, want %s for both ranks" % (m.group(1), clocks, total))
    n += 1
print(n)' "$WORK/clocks.servers.json" "$1" "$2"
}
