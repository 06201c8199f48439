#!/usr/bin/env bash
# psd.torch (issue 18): snapshots and resume. A torch job with a snapshot
# policy; SIGKILL every process (coordinator, servers, torch workers)
# mid-job, restart the coordinator and servers on the same data
# directories with new torch workers: the job resumes from the newest
# common snapshot and ends with the checksum of the same job run
# undisturbed.
source tests/cluster_lib.sh
source tests/torch_lib.sh

# 4000 examples, 2 workers, batch 32: 62 steps an epoch, 248 in all.
torch_job 2 4000 4 'snapshot { every_steps: 20 keep_last: 3 }' >"$WORK/job.textproto"

start_cluster ref 2 0
start_torch_workers ref 2
id=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
wait_torch_workers "undisturbed"
"${CTL[@]}" watch "$id" >"$WORK/$id.watch" || fail "undisturbed job $id did not succeed"
reference=$(export_checksum "$id" "$WORK/ref.safetensors")
stop_cluster
echo "undisturbed: $reference"

# start_persistent: coordinator (same port after the first start) and 2
# servers on data directories under $WORK/p.
start_persistent() {
  local listen=()
  [ -n "${PORT:-}" ] && listen=(--listen="127.0.0.1:$PORT")
  rm -f "$WORK/p.port"
  "$BIN/server/coordinator/psd_coordinator" $(tls_flags "${TLS_DIR:-}" coordinator) \
    --data_dir="$WORK/p/coordinator" --port_file="$WORK/p.port" "${listen[@]}" \
    2>>"$WORK/p.coordinator.log" &
  PIDS+=($!)
  PORT=$(wait_port $! "$WORK/p.port") || fail "coordinator did not start"
  COORDINATOR=127.0.0.1:$PORT
  CTL=("$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "${TLS_DIR:-}" user-alice))
  for i in 1 2; do
    "$BIN/server/ps/psd_server" $(tls_flags "${TLS_DIR:-}" server) --coordinator="$COORDINATOR" \
      --data_dir="$WORK/p/server$i" 2>>"$WORK/p.server$i.log" &
    PIDS+=($!)
  done
  "${CTL[@]}" --servers=2 --workers=0 --timeout_s=30 wait-ready >/dev/null ||
    fail "the cluster did not come up"
}

PORT=
start_persistent
start_torch_workers p1 2 --slow_ms=20
job=$("${CTL[@]}" submit "$WORK/job.textproto") || fail "submit"
for _ in $(seq 600); do
  step=$("${CTL[@]}" get "$job" 2>/dev/null | grep -o '"step": "[0-9]*"' | head -1 | grep -o '[0-9]*' || true)
  [ "${step:-0}" -ge 100 ] && break
  sleep 0.1
done
[ "${step:-0}" -ge 100 ] || fail "job $job did not reach step 100"
kill_all
echo "killed every process at step ${step}"

start_persistent
start_torch_workers p2 2
wait_torch_workers "resumed"
"${CTL[@]}" watch "$job" >"$WORK/$job.watch" || { tail -5 "$WORK/$job.watch"; fail "job $job did not succeed after the restart"; }
resumed=$("${CTL[@]}" get "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("resumedFromSteps", []))')
after=$(export_checksum "$job" "$WORK/after.safetensors")
echo "resumed from $resumed: $after"
[ "$resumed" != "[]" ] || fail "the job did not resume from a snapshot"
[ "$after" = "$reference" ] || fail "checksum $after differs from the undisturbed $reference"
echo PASS
