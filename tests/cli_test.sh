#!/usr/bin/env bash
# The binaries' command lines: --help tells the truth, and mistakes a user
# makes at start-up end in a clear error within seconds, not a hang.
source tests/cluster_lib.sh

# --help lists every flag the launcher and the README use, the shared ones
# (common/process_main.cc, and common/member_flags.cc for the two members)
# included, and no member flag in the coordinator's.
SHARED="--log_level --metrics_listen --metrics_port_file --tls_ca_file --tls_cert_file --tls_key_file --tls_refresh_s --insecure"
MEMBER="--coordinator --heartbeat_ms --connect_timeout_ms"
"$BIN/server/coordinator/psd_coordinator" --help >"$WORK/help" 2>&1 || true
for f in --listen --port_file --heartbeat_timeout_ms $SHARED; do
  grep -q -- "^ *$f " "$WORK/help" || fail "psd_coordinator --help lacks $f"
done
for f in $MEMBER; do
  if grep -q -- "^ *$f " "$WORK/help"; then fail "psd_coordinator --help lists $f"; fi
done
"$BIN/server/ps/psd_server" --help >"$WORK/help" 2>&1 || true
for f in --listen --advertise --port_file $SHARED $MEMBER; do
  grep -q -- "^ *$f " "$WORK/help" || fail "psd_server --help lacks $f"
done
"$BIN/worker/psd_worker" --help >"$WORK/help" 2>&1 || true
for f in --data_dir --device --blas_threads --bf16_gemm --port_file $SHARED $MEMBER; do
  grep -q -- "^ *$f " "$WORK/help" || fail "psd_worker --help lacks $f"
done
"$BIN/deploy/psd_ctl" --help >"$WORK/help" 2>&1 || true
for c in submit get list cancel watch export view wait-ready; do
  grep -q -- "$c" "$WORK/help" || fail "psd_ctl --help lacks $c"
done

# expect_error CMD... : the command must fail, within its own timeouts, with
# stderr matching $PATTERN.
expect_error() {
  local rc=0
  timeout 30 "$@" >"$WORK/out" 2>&1 || rc=$?
  [ $rc -ne 0 ] || fail "succeeded: $*"
  [ $rc -ne 124 ] || fail "hung (killed after 30 s): $*"
  grep -q -- "$PATTERN" "$WORK/out" || { cat "$WORK/out"; fail "no \"$PATTERN\" from: $*"; }
}

# An unreachable coordinator: a clear error after --connect_timeout_ms.
PATTERN="cannot reach the coordinator at 127.0.0.1:1" expect_error \
  "$BIN/server/ps/psd_server" --insecure --coordinator=127.0.0.1:1 --connect_timeout_ms=1000
PATTERN="cannot reach the coordinator at 127.0.0.1:1" expect_error \
  "$BIN/worker/psd_worker" --insecure --coordinator=127.0.0.1:1 --connect_timeout_ms=1000
PATTERN="coordinator is required" expect_error "$BIN/server/ps/psd_server" --insecure
PATTERN="no CUDA backend" expect_error \
  "$BIN/worker/psd_worker" --insecure --coordinator=127.0.0.1:1 --device=cuda:0
PATTERN="bf16_gemm: the selected backend cpu-openblas" expect_error \
  "$BIN/worker/psd_worker" --insecure --coordinator=127.0.0.1:1 --device=cpu --bf16_gemm
# Transport security: neither certificates nor --insecure, some of the three
# files only, a file that is not there.
PATTERN="or --insecure for plaintext" expect_error \
  "$BIN/server/ps/psd_server" --coordinator=127.0.0.1:1
PATTERN="give all three" expect_error \
  "$BIN/server/coordinator/psd_coordinator" --tls_ca_file="$WORK/ca.pem"
printf -- '-----BEGIN CERTIFICATE-----\n' >"$WORK/ca.pem"
PATTERN="--tls_cert_file: cannot read" expect_error \
  "$BIN/worker/psd_worker" --coordinator=127.0.0.1:1 --tls_ca_file="$WORK/ca.pem" \
  --tls_cert_file="$WORK/no.pem" --tls_key_file="$WORK/no.key"
PATTERN="unknown level" expect_error "$BIN/server/coordinator/psd_coordinator" --insecure --log_level=loud

