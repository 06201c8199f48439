#!/bin/bash
# Sparse embedding tables end to end (issue 7): a coordinator and two real
# psd_server processes on 127.0.0.1 (OS-chosen ports); worker/sparse_train
# creates its tables on them (server s holds shard s), checks that untouched
# rows are the seeded values, and trains an embedding-bag + linear model on
# generated click-like data (a planted logistic model) over real gRPC, two
# client threads pushing asynchronously. Passes when the test log-loss goes
# down and the test accuracy clearly beats chance (majority class ~0.53).
source tests/cluster_lib.sh

"$BIN/server/coordinator/psd_coordinator" --insecure --port_file="$WORK/coordinator.port" \
  2>"$WORK/coordinator.log" &
PIDS+=($!)
COORDINATOR=127.0.0.1:$(wait_port $! "$WORK/coordinator.port") ||
  fail "coordinator did not start"
SERVERS=""
for i in 1 2; do
  "$BIN/server/ps/psd_server" --insecure --coordinator="$COORDINATOR" \
    --port_file="$WORK/server$i.port" 2>"$WORK/server$i.log" &
  PIDS+=($!)
  port=$(wait_port $! "$WORK/server$i.port") || fail "server $i did not start"
  SERVERS="$SERVERS${SERVERS:+,}127.0.0.1:$port"
done

"$BIN/worker/sparse_train" --servers="$SERVERS" --epochs=2 --workers=2 \
  --min_accuracy=0.68 >"$WORK/train.out" 2>"$WORK/train.log"
rc=$?
cat "$WORK/train.out"
[ $rc -eq 0 ] || { cat "$WORK/train.log"; fail "sparse_train exited with $rc"; }
grep -q '^init check: 64 untouched rows pulled from 2 server(s), 0 differ' \
  "$WORK/train.out" || fail "untouched rows differ from the seeded values"
grep -q '^PASS: final test accuracy' "$WORK/train.out" || fail "no PASS line"
# Rows were spread over both servers (each answered TableStatus).
grep -Eq '^table emb: [0-9]+ rows held over 2 server' "$WORK/train.out" ||
  fail "no table status"
echo PASS
