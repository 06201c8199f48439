#!/usr/bin/env bash
# Sparse jobs (issue 25) against a single-process PyTorch model, on the same
# generated data, in the same run:
#   psd    a local cluster (1 coordinator, 2 psd_servers at R=1, 2
#          psd_workers x batch 200, BSP), a DLRM job (8 categorical fields
#          hashed into ONE table of 10^8 rows x 16, lazily allocated; 4
#          dense features; bottom MLP 32-16, top MLP 32; Adagrad 0.02 on
#          rows and dense part), data "planted-clicks";
#   torch  tests/bench/sparse_torch_baseline.py: the same model maths with
#          one nn.EmbeddingBag(sparse=True) per field (10^6 rows each: a
#          dense 10^8 x 16 table per field would not fit), torch's sparse
#          Adagrad, batch 400 (= psd's global batch), on the same examples
#          written as Criteo TSV by //worker:click_data_tool (same seed and
#          sizes: the same data the workers generate).
# Prints, for each: samples/s (training), time to the target test AUC
# (Bayes AUC - TARGET_GAP, default 0.03; evaluation after every epoch, inside the time for
# psd, outside for torch: see below), the final test log-loss and AUC
# against the planted model's Bayes levels; for psd also the table's rows
# touched and bytes (psd_ctl tables: server memory per touched row).
# Then the worker row cache: the same job as SPARSE_LR under ASP, without
# and with cache_staleness_steps 4: samples/s and rows pulled from the
# servers per second per server.
#
# Usage: tests/bench/sparse_job_bench.sh [TRAIN_EXAMPLES] [EPOCHS]
#   defaults 300000 and 3. Needs python3-torch (Debian); installs it with
#   apt-get when missing. Run from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRAIN=${1:-300000}
EPOCHS=${2:-3}
TEST=10000
SEED=42
PY=/usr/bin/python3
if ! "$PY" -c 'import torch' 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-torch >/dev/null
fi
bazel build //server/coordinator:psd_coordinator //server/ps:psd_server \
  //worker:psd_worker //worker:click_data_tool //deploy:psd_ctl
BIN=bazel-bin
source deploy/processes.sh
WORK=$(mktemp -d /tmp/sparse_job_bench.XXXXXX)
PIDS=()
trap 'stop_processes "${PIDS[@]}"' EXIT
echo "==> machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "==> torch $("$PY" -c 'import torch; print(torch.__version__)'), $(date -u +%FT%TZ); $TRAIN train / $TEST test examples, $EPOCHS epochs"

"$BIN/worker/click_data_tool" --fields=8 --dense=4 --train="$TRAIN" --test="$TEST" \
  --seed=$SEED --out_dir="$WORK" >"$WORK/bayes.json"
bayes_auc=$("$PY" -c "import json; print(json.load(open('$WORK/bayes.json'))['bayes_auc'])")
bayes_loss=$("$PY" -c "import json; print(json.load(open('$WORK/bayes.json'))['bayes_log_loss'])")
target=$("$PY" -c "print(round($bayes_auc - ${TARGET_GAP:-0.03}, 4))")
echo "==> planted model: Bayes test log-loss $bayes_loss, AUC $bayes_auc; target AUC $target"

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/c.port" 2>"$WORK/c.log" &
PIDS+=($!)
C=127.0.0.1:$(wait_port $! "$WORK/c.port")
for i in 1 2; do
  "$BIN/server/ps/psd_server" --insecure --coordinator="$C" 2>"$WORK/s$i.log" &
  PIDS+=($!)
done
for i in 1 2; do
  "$BIN/worker/psd_worker" --insecure --coordinator="$C" 2>"$WORK/w$i.log" &
  PIDS+=($!)
done
CTL=("$BIN/deploy/psd_ctl" --insecure --coordinator="$C")
"${CTL[@]}" --servers=2 --workers=2 wait-ready >/dev/null

fields() { for i in $(seq 0 7); do echo "  fields { name: \"f$i\" table: \"$1\" }"; done; }
cat >"$WORK/dlrm.textproto" <<JOB
name: "bench-dlrm"
model {
  kind: DLRM
  init_seed: 1
  tables { name: "emb" num_rows: 100000000 dim: 16
           optimizer { kind: ADAGRAD learning_rate: 0.02 } }
$(fields emb)
  num_dense_features: 4
  bottom_mlp: [32, 16]
  top_mlp: [32]
}
dataset { name: "planted-clicks" train_limit: $TRAIN test_limit: $TEST }
optimizer { kind: ADAGRAD learning_rate: 0.02 }
consistency: BSP
batch_size: 200
epochs: $EPOCHS
workers: 2
seed: $SEED
JOB