start_cluster a 1 0
port=${COORDINATOR##*:}
# The coordinator's address already in use.
PATTERN="cannot listen on 127.0.0.1:$port" expect_error \
  "$BIN/server/coordinator/psd_coordinator" --insecure --listen=127.0.0.1:$port
# A config file with a typo: the line and the field.
printf 'name: "x"\nbatch_sise: 3\n' >"$WORK/typo.textproto"
PATTERN="line 2" expect_error "${CTL[@]}" submit "$WORK/typo.textproto"
PATTERN="batch_sise" expect_error "${CTL[@]}" submit "$WORK/typo.textproto"
# A config that parses but is invalid: INVALID_ARGUMENT naming the field.
printf 'name: "x"\nmodel { input_dim: 784 num_classes: 10 }\ndataset {}\noptimizer { learning_rate: 0.1 }\nbatch_size: 8\nepochs: 0\nworkers: 1\n' >"$WORK/bad.textproto"
PATTERN="INVALID_ARGUMENT: epochs: must be in \[1, 10000\], got 0" expect_error "${CTL[@]}" submit "$WORK/bad.textproto"
PATTERN="NOT_FOUND" expect_error "${CTL[@]}" get no-such-job

# A worker whose data folder is wrong fails the job with the file's name.
"$BIN/worker/psd_worker" --insecure --coordinator="$COORDINATOR" --data_dir="$WORK/nodata" \
  2>"$WORK/a.badworker.log" &
PIDS+=($!)
"${CTL[@]}" --servers=1 --workers=1 wait-ready >/dev/null
printf 'name: "nodata"\nmodel { input_dim: 784 hidden_sizes: 8 num_classes: 10 }\ndataset { train_limit: 100 }\noptimizer { learning_rate: 0.1 }\nbatch_size: 10\nepochs: 1\nworkers: 1\n' >"$WORK/nodata.textproto"
id=$("${CTL[@]}" submit "$WORK/nodata.textproto")
PATTERN="$WORK/nodata/train-images-idx3-ubyte.gz" expect_error "${CTL[@]}" watch "$id"
grep -q "FAILED" "$WORK/out" || fail "job $id not FAILED: $(cat "$WORK/out")"
stop_cluster

# SIGTERM stops a worker promptly even while its pull waits for a peer that
# is stopped (SIGSTOP): the worker gives its rank --leave_timeout_ms to
# reach a step boundary (issue 16), which the stopped peer prevents, then
# cancels the pull rather than waiting it out.
start_cluster b 1 0
for i in 1 2; do
  "$BIN/worker/psd_worker" --coordinator="$COORDINATOR" --leave_timeout_ms=1000 \
    $(tls_flags "${TLS_DIR:-}" worker) 2>"$WORK/b.worker$i.log" &
  PIDS+=($!)
done
w1=${PIDS[2]}
w2=${PIDS[3]}
"${CTL[@]}" --servers=1 --workers=2 --timeout_s=30 wait-ready
printf 'name: "long"\nmodel { input_dim: 784 hidden_sizes: 16 num_classes: 10 }\ndataset {}\noptimizer { learning_rate: 0.1 }\nbatch_size: 10\nepochs: 5\nworkers: 2\n' >"$WORK/long.textproto"
id=$("${CTL[@]}" submit "$WORK/long.textproto")
for _ in $(seq 300); do
  "${CTL[@]}" get "$id" | grep_all '"step": "[1-9]' && break
  sleep 0.05
done
"${CTL[@]}" get "$id" | grep_all '"step": "[1-9]' || fail "job $id made no progress"
kill -STOP "$w2"
kill -TERM "$w1"
for _ in $(seq 50); do kill -0 "$w1" 2>/dev/null || break; sleep 0.1; done
kill -CONT "$w2"
kill -0 "$w1" 2>/dev/null && fail "worker did not exit within 5 s of SIGTERM"
grep -q "signal 15" "$WORK/b.worker1.log" || fail "worker did not log the signal"
stop_cluster

# A server given another running server's data directory exits at once.
start_cluster c 0 0
"$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" --data_dir="$WORK/dd" \
  --port_file="$WORK/dd.port" 2>"$WORK/c.dd.log" &
PIDS+=($!)
holder=$!
wait_port $holder "$WORK/dd.port" >/dev/null || fail "server with --data_dir did not start"
PATTERN="data directory $WORK/dd is in use by pid $holder" expect_error \
  "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" --data_dir="$WORK/dd"

# SIGTERM: the coordinator and a server drain and exit 0 within 6 s.
coordinator_pid=${PIDS[0]}
for pid in $holder $coordinator_pid; do
  kill -TERM $pid
  for _ in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  kill -0 $pid 2>/dev/null && fail "pid $pid still running 6 s after SIGTERM"
  rc=0
  wait $pid || rc=$?
  [ $rc -eq 0 ] || fail "pid $pid exited with $rc after SIGTERM"
done
PIDS=()

# A coordinator that restarts loses its (in-memory) jobs: workers whose job
# it no longer knows stop training, say why, and become idle again.
start_cluster d 1 2
port=${COORDINATOR##*:}
id=$("${CTL[@]}" submit "$WORK/long.textproto")
for _ in $(seq 300); do
  "${CTL[@]}" get "$id" | grep_all '"step": "[1-9]' && break
  sleep 0.05
done
kill -KILL "${PIDS[0]}"
"$BIN/server/coordinator/psd_coordinator" --insecure --listen="127.0.0.1:$port" 2>"$WORK/d.coordinator2.log" &
PIDS+=($!)
"${CTL[@]}" --servers=1 --workers=2 --timeout_s=20 wait-ready >/dev/null ||
  fail "workers did not come back idle to the restarted coordinator"
# Each learns it from a refused progress report or, when blocked in a pull,
# from its next heartbeat.
stopped() {
  grep -lE "the coordinator refuses its progress|the coordinator says stop" \
    "$WORK"/d.worker*.log | wc -l
}
for _ in $(seq 100); do
  [ "$(stopped)" -eq 2 ] && break
  sleep 0.1
done
[ "$(stopped)" -eq 2 ] || fail "workers did not stop, saying why, within 10 s"
for _ in $(seq 50); do
  [ "$(grep -l "rank . stopped" "$WORK"/d.worker*.log | wc -l)" -eq 2 ] && break
  sleep 0.1
done
[ "$(grep -l "rank . stopped" "$WORK"/d.worker*.log | wc -l)" -eq 2 ] ||
  fail "the workers did not stop their ranks"
echo PASS
