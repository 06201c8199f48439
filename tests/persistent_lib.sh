# Shared by the tests that kill every process and start them again on the
# same data directories (source it after cluster_lib.sh): processes started
# one by one by role (kill_all, in cluster_lib.sh, kills them at once), and a bounded wait on a job's step
# read through psd_ctl (the coordinator may be restarting meanwhile).

# start_node NAME ROLE ARGS...: one process, logging to $WORK/NAME.log.
start_node() {
  local name=$1 role=$2
  shift 2
  case $role in
    coordinator) "$BIN/server/coordinator/psd_coordinator" $(tls_flags "${TLS_DIR:-}" coordinator) "$@" 2>>"$WORK/$name.log" & ;;
    server) "$BIN/server/ps/psd_server" $(tls_flags "${TLS_DIR:-}" server) --coordinator="$COORDINATOR" "$@" 2>>"$WORK/$name.log" & ;;
    worker) "$BIN/worker/psd_worker" $(tls_flags "${TLS_DIR:-}" worker) --coordinator="$COORDINATOR" "$@" 2>>"$WORK/$name.log" & ;;
  esac
  PIDS+=($!)
}

# wait_step JOB N: until the job has done N steps (up to 60 s).
wait_step() {
  for _ in $(seq 1200); do
    step=$("${CTL[@]}" get "$1" 2>/dev/null | grep -o '"step": "[0-9]*"' | head -1 | grep -o '[0-9]*' || true)
    [ "${step:-0}" -ge "$2" ] && return 0
    sleep 0.05
  done
  fail "job $1 did not reach step $2"
}
