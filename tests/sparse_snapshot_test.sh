#!/bin/bash
# Snapshots of sparse embedding tables and whole-cluster restart (issue 7
# follow-up): 2 shards x 2 replicas on two real psd_server processes with
# --data_dir, crossed (sparse_train --replication=2), one client thread, so
# the pushes come in a fixed order and the final rows are bitwise the same
# on every run.
#
#  1. Undisturbed run on servers U1, U2 with snapshots after every epoch:
#     prints every replica's per-shard rows, update counts and checksums.
#  2. The same run on servers K1, K2 (their own data dirs); once the
#     snapshots after epoch 1 are written (training goes on with epoch 2),
#     both servers and the trainer are SIGKILLed: every replica is gone.
#  3. K1 and K2 restart on the same data dirs (new ports), and sparse_train
#     --resume restores both tables (each server its newest snapshot, dedup
#     logs included) and trains epochs 2 and 3. Every replica must hold
#     exactly the undisturbed run's rows, update counts and checksums (a
#     lost, doubled or altered row, update count or slot changes them), and
#     the final accuracy line must be the same.
#  Also: --resume against servers with empty data dirs fails (NOT_FOUND,
#  naming the table), and a server without --data_dir refuses a snapshot
#  (FAILED_PRECONDITION saying so).
source tests/cluster_lib.sh

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/coordinator.port" \
  2>"$WORK/coordinator.log" &
PIDS+=($!)
COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/coordinator.port") ||
  fail "coordinator did not start"

# start_server NAME [ARGS...]: starts a psd_server; sets PORT and PID.
start_server() {
  local name=$1
  shift
  "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" \
    --port_file="$WORK/$name.port" "$@" 2>>"$WORK/$name.log" &
  PID=$!
  PIDS+=($PID)
  PORT=$(wait_port $PID "$WORK/$name.port") || fail "server $name did not start"
  rm -f "$WORK/$name.port"
}

TRAIN=(--workers=1 --epochs=3 --train_examples=40000 --test_examples=5000
  --replication=2 --drop_tables=false --min_accuracy=0.6
  --snapshot_every_epochs=1)

# "TABLE SHARD ROWS UPDATES CHECKSUM" of every reachable replica, deduplicated.
replicas() {
  sed -nE 's/^replica ([a-z]+) shard ([0-9]+) ([0-9.:]+): ([A-Z]+) rows ([0-9]+) updates ([0-9]+) checksum ([0-9a-f]+) .*/\1 \2 \5 \6 \7/p' "$1" | sort -u
}

# 1. Undisturbed.
start_server u1 --data_dir="$WORK/u1.data"; U1=127.0.0.1:$PORT
start_server u2 --data_dir="$WORK/u2.data"; U2=127.0.0.1:$PORT
"$BIN/worker/sparse_train" --servers="$U1,$U2" "${TRAIN[@]}" \
  >"$WORK/undisturbed.out" 2>"$WORK/undisturbed.log" ||
  { cat "$WORK/undisturbed.out"; fail "undisturbed sparse_train failed"; }
cat "$WORK/undisturbed.out"
[ "$(grep -c '^snapshot: epoch [123], table \(emb\|dense\): [0-9]* rows, [0-9]* bytes on 2 server(s)' "$WORK/undisturbed.out")" -eq 6 ] ||
  fail "expected 6 snapshot lines (3 epochs x 2 tables, on 2 servers)"
replicas "$WORK/undisturbed.out" >"$WORK/want"
# One line per table and shard: both replicas agree; and rows were pushed.
[ "$(wc -l <"$WORK/want")" -eq 4 ] || { cat "$WORK/want"; fail "replicas of a shard differ"; }
awk '$1 == "emb" && $4 == 0 {exit 1}' "$WORK/want" || fail "a shard of emb got no update"

