#!/bin/bash
# Replicated sparse embedding tables under SIGKILL (issue 7 follow-up): 2
# shards x 2 replicas on two real psd_server processes, crossed
# (sparse_train --replication=2: shard 0 on [A, B], shard 1 on [B, A], the
# first the primary), one client thread, so the pushes come in a fixed order
# and the final rows are bitwise the same on every run.
#
#  1. Undisturbed run on servers A1, B1: trains, then prints every replica's
#     per-shard rows, update counts and checksums. Both replicas of each
#     shard must agree (synchronous replication).
#  2. Same run on fresh servers A2, B2; once epoch 1 is printed (training
#     goes on with epoch 2), A2 (primary of shard 0, backup of shard 1) is
#     SIGKILLed. Training must complete; the client must have failed over;
#     B2 must be the primary of both shards, have dropped A2 as the backup
#     of shard 1, and hold per shard exactly the undisturbed run's rows,
#     update counts and checksums: every acknowledged push is there, none
#     twice (a lost or doubled push changes the row's update count and
#     weights, so the checksum).
source tests/cluster_lib.sh

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/coordinator.port" \
  2>"$WORK/coordinator.log" &
PIDS+=($!)
COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/coordinator.port") ||
  fail "coordinator did not start"

# start_server NAME: starts a psd_server; sets PORT and PID.
start_server() {
  "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" \
    --port_file="$WORK/$1.port" 2>"$WORK/$1.log" &
  PID=$!
  PIDS+=($PID)
  PORT=$(wait_port $PID "$WORK/$1.port") || fail "server $1 did not start"
}

TRAIN=(--workers=1 --epochs=3 --train_examples=60000 --test_examples=5000
  --replication=2 --drop_tables=false --min_accuracy=0.6)

# The undisturbed run.
start_server a1; A1=127.0.0.1:$PORT
start_server b1; B1=127.0.0.1:$PORT
"$BIN/worker/sparse_train" --servers="$A1,$B1" "${TRAIN[@]}" \
  >"$WORK/undisturbed.out" 2>"$WORK/undisturbed.log" ||
  { cat "$WORK/undisturbed.out"; fail "undisturbed sparse_train failed"; }
cat "$WORK/undisturbed.out"
grep -q '^failovers: 0$' "$WORK/undisturbed.out" || fail "failover without a kill"

# "TABLE SHARD ADDRESS ROLE ROWS UPDATES CHECKSUM" of every reachable replica.
replicas() {
  sed -nE 's/^replica ([a-z]+) shard ([0-9]+) ([0-9.:]+): ([A-Z]+) rows ([0-9]+) updates ([0-9]+) checksum ([0-9a-f]+) .*/\1 \2 \3 \4 \5 \6 \7/p' "$1"
}
replicas "$WORK/undisturbed.out" >"$WORK/undisturbed.replicas"
[ "$(wc -l <"$WORK/undisturbed.replicas")" -eq 8 ] ||
  fail "expected 8 replica lines (2 tables x 2 shards x 2 replicas)"
# Both replicas of each shard hold the same rows, and rows were pushed.
for table in emb dense; do
  for shard in 0 1; do
    n=$(awk -v t=$table -v s=$shard '$1 == t && $2 == s {print $5, $6, $7}' \
      "$WORK/undisturbed.replicas" | sort -u | wc -l)
    [ "$n" -eq 1 ] || fail "replicas of $table shard $shard differ"
  done
done
awk '$1 == "emb" && $6 == 0 {exit 1}' "$WORK/undisturbed.replicas" ||
  fail "a shard of emb got no update"
# Reference: per table and shard, "rows updates checksum".
awk '{print $1, $2, $5, $6, $7}' "$WORK/undisturbed.replicas" | sort -u \
  >"$WORK/want"

# The run with a primary killed mid-training.
start_server a2; A2=127.0.0.1:$PORT; A2_PID=$PID
start_server b2; B2=127.0.0.1:$PORT
"$BIN/worker/sparse_train" --servers="$A2,$B2" "${TRAIN[@]}" \
  >"$WORK/killed.out" 2>"$WORK/killed.log" &
TRAIN_PID=$!
# Wait (event, not time) for epoch 1 to be printed: epoch 2 is training.
while ! grep -q '^epoch 1:' "$WORK/killed.out"; do
  kill -0 $TRAIN_PID 2>/dev/null || { cat "$WORK/killed.out"; fail "sparse_train ended early"; }
  sleep 0.05
done
kill -KILL $A2_PID
echo "killed server A2 ($A2, primary of shard 0) during epoch 2"
rc=0
wait $TRAIN_PID || rc=$?
cat "$WORK/killed.out"
[ $rc -eq 0 ] || { cat "$WORK/killed.log"; fail "sparse_train exited with $rc after the kill"; }
grep -Eq '^failovers: [1-9]' "$WORK/killed.out" || fail "the client did not fail over"
replicas "$WORK/killed.out" >"$WORK/killed.replicas"
# Only B2 answers, as the primary of both shards of emb (table dense has
# its one row on shard 1: its shard 0 gets no push, so B2 stays its backup).
[ "$(awk -v b=$B2 '$1 == "emb" && $3 == b && $4 == "PRIMARY"' "$WORK/killed.replicas" | wc -l)" -eq 2 ] ||
  fail "B2 is not the primary of both shards of emb"
[ "$(grep -c "^replica [a-z]* shard [01] $A2: unreachable" "$WORK/killed.out")" -eq 4 ] ||
  fail "A2 still answers"
# B2 dropped A2 as the backup of shard 1 (its forward failed).
grep -q "^replica emb shard 1 $B2: PRIMARY .* dropped \[$A2: " "$WORK/killed.out" ||
  fail "B2 did not drop A2 as backup of emb shard 1"
# The oracle: B2 holds exactly the undisturbed rows, update counts, checksums.
awk '{print $1, $2, $5, $6, $7}' "$WORK/killed.replicas" | sort -u >"$WORK/got"
diff "$WORK/want" "$WORK/got" ||
  fail "the surviving replicas differ from the undisturbed run (lost or doubled pushes)"
# Same final model, so the same test accuracy line.
diff <(grep '^PASS: final test accuracy' "$WORK/undisturbed.out") \
  <(grep '^PASS: final test accuracy' "$WORK/killed.out") ||
  fail "final accuracy differs from the undisturbed run"
echo PASS