# psd_job FILE: runs the job; prints its id.
psd_job() {
  local id
  id=$("${CTL[@]}" submit "$1")
  "${CTL[@]}" watch "$id" >"$WORK/$id.watch"
  echo "$id"
}
# psd_report ID: samples/s, time to target, final log-loss and AUC from the
# workers' logs (time from rank 0's "sparse ... model" line, i.e. after data
# generation, to the first epoch line at or above the target AUC).
psd_report() {
  "$PY" - "$1" "$target" "$WORK"/w1.log "$WORK"/w2.log <<'PY'
import re, sys
from datetime import datetime
job, target, logs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
t = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
start = None; reach = None; final = None; sps = 0.0; hits = misses = 0
for log in logs:
    for line in open(log):
        if f"job {job} rank 0/" in line and "sparse" in line: start = t(line)
        m = re.search(rf"job {job}: epoch (\d+) done.*test log-loss ([0-9.]+), AUC ([0-9.]+)", line)
        if m:
            final = (int(m.group(1)), float(m.group(2)), float(m.group(3)))
            if reach is None and final[2] >= target: reach = (t(line), final[0])
        m = re.search(rf"job {job} rank \d+: trained .*, ([0-9.]+) samples/s\), .* row cache (\d+) hits, (\d+) misses", line)
        if m:
            sps += float(m.group(1)); hits += int(m.group(2)); misses += int(m.group(3))
tt = f"{(reach[0] - start).total_seconds():.1f} s (epoch {reach[1]})" if reach else "not reached"
print(f"samples/s {sps:.0f}; time to AUC {target}: {tt}; final epoch {final[0]}: "
      f"test log-loss {final[1]:.4f}, AUC {final[2]:.4f}; cache hits {hits}, misses {misses}")
PY
}

echo "==> psd: DLRM, BSP, 2 servers, 2 workers x 200"
id=$(psd_job "$WORK/dlrm.textproto")
echo "psd:   $(psd_report "$id")"
"${CTL[@]}" tables "$id" | tee "$WORK/tables"
"$PY" -c "
import re
m = re.search(r'(\d+) rows, (\d+) bytes', open('$WORK/tables').read())
print('server memory per touched row: %.1f bytes (row record 8 + 4 x 16 x 2 = 136 B, plus map)' % (int(m.group(2)) / int(m.group(1))))"

echo "==> torch: single process, 2 threads, batch 400"
"$PY" tests/bench/sparse_torch_baseline.py --train="$WORK/train.tsv" --test="$WORK/test.tsv" \
  --num_dense=4 --model=dlrm --dim=16 --bottom_mlp=32,16 --top_mlp=32 --num_rows=1000000 \
  --batch_size=400 --epochs="$EPOCHS" --lr=0.02 --dense_lr=0.02 --threads=2 >"$WORK/torch.jsonl"
"$PY" - "$WORK/torch.jsonl" "$target" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
epochs = [l for l in lines if "epoch" in l]
target = float(sys.argv[2]); total = 0.0; reach = None
for e in epochs:
    total += e["seconds"]
    if reach is None and e["test_auc"] >= target: reach = (total, e["epoch"])
sps = sum(e["samples_per_sec"] for e in epochs) / len(epochs)
tt = f"{reach[0]:.1f} s (epoch {reach[1]}, training time only)" if reach else "not reached"
f = epochs[-1]
print(f"torch: samples/s {sps:.0f}; time to AUC {target}: {tt}; final epoch {f['epoch']}: "
      f"test log-loss {f['test_log_loss']:.4f}, AUC {f['test_auc']:.4f}")
PY

for cache in 0 4; do
  sed -e 's/kind: DLRM/kind: SPARSE_LR/' -e 's/dim: 16/dim: 1/' -e '/num_dense_features\|bottom_mlp\|top_mlp/d' \
    -e 's/^consistency: BSP/consistency: ASP/' -e "s/name: \"bench-dlrm\"/name: \"bench-lr-cache$cache\"/" \
    -e "s/optimizer { kind: ADAGRAD learning_rate: 0.02 } }/optimizer { kind: ADAGRAD learning_rate: 0.1 } cache_staleness_steps: $cache }/" \
    "$WORK/dlrm.textproto" >"$WORK/lr$cache.textproto"
  id=$(psd_job "$WORK/lr$cache.textproto")
  report=$(psd_report "$id")
  echo "==> psd SPARSE_LR, ASP, cache_staleness_steps $cache: $report"
  "$PY" - "$report" "$TRAIN" "$EPOCHS" <<'PY'
import re, sys
r, train, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sps = float(re.search(r"samples/s (\d+)", r).group(1))
hits, misses = map(int, re.search(r"cache hits (\d+), misses (\d+)", r).groups())
rows = train * epochs * 8  # rows read by the batches (8 fields)
pulled = misses if hits + misses else rows
seconds = train * epochs / sps  # sps: both ranks' samples/s, summed
print(f"    rows read {rows}, pulled from servers {pulled} "
      f"({100 * pulled / rows:.0f}%); rows pulled per second per server "
      f"{pulled / seconds / 2:.0f}, pushed per second per server {rows / seconds / 2:.0f}")
PY
done
