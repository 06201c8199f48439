#!/usr/bin/env bash
# Sparse jobs (issue 25) beyond BSP on planted data:
#  1. ASP with a worker row cache (cache_staleness_steps 2): the job
#     finishes, learns, and the cache answered rows.
#  2. BSP with a worker SIGKILLed mid-job: an idle worker takes its rank
#     (at the step the servers are at), the job finishes, and every table
#     shard's replicas agree (R=2).
#  3. A dynamic table under BSP (admit_after_pushes 3, evict_after_steps
#     40): rows are created only from their third push and evicted when
#     idle, psd_ctl tables counts both, and the job still learns.
#  4. Criteo TSV files (click_data_tool writes generated data in Criteo's
#     layout: 13 integer and 26 categorical fields), read by the workers
#     from their --data_dir: a SPARSE_LR job over 26 hashed fields learns.
source tests/cluster_lib.sh
source tests/replicated_lib.sh

fields() {
  local n=$1 table=$2 i
  for i in $(seq 0 $((n - 1))); do echo "  fields { name: \"f$i\" table: \"$table\" }"; done
}
# lr_job NAME FIELDS CONSISTENCY DATASET [TABLE_EXTRA]
lr_job() {
  cat <<JOB
name: "$1"
model {
  kind: SPARSE_LR
  tables { name: "w" num_rows: 1000000 dim: 1 initializer { kind: ZERO }
           optimizer { kind: ADAGRAD learning_rate: 0.1 } ${5:-} }
$(fields "$2" w)
}
dataset { $4 }
optimizer { kind: ADAGRAD learning_rate: 0.1 }
consistency: $3
batch_size: 200
epochs: 2
workers: 2
seed: 42
JOB
}

# epoch_auc JOB: the last "epoch E done ... AUC A" of JOB in the worker logs.
epoch_auc() {
  grep -ho "job $1: epoch [0-9]* done.*AUC [0-9.]*" "$WORK"/*.log | tail -1 |
    sed 's/.*AUC //'
}

# --- 1. ASP with a row cache.
start_replicated a 2 2 1
lr_job asp 4 ASP 'name: "planted-clicks" train_limit: 40000 test_limit: 4000' \
  'cache_staleness_steps: 2' >"$WORK/asp.textproto"
job=$(submit "$WORK/asp.textproto")
"${CTL[@]}" watch "$job" >"$WORK/asp.watch" || { tail "$WORK/asp.watch"; fail "ASP job failed"; }
auc=$(epoch_auc "$job")
hits=$(grep -ho "job $job rank [01]: trained .* row cache [0-9]* hits" "$WORK"/a.w*.log |
  sed 's/.*row cache \([0-9]*\) hits/\1/' | awk '{s += $1} END {print s + 0}')
echo "scenario 1 (ASP, row cache): test AUC $auc, cache hits $hits"
python3 -c "import sys; sys.exit(0 if float('$auc') > 0.75 else 1)" || fail "ASP: AUC $auc"
[ "${hits:-0}" -gt 0 ] || fail "ASP: the row cache answered no row"
stop_cluster

# --- 2. BSP, R=2, a worker killed mid-job; a third (idle) worker takes over.
start_replicated b 2 3 2
lr_job kill 4 BSP 'name: "planted-clicks" train_limit: 60000 test_limit: 4000' \
  >"$WORK/kill.textproto"
job=$(submit "$WORK/kill.textproto")
wait_step "$job" 30
victim=""
for w in b.w1 b.w2 b.w3; do
  if grep -q "job $job: assigned rank" "$WORK/$w.log"; then victim=$w; break; fi
done
[ -n "$victim" ] || fail "no worker holds a rank"
kill -KILL "${WORKER_PID[$victim]}"
echo "scenario 2: killed worker $victim at step >= 30"
"${CTL[@]}" watch "$job" >"$WORK/kill.watch" || { tail "$WORK/kill.watch"; fail "job $job failed after a worker was killed"; }
grep -q "replacing a worker\|at the step its servers are at" "$WORK"/b.w*.log ||
  fail "no worker took the killed worker's rank"
"${CTL[@]}" tables "$job" >"$WORK/kill.tables" || { cat "$WORK/kill.tables"; fail "replicas differ"; }
echo "scenario 2: $(cat "$WORK/kill.tables"), AUC $(epoch_auc "$job")"
stop_cluster

# --- 3. Admission and eviction (same cluster as 2 would do; a fresh one).
start_replicated d 2 2 1
lr_job dynamic 4 BSP 'name: "planted-clicks" train_limit: 40000 test_limit: 4000' \
  'admit_after_pushes: 3 evict_after_steps: 40' >"$WORK/dynamic.textproto"
job=$(submit "$WORK/dynamic.textproto")
"${CTL[@]}" watch "$job" >"$WORK/dynamic.watch" || { tail "$WORK/dynamic.watch"; fail "dynamic-table job failed"; }
"${CTL[@]}" tables "$job" >"$WORK/dynamic.tables" || fail "tables of $job"
echo "scenario 3 (admission 3, eviction 40 steps): $(cat "$WORK/dynamic.tables"), AUC $(epoch_auc "$job")"
grep -q "(all replicas: [1-9][0-9]* rows evicted, [1-9][0-9]* waiting for admission)" \
  "$WORK/dynamic.tables" || fail "no row evicted or waiting for admission"
python3 -c "import sys; sys.exit(0 if float('$(epoch_auc "$job")') > 0.7 else 1)" ||
  fail "dynamic table: AUC $(epoch_auc "$job")"
stop_cluster

# --- 4. Criteo files.
mkdir -p "$WORK/criteo"
"$BIN/worker/click_data_tool" --fields=26 --dense=13 --train=20000 --test=2000 \
  --seed=5 --out_dir="$WORK/criteo" >"$WORK/criteo/bayes.json"
head -c 300 "$WORK/criteo/train.tsv" | head -2 | cut -c1-120
start_replicated c 2 0 1
for i in 1 2; do start_worker "c.w$i" --data_dir="$WORK/criteo"; done
"${CTL[@]}" --servers=2 --workers=2 --timeout_s=30 wait-ready >/dev/null
lr_job criteo 26 BSP 'name: "criteo" train_limit: 20000 train_file: "train.tsv" test_file: "test.tsv"' \
  >"$WORK/criteo.textproto"
job=$(submit "$WORK/criteo.textproto")
"${CTL[@]}" watch "$job" >"$WORK/criteo.watch" || { tail "$WORK/criteo.watch"; fail "criteo job failed"; }
auc=$(epoch_auc "$job")
echo "scenario 4 (Criteo TSV): test AUC $auc; planted: $(cat "$WORK/criteo/bayes.json")"
python3 -c "import sys; sys.exit(0 if float('$auc') > 0.6 else 1)" || fail "criteo: AUC $auc"
echo PASS
