#!/usr/bin/env bash
# psd.torch against PyTorch DDP (issue 18): deploy/examples/fashion_cnn.py's
# CNN on Fashion-MNIST, 2 workers x batch 64, Adam lr 1e-3, 8 epochs, on
# the same machine in the same run. Each round runs, back to back:
#   psd  1 coordinator, 2 servers (R=1), 2 torch workers
#        (deploy/examples/fashion_cnn.py), plaintext (gloo is plaintext);
#   ddp  tests/bench/torch_cnn_ddp.py: DDP, gloo on 127.0.0.1, 2 processes.
# Both use 1 thread per worker, the same batches (psd's data order) and
# evaluate the whole test set on rank 0 after every epoch, inside the time.
# Prints each run's steps/s (one rank's steps over its training time) and
# time to TARGET (end of the first epoch whose test accuracy reaches it),
# then the medians over the rounds and psd/DDP ratios.
#
# Usage: tests/bench/torch_cnn_bench.sh [ROUNDS] [TARGET]   (3, 0.90)
# Builds what it needs with bazel (--disk_cache=/work/.bazel-disk when
# that folder exists). Run from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
TARGET=${2:-0.90}
EPOCHS=${EPOCHS:-8}
PY=/usr/bin/python3
cache=()
[ -d /work/.bazel-disk ] && cache=(--disk_cache=/work/.bazel-disk)
bazel build "${cache[@]}" //worker/python/psd //server/coordinator:psd_coordinator \
  //server/ps:psd_server //deploy:psd_ctl 2>/dev/null
BIN=$(bazel info "${cache[@]}" bazel-bin 2>/dev/null)
WORK=$(mktemp -d /tmp/torch-cnn-bench.XXXXXX)
# The package from the source tree, the extension from bazel-bin.
mkdir -p "$WORK/py/psd"
cp worker/python/psd/*.py "$BIN/worker/python/psd/_psd.so" "$WORK/py/psd/"
export PYTHONPATH=$WORK/py
source deploy/processes.sh
PIDS=()
trap 'stop_processes "${PIDS[@]}" 2>/dev/null || true' EXIT

echo "==> machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "==> torch $("$PY" -c 'import torch; print(torch.__version__)'), $(date -u +%FT%TZ)"
"$PY" deploy/examples/fashion_cnn.py --print_job --epochs="$EPOCHS" >"$WORK/job.textproto"

# summarize FILE: "steps_per_s time_to_target_s final_accuracy" from the
# JSON lines of rank 0.
summarize() {
  "$PY" - "$1" "$TARGET" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
lines = [l for l in lines if l["rank"] == 0]
target = float(sys.argv[2])
reached = next((l["elapsed_s"] for l in lines if l["test_accuracy"] >= target), float("nan"))
last = lines[-1]
print("%.2f %.1f %.4f" % (last["steps"] / last["elapsed_s"], reached, last["test_accuracy"]))
PY
}

psd_run() {
  local round=$1
  "$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/c.port" \
    2>"$WORK/coordinator.$round.log" &
  PIDS+=($!)
  local coordinator=127.0.0.1:$(wait_port $! "$WORK/c.port")
  for i in 1 2; do
    "$BIN/server/ps/psd_server" --insecure --coordinator="$coordinator" \
      2>"$WORK/server$i.$round.log" &
    PIDS+=($!)
  done
  local ctl=("$BIN/deploy/psd_ctl" --insecure --coordinator="$coordinator")
  "${ctl[@]}" --servers=2 --workers=0 --timeout_s=30 wait-ready >/dev/null
  local workers=()
  for i in 1 2; do
    "$PY" deploy/examples/fashion_cnn.py --coordinator="$coordinator" --insecure \
      >"$WORK/psd.$round.w$i.out" 2>"$WORK/psd.$round.w$i.log" &
    workers+=($!)
  done
  local id
  id=$("${ctl[@]}" submit "$WORK/job.textproto")
  "${ctl[@]}" watch "$id" >/dev/null
  for p in "${workers[@]}"; do wait "$p"; done
  stop_processes "${PIDS[@]}"
  PIDS=()
  rm -f "$WORK/c.port"
  cat "$WORK"/psd.$round.w*.out >"$WORK/psd.$round.out"
  summarize "$WORK/psd.$round.out"
}

ddp_run() {
  "$PY" tests/bench/torch_cnn_ddp.py --epochs="$EPOCHS" >"$WORK/ddp.$1.out" 2>"$WORK/ddp.$1.log"
  summarize "$WORK/ddp.$1.out"
}

for r in $(seq "$ROUNDS"); do
  p=$(psd_run "$r"); echo "round $r psd: steps/s, time to $TARGET (s), final accuracy: $p"
  d=$(ddp_run "$r"); echo "round $r ddp: steps/s, time to $TARGET (s), final accuracy: $d"
  echo "$p" >>"$WORK/psd.all"; echo "$d" >>"$WORK/ddp.all"
done
"$PY" - "$WORK/psd.all" "$WORK/ddp.all" <<'PY'
import statistics, sys
def med(path, i):
    return statistics.median(float(l.split()[i]) for l in open(path))
p, d = sys.argv[1], sys.argv[2]
print("median steps/s: psd %.2f, ddp %.2f (psd/ddp %.2fx)" % (med(p, 0), med(d, 0), med(p, 0) / med(d, 0)))
print("median time to target: psd %.1f s, ddp %.1f s (psd/ddp %.2fx)" % (med(p, 1), med(d, 1), med(p, 1) / med(d, 1)))
print("median final accuracy: psd %.4f, ddp %.4f" % (med(p, 2), med(d, 2)))
PY
echo "(logs: $WORK)"
