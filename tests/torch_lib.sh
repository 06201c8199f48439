# Shared by the psd.torch tests (issue 18; source after cluster_lib.sh): the
# Python client from its Bazel runfiles, a job for tests/torch_worker.py's
# CNN, and torch worker processes.
export PYTHONPATH=$PWD/worker/python
TORCH_WORKER=(/usr/bin/python3 tests/torch_worker.py)
TORCH_TLS=()
[ -n "${TLS_DIR:-}" ] && TORCH_TLS=(--tls_dir="$TLS_DIR")

# torch_job WORKERS TRAIN_LIMIT EPOCHS [LINE]: the job config (text format)
# of torch_worker.py's CNN on Fashion-MNIST, SGD with momentum, BSP.
torch_job() {
  echo 'name: "torch"'
  "${TORCH_WORKER[@]}" spec
  cat <<JOB
dataset { name: "fashion-mnist" train_limit: $2 test_limit: 100 }
optimizer { kind: SGD learning_rate: 0.05 momentum: 0.9 }
consistency: BSP
batch_size: 32
epochs: $3
workers: $1
seed: 7
JOB
  [ -z "${4:-}" ] || echo "$4"
}

# start_torch_workers NAME N [ARGS...]: N torch_worker.py train processes
# (with ARGS), each saving its final parameters to $WORK/NAME.wI.pt; their
# pids go to TORCH_PIDS.
start_torch_workers() {
  local name=$1 n=$2
  shift 2
  TORCH_PIDS=()
  for i in $(seq "$n"); do
    "${TORCH_WORKER[@]}" train --coordinator="$COORDINATOR" "${TORCH_TLS[@]}" \
      --out="$WORK/$name.w$i.pt" "$@" >"$WORK/$name.w$i.out" 2>"$WORK/$name.w$i.log" &
    PIDS+=($!)
    TORCH_PIDS+=($!)
  done
}

# wait_torch_workers LABEL: each of TORCH_PIDS exits 0.
wait_torch_workers() {
  local pid
  for pid in "${TORCH_PIDS[@]}"; do
    wait "$pid" || fail "$1: torch worker $pid failed (logs: $WORK/*.w*.log)"
  done
}

# export_checksum JOB FILE: psd_ctl export; prints "crc32:...".
export_checksum() {
  "${CTL[@]}" export "$1" "$2" >"$WORK/$1.export" || fail "export $1"
  grep -o 'crc32:[0-9a-f]*' "$WORK/$1.export"
}

# wait_no_workers: polls `psd_ctl view` (up to 30 s) until the coordinator
# lists no worker: torch workers that exited leave no idle member behind
# for the next job (they are dropped at the heartbeat timeout).
wait_no_workers() {
  local give_up=$((SECONDS + 30))
  while [ $SECONDS -lt $give_up ]; do
    "${CTL[@]}" view >"$WORK/view.json" 2>/dev/null &&
      [ "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("workers", [])))' "$WORK/view.json")" = 0 ] &&
      return 0
    sleep 0.2
  done
  cat "$WORK/view.json" >&2
  fail "the exited torch workers are still members after 30 s"
}