# 2. Killed after the epoch-1 snapshots, during epoch 2.
start_server k1 --data_dir="$WORK/k1.data"; K1=127.0.0.1:$PORT; K1_PID=$PID
start_server k2 --data_dir="$WORK/k2.data"; K2=127.0.0.1:$PORT; K2_PID=$PID
"$BIN/worker/sparse_train" --servers="$K1,$K2" "${TRAIN[@]}" \
  >"$WORK/killed.out" 2>"$WORK/killed.log" &
TRAIN_PID=$!
PIDS+=($TRAIN_PID)
# Wait (event, not time) for the last snapshot after epoch 1.
while ! grep -q '^snapshot: epoch 1, table dense' "$WORK/killed.out"; do
  kill -0 $TRAIN_PID 2>/dev/null || { cat "$WORK/killed.out"; fail "sparse_train ended early"; }
  sleep 0.05
done
kill -KILL $K1_PID $K2_PID $TRAIN_PID
wait $K1_PID $K2_PID $TRAIN_PID 2>/dev/null || true
echo "killed both servers and the trainer after the epoch-1 snapshots"
grep -q '^epoch 3:' "$WORK/killed.out" && fail "the kill came too late (epoch 3 done)"

# 3. Restart on the same data dirs (new ports) and resume.
start_server k1 --data_dir="$WORK/k1.data"; K1=127.0.0.1:$PORT
start_server k2 --data_dir="$WORK/k2.data"; K2=127.0.0.1:$PORT
"$BIN/worker/sparse_train" --servers="$K1,$K2" "${TRAIN[@]}" --resume \
  >"$WORK/resumed.out" 2>"$WORK/resumed.log" ||
  { cat "$WORK/resumed.out" "$WORK/resumed.log"; fail "resumed sparse_train failed"; }
cat "$WORK/resumed.out"
grep -q '^resumed: tables emb and dense restored from the snapshots taken after epoch 1$' \
  "$WORK/resumed.out" || fail "did not resume after epoch 1"
grep -q '^epoch 2:' "$WORK/resumed.out" || fail "epoch 2 not trained again"
grep -q '^epoch 1:' "$WORK/resumed.out" && fail "epoch 1 trained again"
grep -q 'restored generation 1 ' "$WORK/k1.log" || fail "K1 did not log its restore"
replicas "$WORK/resumed.out" >"$WORK/got"
# The oracle: every replica holds exactly the undisturbed rows.
diff "$WORK/want" "$WORK/got" ||
  fail "the resumed run's rows differ from the undisturbed run's"
diff <(grep '^PASS: final test accuracy' "$WORK/undisturbed.out") \
  <(grep '^PASS: final test accuracy' "$WORK/resumed.out") ||
  fail "final accuracy differs from the undisturbed run"

# Resuming where no snapshot exists fails, naming the table.
start_server e1 --data_dir="$WORK/e1.data"; E1=127.0.0.1:$PORT
rc=0
"$BIN/worker/sparse_train" --servers="$E1" --resume --epochs=1 \
  >"$WORK/empty.out" 2>"$WORK/empty.err" || rc=$?
[ $rc -eq 1 ] || fail "--resume without snapshots exited with $rc"
grep -q 'NOT_FOUND.*no snapshot of table "emb"' "$WORK/empty.err" ||
  { cat "$WORK/empty.err"; fail "no NOT_FOUND naming the table"; }

# A server without --data_dir refuses to snapshot, saying why.
start_server n1; N1=127.0.0.1:$PORT
rc=0
"$BIN/worker/sparse_train" --servers="$N1" --epochs=1 --train_examples=2000 \
  --test_examples=500 --snapshot_every_epochs=1 \
  >"$WORK/nodir.out" 2>"$WORK/nodir.err" || rc=$?
[ $rc -eq 1 ] || fail "a snapshot without --data_dir exited with $rc"
grep -q 'FAILED_PRECONDITION.*no --data_dir' "$WORK/nodir.err" ||
  { cat "$WORK/nodir.err"; fail "no FAILED_PRECONDITION naming --data_dir"; }
echo PASS
